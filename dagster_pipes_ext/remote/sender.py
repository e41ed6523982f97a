"""The launcher's two channels to the orchestrator: the data queue and the heartbeat."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dagster_pipes_ext.remote import dask_compat
from dagster_pipes_ext.remote.wire import HEARTBEAT_KEY, REC_NOTE, WINDOW_BATCHES, EventBatch

if TYPE_CHECKING:
    from dagster_pipes_ext.remote.process import Supervised

# The size a record counts for in a batch when it carries no text.
RECORD_OVERHEAD_BYTES = 64
PUT_SLICE_SECONDS = 0.5  # one wait for room in the data queue, between stop-policy checks
ROOM_POLL_FIRST_SECONDS = 0.005  # then doubling, up to PUT_SLICE_SECONDS
QUEUE_CREATE_WAIT_SECONDS = 30.0  # how long the data queue may take to appear
QUEUE_CREATE_POLL_SECONDS = 0.002


class ReaderGone(Exception):
    """The session's data queue was removed: the orchestrator is gone or gave up on it."""


class Sender:
    """Puts ordered, sequence-numbered batches of records into the session's data queue.

    Only the task thread calls it, so batches reach the orchestrator before the task result. A
    full queue (the reader is behind) blocks :meth:`flush`, calling ``on_blocked`` every
    :data:`PUT_SLICE_SECONDS` meanwhile; nothing is dropped.
    """

    def __init__(
        self, worker: Any, queue: str, max_batch_bytes: int, on_blocked: Callable[[], None]
    ) -> None:
        self._worker = worker
        self._queue = queue
        self._max_bytes = max_batch_bytes
        self._on_blocked = on_blocked
        self._records: list[list[Any]] = []
        self._size = 0
        self._queue_seen = False
        self._queue_full = False  # the last put found the queue full
        self.stock = False  # Dask's own queue_put: the scheduler lacks this package's handlers
        self.last_seq = -1

    @property
    def queue_seen(self) -> bool:
        """Whether a put found the session's queue (the orchestrator had opened the session)."""
        return self._queue_seen

    def add(self, kind: str, data: Any, size: int = RECORD_OVERHEAD_BYTES) -> None:
        """Add a record to the current batch; send the batch once it is full."""
        if self._records and self._size + size > self._max_bytes:
            self.flush()
        self._records.append([kind, data])
        self._size += size

    def add_records(self, records: list[tuple[str, Any, int]]) -> None:
        """Add records made by the message-file tail."""
        for kind, data, size in records:
            self.add(kind, data, size)

    def note(self, text: str) -> None:
        """Add a launcher notice for the run's log (never sends: safe while blocked)."""
        self._records.append([REC_NOTE, f"[pipes] {text}"])
        self._size += RECORD_OVERHEAD_BYTES

    def flush(self, forget: dict[str, Any] | None = None) -> None:
        """Send the current batch, if it holds anything (waiting while the queue is full).

        A put that finds the queue full sends the batch and waits on the scheduler; the waits
        after that ask for the queue's size (a few bytes) until there is room, rather than
        send the batch (up to ``max_batch_bytes``) again every :data:`PUT_SLICE_SECONDS`.
        ``forget`` marks the session's last batch (see :func:`dask_compat.queue_put`).
        """
        if not self._records:
            return
        batch: EventBatch = {"s": self.last_seq + 1, "r": self._records}
        created_by = time.monotonic() + QUEUE_CREATE_WAIT_SECONDS
        while True:
            try:
                if self._queue_full:
                    self._wait_for_room()
                dask_compat.queue_put(
                    self._worker,
                    self._queue,
                    batch,
                    PUT_SLICE_SECONDS,
                    stock=self.stock,
                    forget=forget,
                )
                break
            except TimeoutError:
                self._queue_seen = self._queue_full = True
                self._on_blocked()
            except dask_compat.HandlersMissing:
                self.stock = True  # where the orchestrator could not install them
            except dask_compat.QueueMissing:
                # Created by the orchestrator as the task was submitted, and removed when it
                # gave up on the session.
                if self._queue_seen or time.monotonic() > created_by:
                    raise ReaderGone(self._queue) from None
                self._on_blocked()  # a step that is gone already ends the wait
                time.sleep(QUEUE_CREATE_POLL_SECONDS)
        self._queue_seen = True
        self.last_seq += 1
        self._records = []
        self._size = 0

    def _wait_for_room(self) -> None:
        """Wait until the queue has room, polling its size more slowly as the wait goes on.

        The window behind the reader is several batches deep, so a put that comes a little
        after the room does never starves it.
        """
        delay = ROOM_POLL_FIRST_SECONDS
        while dask_compat.queue_size(self._worker, self._queue) >= WINDOW_BATCHES:
            self._on_blocked()
            time.sleep(delay)
            delay = min(delay * 2, PUT_SLICE_SECONDS)
        self._queue_full = False


class Heartbeat:
    """Tells the orchestrator, every ``interval`` seconds, that this launcher is alive.

    A tiny event on the session topic, from its own thread, so it keeps flowing while the data
    queue is full; it carries nothing of the command's output. It goes through the scheduler
    handler that publishes only while the topic exists (not waited for; one at a time), and
    through the worker's ``log_event`` where that handler is missing (as the sender found).
    """

    def __init__(self, worker: Any, topic: str, interval: float, sender: Sender) -> None:
        self._worker = worker
        self._topic = topic
        self._sender = sender
        self._done = threading.Event()
        self._in_flight: concurrent.futures.Future[Any] | None = None
        self._handler_missing = False
        self._proc: Supervised | None = None
        self._thread = threading.Thread(
            target=self._beat, args=(interval,), daemon=True, name="pipes-heartbeat"
        )

    def _beat(self, interval: float) -> None:
        beat = 0
        while not self._done.wait(interval):
            beat += 1
            with contextlib.suppress(Exception):
                self._publish({HEARTBEAT_KEY: beat})
            if self._proc is not None:
                self._proc.heartbeat()

    def _publish(self, msg: dict[str, int]) -> None:
        if self._sender.stock or self._handler_missing:
            self._worker.log_event(self._topic, msg)
            return
        if self._in_flight is not None and not self._in_flight.done():
            return  # the scheduler has not answered the last one yet
        self._in_flight = dask_compat.start_worker_rpc(
            self._worker, dask_compat.BEAT_HANDLER, topic=self._topic, msg=msg
        )
        self._in_flight.add_done_callback(self._answered)

    def _answered(self, future: concurrent.futures.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None and future.result() is None:
            self._handler_missing = True  # no such handler on this scheduler

    def attach(self, proc: Supervised) -> None:
        """Start beating, for the command's supervisor too (it stops the command when beats stop).

        Once the command has started: a thread start does not delay it.
        """
        self._proc = proc
        proc.heartbeat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (a beat that reaches the scheduler after the session is dropped)."""
        self._done.set()
