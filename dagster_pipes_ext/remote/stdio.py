"""The command's stdout and stderr on the worker: two pump threads and a bounded queue."""

from __future__ import annotations

import codecs
import contextlib
import os
import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal, Protocol

from dagster_pipes_ext.remote.wire import REC_STDERR, REC_STDOUT

if TYPE_CHECKING:
    from dagster_pipes_ext.remote.process import Supervised

STDERR_TAIL_BYTES = 4096
PIPE_READ_BYTES = 65536
PUMP_JOIN_SECONDS = 5.0
PUMP_JOIN_SLICE_SECONDS = 0.01
# Pipe reads the launcher holds before the pumps wait (each up to PIPE_READ_BYTES).
STDIO_QUEUE_CHUNKS = 16


class RecordSink(Protocol):
    """Where drained stdio goes (the launcher's sender)."""

    def add(self, kind: str, data: Any, size: int = ...) -> None:
        """Add a record."""


_Item = tuple[str, str] | None  # (kind, text), or None when a pump reached EOF
_WAKE: _Item = ("", "")  # no stdio: wakes the launcher's loop (compared by identity)


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
            if item is _WAKE:
                continue
            kind, text = item
            if kind == REC_STDERR:
                self._keep_stderr(text)
                if not self._forward:
                    continue
            sender.add(kind, text, len(text))

    def wake(self) -> None:
        """End a :meth:`wait` now (from any thread): something else needs the launcher's loop."""
        with contextlib.suppress(queue.Full):  # a full queue ends the wait anyway
            self._queue.put_nowait(_WAKE)

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
        """Wait (bounded) for the pump threads to finish, discarding what nobody will read.

        A pump blocked on the full queue finishes once the queue is drained; one that put its
        EOF is ending already: joining it returns as soon as it has.
        """
        deadline = time.monotonic() + PUMP_JOIN_SECONDS
        for pump in self._pumps:
            while pump.is_alive() and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    while True:
                        self._queue.get_nowait()
                pump.join(timeout=PUMP_JOIN_SLICE_SECONDS)


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
