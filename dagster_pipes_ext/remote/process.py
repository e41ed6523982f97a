"""The command's process on the worker: start it under its supervisor, keep a spare, signal it."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from dagster_pipes_ext.remote.supervisor import supervisor_argv
from dagster_pipes_ext.remote.wire import LaunchSpec

SUPERVISOR_EXIT_SECONDS = 10.0
SUPERVISOR_START_SECONDS = 30.0
# The next spare starts this long after a session's supervisor was reaped, just before its
# outcome goes out. Started at once, its interpreter start-up (~20 ms of CPU) overlapped the end
# of the step that ran the session (+4-7 ms of wall time on 2 cores, where the worker shares the
# step's CPU); a launch that comes sooner starts its own supervisor, as one without a spare
# always did.
SPARE_START_DELAY_SECONDS = 0.1
# Where a worker process keeps its spare supervisors (shared by every launcher it unpickled).
_SPARES_MODULE = "__dagster_pipes_ext_supervisors__"

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
        session = {
            "argv": spec["command"],
            "cwd": spec["cwd"],
            "heartbeat_timeout": spec["heartbeat_timeout_seconds"],
            "termination_timeout": spec["termination_timeout_seconds"],
        }
        spares = spare_supervisors()
        spare = spares.take() if spec["forward_stdio"] else None
        if spare is not None:
            self.supervisor, self._control, status_read = spare
            # The session, environment included, as one line: the spare is waiting for it.
            line = json.dumps({**session, "env": env}).encode() + b"\n"
            with contextlib.suppress(OSError):
                os.write(self._control, line)
        else:
            self.supervisor, self._control, status_read = _start_supervisor(
                session, env, forward_stdout=spec["forward_stdio"]
            )
        self.stdout, self.stderr = self.supervisor.stdout, self.supervisor.stderr
        self._status = os.fdopen(status_read, "rb")
        self.notes: queue.Queue[str] = queue.Queue()
        self.exit: dict[str, Any] | None = None
        self._on_exit: Callable[[], None] | None = None
        self._control_lock = threading.Lock()
        self._spares = spares
        self._released = False
        try:
            self.pid = self._await_start()
        except BaseException:
            self._close_control()
            self._status.close()
            spares.replenish()
            raise
        self._reader = threading.Thread(target=self._read_status, daemon=True, name="pipes-status")
        self._reader.start()

    def _await_start(self) -> int:
        ready, _, _ = select.select([self._status], [], [], SUPERVISOR_START_SECONDS)
        line = self._status.readline() if ready else b""  # it answers within milliseconds
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
                    on_exit = self._on_exit
                    if on_exit is not None:
                        on_exit()
        self._status.close()

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from another thread) once the supervisor reported the exit."""
        self._on_exit = callback
        if self.exit is not None:
            callback()

    def _send(self, line: bytes) -> None:
        with self._control_lock:  # the heartbeat thread sends too; never into a closed fd
            if self._control >= 0:
                with contextlib.suppress(OSError):
                    os.write(self._control, line)

    def heartbeat(self) -> None:
        """Tell the supervisor the launcher is alive."""
        self._send(b"hb\n")

    def stop(self) -> None:
        """SIGINT to the command's group; SIGKILL to every descendant after the grace period."""
        self._send(b"stop\n")

    def exited(self) -> tuple[int, dict[str, Any]] | None:
        """The command's exit code and resource usage, once it and its descendants are gone.

        Known from the supervisor's report, without waiting for the supervisor's own exit; a
        supervisor that died without one (SIGKILLed) counts as a SIGKILLed command.
        """
        if self.exit is None:
            if self.supervisor.poll() is None:
                return None
            self._reader.join(timeout=SUPERVISOR_EXIT_SECONDS)  # its last status lines
        status = self.exit or {"returncode": -signal.SIGKILL}
        return int(status["returncode"]), status

    def kill(self) -> None:
        """Kill every descendant now (the control pipe's EOF) and reap the supervisor."""
        self._close_control()
        self._reap()

    def release(self) -> None:
        """Reap the supervisor (it exits as it reports) and start the next spare (once).

        Called once the command and its descendants are gone: the next spare's start-up (a
        fork of the worker process, then an interpreter, after
        :data:`SPARE_START_DELAY_SECONDS`) does not delay the run.
        """
        if self._released:
            return
        self._released = True
        self.kill()  # the supervisor has exited already: this only reaps it
        self._spares.replenish(after=SPARE_START_DELAY_SECONDS)

    def _close_control(self) -> None:
        with self._control_lock:
            control, self._control = self._control, -1
            if control >= 0:
                with contextlib.suppress(OSError):
                    os.close(control)

    def _reap(self) -> None:
        # Its status pipe ends as it exits: one wait for that, not Popen.wait's sleep-and-poll
        # loop, which woke this thread ~20 times per session (each a GIL hand-off).
        self._reader.join(timeout=SUPERVISOR_EXIT_SECONDS)
        try:
            self.supervisor.wait(timeout=SUPERVISOR_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.supervisor.kill()
            self.supervisor.wait()


def _start_supervisor(
    session: dict[str, Any],
    env: dict[str, str] | None,
    *,
    forward_stdout: bool,
    spare: bool = False,
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start a supervisor; return it, the control pipe's write end and the status read end.

    In its own session, so that a signal to the worker's process group cannot kill it and leave
    the command behind. A ``spare`` one waits for its session on the control pipe.
    """
    control_read, control_write = os.pipe()
    status_read, status_write = os.pipe()
    config = {
        **session,
        "spare": spare,
        "parent_pid": os.getpid(),
        "control_fd": control_read,
        "status_fd": status_write,
    }
    try:
        supervisor = subprocess.Popen(
            supervisor_argv(config),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if forward_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(control_read, status_write),
            start_new_session=True,
        )
    except OSError:
        for fd in (control_read, control_write, status_read, status_write):
            os.close(fd)
        raise
    os.close(control_read)
    os.close(status_write)
    return supervisor, control_write, status_read


class SpareSupervisors:
    """One supervisor started ahead of time per worker process, for the next launch.

    A launch then does not wait for a Python interpreter to start (~20 ms). One long-lived
    thread starts them: a supervisor's ``PDEATHSIG`` fires when the thread that started it
    ends, and this one lives as long as the worker process. A spare whose session never comes
    exits at the control pipe's EOF, when the worker process ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spare: tuple[subprocess.Popen[bytes], int, int] | None = None
        self._wanted = threading.Event()
        self._wanted.set()
        self._not_before = 0.0  # time.monotonic() before which no spare starts
        self._closed = False
        threading.Thread(target=self._keep_one, daemon=True, name="pipes-spare-supervisor").start()

    def _keep_one(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closed:
                return
            if self._spare is not None:
                continue  # one is ready already
            delay = self._not_before - time.monotonic()
            if delay > 0:
                time.sleep(delay)
                if self._closed:
                    return
            try:
                spare = _start_supervisor({}, None, forward_stdout=True, spare=True)
            except OSError:
                continue  # the next take() starts its own
            with self._lock:
                self._spare = spare
            if self._closed:
                self.close()

    def take(self) -> tuple[subprocess.Popen[bytes], int, int] | None:
        """The spare, if one is ready."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare[0].poll() is not None:
            os.close(spare[1])
            os.close(spare[2])
            return None
        return spare

    def replenish(self, *, after: float = 0.0) -> None:
        """Start the next spare, ``after`` seconds from now.

        Called once a command ended, not while one starts, on a busy CPU.
        """
        self._not_before = time.monotonic() + after
        self._wanted.set()

    def close(self) -> None:
        """End the spare (its control pipe's EOF) and start no more."""
        self._closed = True
        self._wanted.set()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            os.close(spare[1])
            os.close(spare[2])
            with contextlib.suppress(subprocess.TimeoutExpired):
                spare[0].wait(timeout=SUPERVISOR_EXIT_SECONDS)
            for stream in (spare[0].stdout, spare[0].stderr):
                if stream is not None:
                    stream.close()


def close_spare_supervisors() -> None:
    """End this process's spare supervisor, if it has one (a process closing its clusters)."""
    holder = sys.modules.get(_SPARES_MODULE)
    spares = getattr(holder, "spares", None)
    if spares is not None:
        spares.close()
        del holder.spares  # type: ignore[union-attr]


def spare_supervisors() -> SpareSupervisors:
    """This worker process's spare supervisors (one instance, kept in ``sys.modules``)."""
    holder = sys.modules.get(_SPARES_MODULE)
    if holder is None:
        holder = sys.modules.setdefault(_SPARES_MODULE, types.ModuleType(_SPARES_MODULE))
    # (Not a module-level lock: this module travels by value, and a lock cannot be pickled.)
    lock = holder.__dict__.setdefault("lock", threading.Lock())
    with lock:
        if not hasattr(holder, "spares"):
            holder.spares = SpareSupervisors()  # type: ignore[attr-defined]
    return holder.spares  # type: ignore[attr-defined]


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
