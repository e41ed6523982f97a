"""``PipesDaskMessageReader``: Pipes messages and stdio arrive through a Dask scheduler queue."""

from __future__ import annotations

import concurrent.futures
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dagster import PipesMessageReader
from dagster_pipes import PipesParams

from dagster_pipes_ext.cluster import connection_state
from dagster_pipes_ext.errors import (
    PipesDaskError,
    PipesDaskMessagesLostError,
    PipesDaskMessageTooLargeError,
)
from dagster_pipes_ext.remote import dask_compat
from dagster_pipes_ext.remote.scheduler_ops import OPEN_SESSION
from dagster_pipes_ext.remote.wire import (
    HEARTBEAT_KEY,
    REC_END,
    REC_FRAGMENT,
    REC_LAST_FRAGMENT,
    REC_MESSAGES,
    REC_NOTE,
    REC_OVERSIZED,
    REC_START,
    REC_STDERR,
    REC_STDOUT,
    WINDOW_BATCHES,
    EventBatch,
    LaunchOutcome,
)

if TYPE_CHECKING:
    from dagster._core.pipes.context import PipesMessageHandler
    from distributed import Client

READER_PARAM = "dask_queue"
OPEN_TIMEOUT_SECONDS = 10.0
QUEUE_POLL_SECONDS = 0.5  # one wait on the scheduler for the next batch
# Closing: what is already in the queue is handled; the queue counts as empty after this wait.
CLOSING_POLL_SECONDS = 0.25
RETRY_SECONDS = 0.1  # after a failed queue call, before the next
CONSUMER_JOIN_SECONDS = 30.0
MAX_MALFORMED_WARNINGS = 10


