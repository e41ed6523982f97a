"""``PipesDaskMessageReader``: Pipes messages and stdio arrive as Dask scheduler events."""

from __future__ import annotations

import concurrent.futures
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from dagster import PipesMessageReader
from dagster_pipes import PipesParams

from dagster_pipes_ext.cluster import connection_state
from dagster_pipes_ext.remote import dask_compat
from dagster_pipes_ext.remote.scheduler_ops import SUBSCRIBE_TOPIC
from dagster_pipes_ext.remote.wire import (
    REC_END,
    REC_MESSAGES,
    REC_NOTE,
    REC_START,
    REC_STDERR,
    REC_STDOUT,
    EventBatch,
    LaunchOutcome,
)

if TYPE_CHECKING:
    from dagster._core.pipes.context import PipesMessageHandler
    from distributed import Client

READER_PARAM = "dask_topic"
_STOP = object()
SUBSCRIBE_TIMEOUT_SECONDS = 10.0
MAX_MALFORMED_WARNINGS = 10
GAP_FILL_AFTER_SECONDS = 1.0
QUEUE_POLL_SECONDS = 0.5
# Closing without the launcher's last batch: how long the topic must stay quiet, and at most.
QUIET_SECONDS = 0.25
QUIET_DRAIN_SECONDS = 3.0
CONSUMER_JOIN_SECONDS = 10.0


