"""One Pipes session without Dagster: the real launcher on a worker, the real reader, a counter.

The transport scenario and the flood's ``reader-only`` variant submit a ``LaunchTask`` and read
its messages with ``PipesDaskMessageReader``, Dagster's Pipes message handler replaced by
:class:`CountingHandler` (or a subclass).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from dagster_pipes_ext.cluster import connection_state
from dagster_pipes_ext.message_reader import PipesDaskMessageReader
from dagster_pipes_ext.remote.wire import LaunchOutcome, LaunchSpec, SessionNames, session_names
from dagster_pipes_ext.task import LaunchTask


class CountingHandler:
    """Stands in for Dagster's Pipes message handler: counts the messages it is given."""

    def __init__(self) -> None:
        self.count = 0

    def handle_message(self, message: Any) -> None:
        """Count it."""
        self.count += 1

    def report_pipes_framework_exception(self, origin: str, exc_info: Any) -> None:
        """Fail the session: a framework error is not a result."""
        raise RuntimeError(f"{origin}: {exc_info[1]}")


@dataclass
class Session:
    """One session's end: the launcher's outcome, the reader, the seconds it took."""

    outcome: LaunchOutcome
    reader: PipesDaskMessageReader
    seconds: float


def _spec(
    names: SessionNames,
    command: list[str],
    timeout_seconds: float,
    max_batch_bytes: int,
) -> LaunchSpec:
    return {
        "topic": names.topic,
        "queue": names.queue,
        "claim_event": names.claim_event,
        "stop_event": names.stop_event,
        "command": command,
        "env": {},
        "cwd": None,
        "context_data": {},
        "forward_stdio": False,
        "stop_when_abandoned": True,
        "termination_timeout_seconds": 5.0,
        "max_batch_bytes": max_batch_bytes,
        "max_message_bytes": 64 << 20,
        "poll_interval_seconds": 0.005,
        "heartbeat_interval_seconds": 1.0,
        "heartbeat_timeout_seconds": timeout_seconds,
    }


def run_session(
    dask_client: Any,
    name: str,
    command: list[str],
    handler: CountingHandler,
    *,
    timeout_seconds: float,
    max_batch_bytes: int,
    reader_class: type[PipesDaskMessageReader] = PipesDaskMessageReader,
) -> Session:
    """Run ``command`` through the launcher on a worker, its messages read into ``handler``.

    ``name`` prefixes the session's names and task key. The seconds are from the task's
    submission to the reader's end, the command's start-up included.
    """
    names = session_names(name, uuid.uuid4().hex)
    task = LaunchTask(
        dask_client,
        connection_state(dask_client),
        key=f"{name}-{names.topic.rsplit('/', 1)[-1]}",
        names=names,
        forward_termination=True,
        termination_timeout_seconds=5.0,
        worker_wait_timeout_seconds=timeout_seconds,
        heartbeat_timeout_seconds=timeout_seconds,
        restrictions={},
    )
    reader = reader_class(
        dask_client=dask_client,
        topic=names.topic,
        queue=names.queue,
        forward_stdio=False,
        on_end=task.notify_end,
    )
    spec = _spec(names, command, timeout_seconds, max_batch_bytes)
    try:
        with reader.read_messages(handler):  # type: ignore[arg-type]
            start = time.perf_counter()
            outcome = task.run(spec, reader, logging.getLogger(__name__))
            reader.wait_for_end()
            seconds = time.perf_counter() - start
    finally:
        task.forget(stop=True)
    return Session(outcome=outcome, reader=reader, seconds=seconds)