class PipesDaskMessageReader(PipesMessageReader):
    """Reads a session's messages, stdout and stderr from its data queue on the Dask scheduler.

    The launcher on the worker tails the external process's message file and stdio and puts
    them as sequence-numbered batches into a bounded queue on the scheduler, created (with the
    subscription to the session topic, which carries the launcher's heartbeat) by one scheduler
    call that the task's submission does not wait for. A consumer thread takes one batch at a
    time, hands every message to Dagster's Pipes handler exactly once and in order, and writes
    stdout/stderr to the step's ``sys.stdout`` / ``sys.stderr`` (Dagster's compute logs). A
    batch it has taken is always handled: the queue's bound, not the reader, limits what is in
    flight, so a slow handler slows the launcher instead of growing memory. Malformed lines are
    reported and skipped; they never end the stream.

    Args:
        dask_client: The connected Dask client the task is submitted with.
        topic: The session's scheduler topic (heartbeats).
        queue: The session's data queue on the scheduler.
        forward_stdio: Write the external process's stdout/stderr to the step's compute logs.
        log: Where launcher notices and reader warnings go (the step's ``context.log``).
        drain_timeout_seconds: How long :meth:`wait_for_end` waits with nothing arriving.
        on_start: Called (from the consumer thread) when the launcher reports its start, before
            anything the command sent is handled.
        on_end: Called (from the consumer thread) once the launcher's last batch was handled.

    Attributes:
        worker_address: The address of the worker the launcher started on, once it did.
        last_sign_of_life: ``time.monotonic()`` of the launcher's last heartbeat or batch.
        message_count: Pipes messages handed to Dagster so far.
        lines_received: Message lines received (handled, malformed or oversized).
        missing_batches: Batches that never arrived (normally 0).
        oversized: ``{"method", "bytes"}`` of each message over ``max_message_bytes``.
        outcome: The launcher's outcome, once its last batch was handled (after every message).
        session_removed: Taking the launcher's last batch removed the session from the
            scheduler (its queue, events and topic): no clean-up call is needed.
    """

    def __init__(
        self,
        *,
        dask_client: Client,
        topic: str,
        queue: str,
        forward_stdio: bool = True,
        log: Any = None,
        drain_timeout_seconds: float = 60.0,
        on_start: Callable[[], Any] | None = None,
        on_end: Callable[[], Any] | None = None,
    ) -> None:
        self._client = dask_client
        self.topic = topic
        self.queue = queue
        self._forward_stdio = forward_stdio
        self._log = log
        self._drain_timeout = drain_timeout_seconds
        self._on_start = on_start
        self._on_end = on_end
        self._handler: PipesMessageHandler | None = None
        self._opening: concurrent.futures.Future[Any] | None = None
        self._opening_by_handler = False
        # Dask's own queue_get, not this package's scheduler handler (not installed there)
        self._stock_queue_calls = False
        self._next_seq = 0
        self._fragments: list[bytes] = []
        self._malformed = 0
        self._empty_since: float | None = None  # the queue has been empty since, for the consumer
        self._closing = threading.Event()
        self._ended = threading.Event()  # the consumer is done
        self._refuse = False  # the step has ended: nothing more reaches Dagster
        self.worker_address: str | None = None
        self.last_sign_of_life: float | None = None
        self.message_count = 0
        self.lines_received = 0
        self.missing_batches = 0
        self.oversized: list[dict[str, Any]] = []
        self.outcome: LaunchOutcome | None = None
        self.session_removed = False

    # -- the session's side ---------------------------------------------------------------

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        """Open the session's queue and topic and handle batches until the session closes.

        Closing handles what already reached the scheduler's queue, then stops: nothing is
        handed to Dagster after this returns.

        Args:
            handler: Dagster's Pipes message handler for this session.

        Yields:
            Params naming the queue; the external process receives stock file params instead.
        """
        self._handler = handler
        self._open()
        consumer = threading.Thread(target=self._consume, daemon=True, name="pipes-dask-reader")
        consumer.start()
        try:
            yield {READER_PARAM: self.queue}
        finally:
            self._closing.set()
            consumer.join(timeout=CONSUMER_JOIN_SECONDS)
            if consumer.is_alive():
                self._refuse = True
                self._warn("[pipes] Dagster's handler did not finish in time; closing without it.")
            if self._malformed > MAX_MALFORMED_WARNINGS:
                self._warn(
                    f"[pipes] {self._malformed} malformed message lines were skipped in all."
                )

    @property
    def expected_writer_count(self) -> int:
        """One writer per session: the launcher on the worker."""
        return 1

    def wait_for_end(self) -> None:
        """Wait until the launcher's last batch was handled, however long handling takes.

        Gives up only when the scheduler's queue stayed empty for ``drain_timeout_seconds``
        (the data in flight never came); :meth:`delivery_error` then says what is missing.
        Time Dagster spends handling what arrived does not count.
        """
        while not self._ended.wait(QUEUE_POLL_SECONDS):
            empty_since = self._empty_since
            if empty_since is not None and time.monotonic() - empty_since > self._drain_timeout:
                self._warn(
                    f"[pipes] nothing arrived from the launcher for {self._drain_timeout:g}s "
                    "(message_drain_timeout_seconds) after its task ended."
                )
                return

    def delivery_error(self) -> PipesDaskError | None:
        """The error to fail the step with if any message did not reach Dagster, else ``None``."""
        if self.outcome is None:
            return PipesDaskMessagesLostError(
                f"The launcher's final batch never arrived ({self.lines_received} message lines "
                f"and {self._next_seq} batches did); messages after those may be missing."
            )
        missing_lines = self.outcome["lines"] - self.lines_received
        if self.missing_batches or missing_lines:
            return PipesDaskMessagesLostError(
                f"{missing_lines} of {self.outcome['lines']} message lines from the external "
                f"process never reached Dagster ({self.missing_batches} batch(es) missing)."
            )
        if self.oversized:
            return PipesDaskMessageTooLargeError(self.oversized)
        return None

    def no_messages_debug_text(self) -> str:
        """Tell the user what the external process should have done."""
        return (
            f"Messages were expected in Dask scheduler queue {self.queue!r}, filled by the "
            "launcher that tails the file named in DAGSTER_PIPES_MESSAGES on the worker. The "
            "external process should call `open_dagster_pipes()` (default message writer) and "
            "report inside its `with` block; check the step's stderr for a failure before that."
        )

    # -- opening ----------------------------------------------------------------------------

    def _open(self) -> None:
        """Start creating the queue and subscribing to the topic; the consumer waits for it.

        Through the package's scheduler handler once an earlier session on this connection
        installed it (``OPEN_SESSION``, a ``run_function`` call, does on the first).
        """
        state = connection_state(self._client)
        if not state.run_function_refused and (
            dask_compat.set_topic_handler(self._client, self.topic, self._on_event)
        ):
            self._opening_by_handler = state.handlers_ready
            if self._opening_by_handler:
                self._opening = dask_compat.start_scheduler_rpc(
                    self._client, dask_compat.OPEN_HANDLER, **self._open_arguments()
                )
            else:
                self._opening = self._start_open_session()
            return
        self._open_with_plain_calls()

    def _open_arguments(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "queue": self.queue,
            "maxsize": WINDOW_BATCHES,
            "client_id": self._client.id,
        }

    def _start_open_session(self) -> concurrent.futures.Future[Any]:
        # open_session's parameters, in order
        arguments = self._open_arguments().values()
        return dask_compat.start_run_on_scheduler(self._client, OPEN_SESSION, *arguments)

    def _open_with_plain_calls(self) -> None:
        # Where run_function is refused: the batched subscription and a queue_create RPC.
        self._stock_queue_calls = True
        self._client.subscribe_topic(self.topic, self._on_event)
        dask_compat.create_queue(self._client, self.queue, WINDOW_BATCHES)

    def _finish_opening(self) -> None:
        if self._opening is None:
            return
        state = connection_state(self._client)
        try:
            answer = self._opening.result(timeout=OPEN_TIMEOUT_SECONDS)
            if self._opening_by_handler and answer is None:
                # The scheduler has no such handler (restarted since): install them again.
                state.handlers_ready = False
                self._start_open_session().result(timeout=OPEN_TIMEOUT_SECONDS)
            state.handlers_ready = True
        except Exception:
            state.run_function_refused = True
            state.handlers_ready = False
            self._open_with_plain_calls()
        finally:
            self._opening = None

    # -- the Dask event loop's side -------------------------------------------------------

    def _on_event(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if isinstance(msg, dict) and HEARTBEAT_KEY in msg:
            self.last_sign_of_life = time.monotonic()

    # -- the consumer thread --------------------------------------------------------------

    def _consume(self) -> None:
        try:
            self._finish_opening()
            while self.outcome is None:
                batch = self._next_batch()
                if batch is None:
                    return
                self._accept(batch)
        except Exception as exc:
            self._warn(f"[pipes] stopped reading queue {self.queue!r}: {exc}")
        finally:
            self._ended.set()

    def _next_batch(self) -> EventBatch | None:
        """The next batch, waiting for it; ``None`` once closing and the queue is empty."""
        while True:
            closing = self._closing.is_set()
            if self._client.status != "running":
                # Reconnecting (or gone): a call now would wait out the connect timeout.
                if closing:
                    return None
                time.sleep(RETRY_SECONDS)
                continue
            try:
                batch, forgotten = dask_compat.queue_get(
                    self._client,
                    self.queue,
                    timeout=CLOSING_POLL_SECONDS if closing else QUEUE_POLL_SECONDS,
                    stock=self._stock_queue_calls,
                )
                self._empty_since = None
                self.session_removed = self.session_removed or forgotten
                return batch
            except dask_compat.HandlersMissing:
                self._stock_queue_calls = True
                continue
            except TimeoutError:
                if self._empty_since is None:
                    self._empty_since = time.monotonic()
                if closing:
                    return None
            except Exception:
                if closing or self._client.status != "running":
                    return None
                time.sleep(RETRY_SECONDS)  # a passing connection problem

    def _accept(self, batch: EventBatch) -> None:
        seq = int(batch["s"])
        if seq < self._next_seq:
            return  # a duplicate: the launcher put it again after a lost answer
        if seq > self._next_seq:
            self.missing_batches += seq - self._next_seq
            self._warn(f"[pipes] batches {self._next_seq}..{seq - 1} never arrived.")
        self._next_seq = seq + 1
        self.last_sign_of_life = time.monotonic()
        for kind, data in batch["r"]:
            self._process(kind, data)

    def _process(self, kind: str, data: Any) -> None:
        if kind == REC_MESSAGES:
            self.lines_received += data.count("\n")
            for line in data.split("\n"):
                if line and not line.isspace():
                    self._handle_line(line)
        elif kind == REC_FRAGMENT:
            self._fragments.append(data)
        elif kind == REC_LAST_FRAGMENT:
            self._fragments.append(data)
            joined = b"".join(self._fragments)
            self._fragments = []
            line = joined.decode("utf-8", errors="replace")
            del joined  # a long message costs about twice its size here, not more
            self.lines_received += 1
            self._handle_line(line)
        elif kind == REC_OVERSIZED:
            self._fragments = []
            self.lines_received += 1
            self.oversized.append(data)
            self._warn(
                f"[pipes] a {data.get('method')!r} message of {data.get('bytes')} bytes is over "
                "max_message_bytes and was not forwarded; the step will fail."
            )
        elif kind in (REC_STDOUT, REC_STDERR):
            if self._forward_stdio:
                stream = sys.stdout if kind == REC_STDOUT else sys.stderr
                stream.write(data)
                stream.flush()
        elif kind == REC_START:
            self.worker_address = data.get("worker")
            if self._on_start is not None:
                self._on_start()
        elif kind == REC_NOTE:
            self._info(str(data))
        elif kind == REC_END:
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
        if self._refuse:
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

    def _warn(self, text: str) -> None:
        if self._log is not None:
            self._log.warning(text)

    def _info(self, text: str) -> None:
        if self._log is not None:
            self._log.info(text)