class PipesDaskMessageReader(PipesMessageReader):
    """Reads a session's messages, stdout and stderr from a Dask scheduler topic.

    The launcher on the worker tails the external process's message file and stdio and publishes
    them as batched, sequence-numbered events on a topic unique to the session. This reader
    subscribes to the topic with one scheduler call that also returns the events published
    before it, so the task is submitted without waiting for the subscription. A consumer thread
    hands every message to Dagster's Pipes handler exactly once and in order, and writes
    stdout/stderr to the step's ``sys.stdout`` / ``sys.stderr`` (Dagster's compute logs).
    Malformed lines are reported and skipped; they never end the stream.

    Args:
        dask_client: The connected Dask client the task is submitted with.
        topic: The session's scheduler topic.
        forward_stdio: Write the external process's stdout/stderr to the step's compute logs.
        log: Where launcher notices and reader warnings go (the step's ``context.log``).
        drain_timeout_seconds: How long closing the session waits for messages still in flight.
        on_end: Called (from the consumer thread) once the launcher's last batch was handled.

    Attributes:
        worker_address: The address of the worker the launcher started on, once it did.
        message_count: Pipes messages handed to Dagster so far.
        lost_batches: Batches given up on as never arriving (normally 0).
        outcome: The launcher's outcome, once its last batch was handled (after every message).
    """

    def __init__(
        self,
        *,
        dask_client: Client,
        topic: str,
        forward_stdio: bool = True,
        log: Any = None,
        drain_timeout_seconds: float = 60.0,
        on_end: Callable[[], Any] | None = None,
    ) -> None:
        self._client = dask_client
        self.topic = topic
        self._forward_stdio = forward_stdio
        self._log = log
        self._drain_timeout = drain_timeout_seconds
        self._queue: queue.Queue[Any] = queue.Queue()
        self._cond = threading.Condition()
        self._next_seq = 0
        self._pending: dict[int, EventBatch] = {}
        self._last_progress = time.monotonic()
        self._final_seq: int | None = None
        self._handler: PipesMessageHandler | None = None
        self._malformed = 0
        self._subscription: concurrent.futures.Future[Any] | None = None
        self._on_end = on_end
        self.worker_address: str | None = None
        self.message_count = 0
        self.lost_batches = 0
        self.outcome: LaunchOutcome | None = None

    # -- the session's side ---------------------------------------------------------------

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        """Subscribe to the session topic and handle events until the session closes.

        Args:
            handler: Dagster's Pipes message handler for this session.

        Yields:
            Params naming the topic; the external process receives stock file params instead.
        """
        self._handler = handler
        self._subscribe()
        consumer = threading.Thread(target=self._consume, daemon=True, name="pipes-dask-reader")
        consumer.start()
        try:
            yield {READER_PARAM: self.topic}
        finally:
            drained = False
            try:
                drained = self._drain()
            finally:
                self._queue.put(_STOP)
                if not drained:
                    # Still handling what arrived: let it finish before the session closes.
                    # (Drained, the consumer has nothing left to hand to Dagster.)
                    consumer.join(timeout=CONSUMER_JOIN_SECONDS)
                if self._malformed > MAX_MALFORMED_WARNINGS:
                    self._warn(
                        f"[pipes] {self._malformed} malformed message lines were skipped in all."
                    )

    @property
    def expected_writer_count(self) -> int:
        """One writer per session: the launcher on the worker."""
        return 1

    # The subscription outlives the session: PipesDaskClient drops it together with the topic.

    def _subscribe(self) -> None:
        """Start subscribing; the consumer thread collects the result before handling events."""
        if not connection_state(self._client).run_function_refused and (
            dask_compat.set_topic_handler(self._client, self.topic, self._on_event)
        ):
            self._subscription = dask_compat.start_run_on_scheduler(
                self._client, SUBSCRIBE_TOPIC, self.topic, self._client.id
            )
            return
        # The scheduler refuses run_function: the batched way, which travels ahead of the task.
        self._client.subscribe_topic(self.topic, self._on_event)

    def _finish_subscribing(self) -> None:
        """Take the events published before the subscription reached the scheduler."""
        if self._subscription is None:
            return
        try:
            earlier = self._subscription.result(timeout=SUBSCRIBE_TIMEOUT_SECONDS)
        except Exception:
            # run_function refused (or the call failed): subscribe the batched way, then re-read
            # the topic for what was published meanwhile (the gap filler catches any rest).
            connection_state(self._client).run_function_refused = True
            self._client.subscribe_topic(self.topic, self._on_event)
            try:
                retained = self._client.get_events(self.topic)
                earlier = [event for _, event in cast("tuple[tuple[float, Any], ...]", retained)]
            except Exception:
                earlier = []
        finally:
            self._subscription = None
        for batch in earlier:
            if isinstance(batch, dict) and "s" in batch:
                self._accept(batch)  # type: ignore[arg-type]

    def expect_final_batch(self, last_seq: int) -> None:
        """Tell the reader the launcher's last sequence number (the task's result came first)."""
        if last_seq >= 0:
            self._set_final_seq(last_seq)

    def _set_final_seq(self, seq: int) -> None:
        # The one writer: from the launcher's last batch, or from the task's result.
        self._final_seq = seq

    def no_messages_debug_text(self) -> str:
        """Tell the user what the external process should have done."""
        return (
            f"Messages were expected on Dask scheduler topic {self.topic!r}, published by the "
            "launcher that tails the file named in DAGSTER_PIPES_MESSAGES on the worker. The "
            "external process should call `open_dagster_pipes()` (default message writer) and "
            "report inside its `with` block; check the step's stderr for a failure before that."
        )

    # -- the Dask event loop's side: enqueue only -----------------------------------------

    def _on_event(self, event: tuple[float, Any]) -> None:
        self._queue.put(event[1])

    # -- the consumer thread --------------------------------------------------------------

    def _consume(self) -> None:
        self._finish_subscribing()
        while True:
            try:
                item = self._queue.get(timeout=QUEUE_POLL_SECONDS)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                self._accept(item)
            if self._missing() and time.monotonic() - self._last_progress > GAP_FILL_AFTER_SECONDS:
                self._fill_gaps()

    def _missing(self) -> bool:
        """Whether a batch is overdue: a hole before a received one, or before the final one."""
        return bool(self._pending) or (
            self._final_seq is not None and self._next_seq <= self._final_seq
        )

    def _accept(self, batch: EventBatch) -> None:
        try:
            seq = int(batch["s"])
        except (TypeError, KeyError, ValueError):
            self._warn(
                f"[pipes] ignored an unexpected event on topic {self.topic!r}: {batch!r:.200}"
            )
            return
        if seq < self._next_seq or seq in self._pending:
            return  # a duplicate (e.g. re-read while filling a gap)
        self._pending[seq] = batch
        while self._next_seq in self._pending:
            self._process(self._pending.pop(self._next_seq))
            with self._cond:
                self._next_seq += 1
                self._cond.notify_all()
            self._last_progress = time.monotonic()

    def _fill_gaps(self) -> None:
        """Recover missing batches from the scheduler's retained events for the topic."""
        self._last_progress = time.monotonic()
        try:
            events = cast("tuple[tuple[float, Any], ...]", self._client.get_events(self.topic))
        except Exception as exc:
            self._warn(f"[pipes] could not re-read topic {self.topic!r}: {exc}")
            events = ()
        for _, batch in events:
            if isinstance(batch, dict) and "s" in batch and batch["s"] >= self._next_seq:
                self._accept(batch)  # type: ignore[arg-type]
        if self._final_seq is None or not self._missing():
            return  # the launcher is still running: later events may yet close the hole
        first = min(self._pending) if self._pending else self._final_seq + 1
        lost = first - self._next_seq
        self.lost_batches += lost
        self._warn(
            f"[pipes] {lost} message batch(es) from the external process never arrived "
            f"(sequence {self._next_seq}..{first - 1}); continuing with the rest."
        )
        with self._cond:
            self._next_seq = first
            self._cond.notify_all()
        if self._pending:
            self._accept(self._pending.pop(first))

    def _process(self, batch: EventBatch) -> None:
        for kind, data in batch["r"]:
            if kind == REC_MESSAGES:
                for line in data.split("\n"):
                    if line and not line.isspace():
                        self._handle_line(line)
            elif kind == REC_STDOUT:
                if self._forward_stdio:
                    sys.stdout.write(data)
                    sys.stdout.flush()
            elif kind == REC_STDERR:
                if self._forward_stdio:
                    sys.stderr.write(data)
                    sys.stderr.flush()
            elif kind == REC_START:
                self.worker_address = data.get("worker")
            elif kind == REC_NOTE:
                self._info(str(data))
            elif kind == REC_END:
                self._set_final_seq(int(data["last_seq"]))
                self.outcome = data
                if self._on_end is not None:
                    self._on_end()

    def _handle_line(self, line: str) -> None:
        assert self._handler is not None
        try:
            message = json.loads(line)
            if not isinstance(message, dict) or "method" not in message:
                raise ValueError("not a Pipes message object")
        except ValueError as exc:
            self._malformed += 1
            if self._malformed <= MAX_MALFORMED_WARNINGS:
                self._warn(
                    f"[pipes] skipped a malformed message line from the external process "
                    f"({exc}): {line[:200]!r}"
                )
            return
        self.message_count += 1
        try:
            self._handler.handle_message(message)  # type: ignore[arg-type]
        except Exception as exc:
            try:
                self._handler.report_pipes_framework_exception(
                    f"{type(self).__name__} handling {message.get('method')!r}", sys.exc_info()
                )
            except Exception:
                self._warn(f"[pipes] could not handle a {message.get('method')!r} message: {exc}")

    # -- closing --------------------------------------------------------------------------

    def _drain(self) -> bool:
        """Wait for the messages still in flight; return whether every batch was handled."""
        if self._final_seq is None:
            # The launcher never reported its final batch (it failed or its worker was lost):
            # handle what has already arrived, until the topic is quiet.
            deadline = time.monotonic() + QUIET_DRAIN_SECONDS
            seen = -2
            while time.monotonic() < deadline:
                with self._cond:
                    self._cond.wait(timeout=QUIET_SECONDS)
                    now = self._next_seq
                if now == seen and self._queue.empty():
                    break
                seen = now
            return False
        deadline = time.monotonic() + self._drain_timeout
        with self._cond:
            while self._next_seq <= self._final_seq and time.monotonic() < deadline:
                remaining = max(0.0, deadline - time.monotonic())
                self._cond.wait(timeout=min(QUEUE_POLL_SECONDS, remaining))
            if self._next_seq > self._final_seq:
                return True
        self._warn(
            f"[pipes] {self._final_seq + 1 - self._next_seq} message batch(es) did not arrive "
            f"within {self._drain_timeout:g}s of the task's end; closing without them."
        )
        return False

    def _warn(self, text: str) -> None:
        if self._log is not None:
            self._log.warning(text)

    def _info(self, text: str) -> None:
        if self._log is not None:
            self._log.info(text)
