"""The command's process on the worker: start it, pump its stdio, signal its group."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Any, Literal, Protocol

from dagster_pipes_ext.remote.supervisor import supervisor_argv
from dagster_pipes_ext.remote.wire import REC_STDERR, REC_STDOUT, LaunchSpec

STDERR_TAIL_BYTES = 4096
PIPE_READ_BYTES = 65536
PUMP_JOIN_SECONDS = 5.0
SUPERVISOR_EXIT_SECONDS = 10.0
DISCARD_POLL_SECONDS = 0.05
# Pipe reads the launcher holds before the pumps wait (each up to PIPE_READ_BYTES).
STDIO_QUEUE_CHUNKS = 16


class RecordSink(Protocol):
    """Where drained stdio goes (the launcher's sender)."""

    def add(self, kind: str, data: Any, size: int = ...) -> None:
        """Add a record."""


# -- starting -----------------------------------------------------------------------


class Supervised:
    """The command, run under its supervisor (:mod:`.supervisor`), seen from the launcher.

    The supervisor is this process's child; the command is the supervisor's, in a session of
    its own. Its stdout/stderr are the supervisor's, on pipes (:attr:`stdout`, :attr:`stderr`).
    The launcher talks to it over two pipes: heartbeats and stop requests in, status lines out
    (started, notes, the command's exit). When the launcher's process dies, the control pipe's
    EOF makes the supervisor kill every descendant of the command; when it hangs, the missing
    heartbeats do, after ``heartbeat_timeout_seconds`` and ``termination_timeout_seconds``.

    Raises:
        OSError: The command could not be started (its ``errno`` says why).
    """

    def __init__(self, spec: LaunchSpec, env: dict[str, str]) -> None:
        control_read, self._control = os.pipe()
        status_read, status_write = os.pipe()
        config = {
            "argv": spec["command"],
            "cwd": spec["cwd"],
            "parent_pid": os.getpid(),
            "control_fd": control_read,
            "status_fd": status_write,
            "heartbeat_timeout": spec["heartbeat_timeout_seconds"],
            "termination_timeout": spec["termination_timeout_seconds"],
        }
        try:
            self.supervisor = subprocess.Popen(
                supervisor_argv(config),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if spec["forward_stdio"] else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(control_read, status_write),
            )
        except OSError:
            for fd in (control_read, self._control, status_read, status_write):
                os.close(fd)
            raise
        os.close(control_read)
        os.close(status_write)
        self.stdout, self.stderr = self.supervisor.stdout, self.supervisor.stderr
        self._status = os.fdopen(status_read, "rb")
        self.notes: queue.Queue[str] = queue.Queue()
        self.exit: dict[str, Any] | None = None
        self.pid = self._await_start()
        self._reader = threading.Thread(target=self._read_status, daemon=True, name="pipes-status")
        self._reader.start()

    def _await_start(self) -> int:
        line = self._status.readline()  # the supervisor answers within milliseconds
        status = json.loads(line) if line.strip() else {}
        if "started" in status:
            return int(status["started"])
        self.supervisor.wait(timeout=SUPERVISOR_EXIT_SECONDS)
        if "error" not in status:
            raise OSError(0, f"the supervisor exited at once (code {self.supervisor.returncode})")
        error = {"not_found": FileNotFoundError, "cwd": FileNotFoundError}.get(status["kind"])
        error = error or {"permission": PermissionError}.get(status["kind"], OSError)
        raise error(int(status.get("errno") or 0), str(status["error"]))

    def _read_status(self) -> None:
        for line in self._status:
            with contextlib.suppress(ValueError):
                status = json.loads(line)
                if "note" in status:
                    self.notes.put(str(status["note"]))
                elif "returncode" in status:
                    self.exit = status
        self._status.close()

    def _send(self, line: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._control, line)

    def heartbeat(self) -> None:
        """Tell the supervisor the launcher is alive."""
        self._send(b"hb\n")

    def stop(self) -> None:
        """SIGINT to the command's group; SIGKILL to every descendant after the grace period."""
        self._send(b"stop\n")

    def exited(self) -> tuple[int, dict[str, Any]] | None:
        """The command's exit code and resource usage, once it and its descendants are gone."""
        if self.supervisor.poll() is None:
            return None
        self._reader.join(timeout=SUPERVISOR_EXIT_SECONDS)
        status = self.exit or {"returncode": -signal.SIGKILL}
        return int(status["returncode"]), status

    def kill(self) -> None:
        """Kill every descendant now (the control pipe's EOF) and reap the supervisor."""
        with contextlib.suppress(OSError):
            os.close(self._control)
        try:
            self.supervisor.wait(timeout=SUPERVISOR_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.supervisor.kill()
            self.supervisor.wait()


def launch_error(spec: LaunchSpec, exc: OSError) -> str:
    """What to tell the user when the command could not be started."""
    program = spec["command"][0]
    cwd = spec["cwd"]
    if cwd is not None and not os.path.isdir(cwd):
        return f"working directory {cwd!r} does not exist on the worker"
    if isinstance(exc, FileNotFoundError):
        return (
            f"command not found on the worker: {program!r} "
            f"(PATH={os.environ.get('PATH', '')!r}, cwd={cwd or os.getcwd()!r})"
        )
    if isinstance(exc, PermissionError):
        return f"command is not executable on the worker: {program!r} ({exc})"
    return f"could not start {program!r} on the worker: {exc}"


# -- stdio --------------------------------------------------------------------------------------

_Item = tuple[str, str] | None  # (kind, text), or None when a pump reached EOF


class StdioDrain:
    """The command's stdout/stderr: two pump threads feed a queue the task thread drains.

    The queue is bounded (:data:`STDIO_QUEUE_CHUNKS` reads): when the launcher waits for the
    reader, the pumps wait too, the pipe fills, and the command blocks on its next write. It
    also keeps the last few KiB of stderr for the error message, and the item returned by
    the last :meth:`wait`, which the next :meth:`drain` handles first.
    """

    def __init__(self, proc: Supervised, *, forward: bool) -> None:
        self._forward = forward
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=STDIO_QUEUE_CHUNKS)
        self._stderr: deque[str] = deque()
        self._stderr_len = 0
        self._carried: _Item | Literal[False] = False
        self._pumps: list[threading.Thread] = []
        for stream, kind in ((proc.stdout, REC_STDOUT), (proc.stderr, REC_STDERR)):
            if stream is None:
                continue
            fd = os.dup(stream.fileno())
            stream.close()
            pump = threading.Thread(
                target=_pump_stream, args=(fd, kind, self._queue), daemon=True, name=f"pipes-{kind}"
            )
            pump.start()
            self._pumps.append(pump)
        self._open = len(self._pumps)

    @property
    def open(self) -> bool:
        """Whether a pipe is still open (the command, or something it started, holds it)."""
        return self._open > 0

    def drain(self, sender: RecordSink) -> None:
        """Hand everything queued so far to ``sender`` without blocking."""
        while True:
            if self._carried is not False:
                item, self._carried = self._carried, False
            else:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    return
            if item is None:
                self._open -= 1
                continue
            kind, text = item
            if kind == REC_STDERR:
                self._keep_stderr(text)
                if not self._forward:
                    continue
            sender.add(kind, text, len(text))

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for stdio; what arrives is handled by the next :meth:`drain`."""
        with contextlib.suppress(queue.Empty):
            self._carried = self._queue.get(timeout=timeout)

    def _keep_stderr(self, text: str) -> None:
        self._stderr.append(text)
        self._stderr_len += len(text)
        while self._stderr_len > STDERR_TAIL_BYTES and len(self._stderr) > 1:
            self._stderr_len -= len(self._stderr.popleft())

    def stderr_tail(self) -> str:
        """The last few KiB the command wrote to stderr."""
        return "".join(self._stderr)[-STDERR_TAIL_BYTES:]

    def close(self) -> None:
        """Wait (bounded) for the pump threads to finish, discarding what nobody will read."""
        deadline = time.monotonic() + PUMP_JOIN_SECONDS
        while any(pump.is_alive() for pump in self._pumps) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=DISCARD_POLL_SECONDS)


def _pump_stream(fd: int, kind: str, out: queue.Queue[_Item]) -> None:
    """Forward a pipe's text to ``out`` chunk by chunk until EOF."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        while True:
            try:
                chunk = os.read(fd, PIPE_READ_BYTES)
            except OSError:
                chunk = b""
            if not chunk:
                tail = decoder.decode(b"", final=True)
                if tail:
                    out.put((kind, tail))
                return
            text = decoder.decode(chunk)
            if text:
                out.put((kind, text))
    finally:
        out.put(None)
        with contextlib.suppress(OSError):
            os.close(fd)


# -- signals --------------------------------------------------------------------------------


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; return whether it still existed."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def describe_signal(returncode: int) -> str:
    """The name of the signal a negative return code stands for."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
