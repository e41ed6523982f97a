"""The command's stdout and stderr on the worker, read by the launcher's own thread."""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import os
import select
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from dagster_pipes_ext.remote.wire import REC_STDERR, REC_STDOUT

if TYPE_CHECKING:
    from dagster_pipes_ext.remote.process import Supervised

STDERR_TAIL_BYTES = 4096
PIPE_READ_BYTES = 65536
# What one drain takes from each pipe at most: the rest waits in the pipe, whose buffer is
# raised to this size where the kernel allows, so the command keeps writing while the launcher
# sends what it read.
DRAIN_BYTES_PER_PIPE = 1024 * 1024


class RecordSink(Protocol):
    """Where drained stdio goes (the launcher's sender)."""

    def add(self, kind: str, data: Any, size: int = ...) -> None:
        """Add a record."""


class StdioDrain:
    """The command's stdout/stderr: non-blocking pipes the task thread reads itself.

    No thread of its own: :meth:`wait` sleeps in ``poll`` until a pipe has data or reached its
    end, :meth:`wake` is called, or the timeout passes, and :meth:`drain` reads what the pipes
    hold, a bounded amount at a time. While the launcher waits for the reader (the data queue
    is full) nothing is read: the pipe fills and the command blocks on its next write. It also
    keeps the last few KiB of stderr for the error message.
    """

    def __init__(self, proc: Supervised, *, forward: bool) -> None:
        self._forward = forward
        self._stderr: deque[str] = deque()
        self._stderr_len = 0
        self._lock = threading.Lock()  # wake() comes from another thread; never after close()
        self._closed = False
        self._pipes: dict[int, tuple[str, codecs.IncrementalDecoder]] = {}
        self._poller = select.poll()  # not select(): a worker's descriptors may pass 1024
        for stream, kind in ((proc.stdout, REC_STDOUT), (proc.stderr, REC_STDERR)):
            if stream is None:
                continue
            fd = os.dup(stream.fileno())
            stream.close()
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError, AttributeError):  # Linux only; capped for non-root
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, DRAIN_BYTES_PER_PIPE)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self._pipes[fd] = (kind, decoder)
            self._poller.register(fd, select.POLLIN)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._poller.register(self._wake_read, select.POLLIN)

    @property
    def open(self) -> bool:
        """Whether a pipe is still open (the command, or something it started, holds it)."""
        return bool(self._pipes)

    def drain(self, sender: RecordSink) -> None:
        """Hand what the pipes hold to ``sender`` without blocking (bounded per pipe)."""
        for fd, (kind, decoder) in list(self._pipes.items()):
            budget = DRAIN_BYTES_PER_PIPE
            while budget > 0:
                try:
                    chunk = os.read(fd, min(PIPE_READ_BYTES, budget))
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    self._add(sender, kind, decoder.decode(b"", final=True))
                    self._close_pipe(fd)
                    break
                budget -= len(chunk)
                self._add(sender, kind, decoder.decode(chunk))

    def _add(self, sender: RecordSink, kind: str, text: str) -> None:
        if not text:
            return
        if kind == REC_STDERR:
            self._keep_stderr(text)
            if not self._forward:
                return
        sender.add(kind, text, len(text))

    def wake(self) -> None:
        """End a :meth:`wait` now (from any thread): something else needs the launcher's loop."""
        with self._lock:
            if not self._closed:
                with contextlib.suppress(OSError):  # full: a wake-up is pending already
                    os.write(self._wake_write, b"!")

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for stdio (or its end); the next :meth:`drain` handles it."""
        for fd, _ in self._poller.poll(int(timeout * 1000) + 1):
            if fd == self._wake_read:
                with contextlib.suppress(OSError):
                    os.read(self._wake_read, 4096)

    def _keep_stderr(self, text: str) -> None:
        self._stderr.append(text)
        self._stderr_len += len(text)
        while self._stderr_len > STDERR_TAIL_BYTES and len(self._stderr) > 1:
            self._stderr_len -= len(self._stderr.popleft())

    def stderr_tail(self) -> str:
        """The last few KiB the command wrote to stderr."""
        return "".join(self._stderr)[-STDERR_TAIL_BYTES:]

    def _close_pipe(self, fd: int) -> None:
        del self._pipes[fd]
        self._poller.unregister(fd)
        os.close(fd)

    def close(self) -> None:
        """Close the pipes (what nobody will read is discarded) and the wake-up pipe."""
        for fd in list(self._pipes):
            self._close_pipe(fd)
        with self._lock:
            self._closed = True
            os.close(self._wake_read)
            os.close(self._wake_write)
