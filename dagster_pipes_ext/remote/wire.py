"""The wire format between the orchestrator and the launcher: both ends import these names."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any, Literal, NamedTuple, TypedDict

# Keys of the Pipes bootstrap environment variables (the dagster-pipes protocol).
PIPES_CONTEXT_ENV = "DAGSTER_PIPES_CONTEXT"
PIPES_MESSAGES_ENV = "DAGSTER_PIPES_MESSAGES"

# Record kinds inside a batch of the session's data queue.
REC_START = "start"  # launcher facts, once, before the command starts
REC_MESSAGES = "m"  # complete Pipes message lines, "\n"-joined (JSON, parsed by the orchestrator)
REC_FRAGMENT = "f"  # a piece of one message line longer than a batch (bytes, no newline)
REC_LAST_FRAGMENT = "F"  # the last piece of that line
REC_OVERSIZED = "big"  # a line over max_message_bytes, not forwarded: {"method", "bytes"}
REC_STDOUT = "o"
REC_STDERR = "e"
REC_NOTE = "note"  # a launcher notice for the run's log (e.g. "sent SIGINT")
REC_END = "end"  # the launcher's outcome, alone in the last batch, ahead of the task's result

# On the session topic (Dask events): the launcher's heartbeat, nothing of the command's output.
HEARTBEAT_KEY = "hb"

# Where the scheduler's metadata holds the published launchers (one per digest).
LAUNCHER_METADATA_KEY = ("dagster-pipes-ext", "launcher")
TOPIC_PREFIX = "dagster-pipes/"
# Batches the session's data queue holds before the launcher waits for the reader.
WINDOW_BATCHES = 8


class SessionNames(NamedTuple):
    """The scheduler names of one session: its topic, its data queue and its two events."""

    topic: str
    queue: str
    claim_event: str
    stop_event: str

    @property
    def events(self) -> list[str]:
        """Both event names, the stop event last."""
        return [self.claim_event, self.stop_event]


def session_names(run_id: str, session_id: str) -> SessionNames:
    """The one place session names are built (client, launcher clean-up and benchmarks)."""
    topic = f"{TOPIC_PREFIX}{run_id}/{session_id}"
    return SessionNames(topic, f"{topic}/data", f"{topic}/claimed", f"{topic}/stop")


class LaunchSpec(TypedDict):
    """What the orchestrator sends to the worker for one session."""

    topic: str
    queue: str
    claim_event: str
    stop_event: str
    command: list[str]
    env: dict[str, str]
    cwd: str | None
    context_data: dict[str, Any]
    forward_stdio: bool
    stop_when_abandoned: bool
    termination_timeout_seconds: float
    max_batch_bytes: int
    max_message_bytes: int
    poll_interval_seconds: float
    heartbeat_interval_seconds: float
    heartbeat_timeout_seconds: float


class SpecRef(TypedDict):
    """The task's argument when the session's spec waits on the scheduler for the launcher.

    Where ``run_function`` is refused the task carries the whole :class:`LaunchSpec` instead.
    """

    claim_event: str
    stashed: bool
    handlers: bool  # the scheduler has this package's handlers (claim through them)


class EventBatch(TypedDict):
    """One item of the session's data queue: a sequence number and ordered records.

    The queue is bounded (:data:`WINDOW_BATCHES`) and every batch is at most about
    ``max_batch_bytes``, so the data in flight between the launcher and the reader is bounded.
    """

    s: int
    r: list[list[Any]]


LaunchStatus = Literal["exited", "stopped", "redelivered", "launch_failed", "launcher_missing"]


class LaunchOutcome(TypedDict):
    """What the launcher task returns to the orchestrator."""

    status: LaunchStatus
    returncode: int | None
    last_seq: int
    lines: int  # message lines the command wrote (forwarded, or reported as oversized)
    worker: str
    hostname: str
    pid: int | None
    started_at: float | None
    ended_at: float
    stderr_tail: str
    error: str | None
    max_rss_kib: int | None
    cpu_user_seconds: float | None
    cpu_system_seconds: float | None


def encode_param(value: Any) -> str:
    """Encode a Pipes bootstrap param exactly as ``dagster_pipes.encode_param`` does."""
    return base64.b64encode(zlib.compress(json.dumps(value).encode("utf-8"))).decode("utf-8")
