"""The wire format between the orchestrator and the launcher: both ends import these names."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any, Literal, NamedTuple, TypedDict

# Keys of the Pipes bootstrap environment variables (the dagster-pipes protocol).
PIPES_CONTEXT_ENV = "DAGSTER_PIPES_CONTEXT"
PIPES_MESSAGES_ENV = "DAGSTER_PIPES_MESSAGES"

# Record kinds inside an event batch.
REC_START = "start"  # launcher facts, once, before the command starts
REC_MESSAGES = "m"  # complete Pipes message lines, "\n"-joined (JSON, parsed by the orchestrator)
REC_STDOUT = "o"
REC_STDERR = "e"
REC_NOTE = "note"  # a launcher notice for the run's log (e.g. "sent SIGINT")
REC_END = "end"  # the launcher's outcome, alone in the last batch, ahead of the task's result

# Where the scheduler's metadata holds the published launchers (one per digest).
LAUNCHER_METADATA_KEY = ("dagster-pipes-ext", "launcher")
TOPIC_PREFIX = "dagster-pipes/"


class SessionNames(NamedTuple):
    """The scheduler names of one session: its topic and its two events."""

    topic: str
    claim_event: str
    stop_event: str

    @property
    def events(self) -> list[str]:
        """Both event names, the stop event last."""
        return [self.claim_event, self.stop_event]


def session_names(run_id: str, session_id: str) -> SessionNames:
    """The one place session names are built (client, launcher clean-up and benchmarks)."""
    topic = f"{TOPIC_PREFIX}{run_id}/{session_id}"
    return SessionNames(topic, f"{topic}/claimed", f"{topic}/stop")


class LaunchSpec(TypedDict):
    """What the orchestrator sends to the worker for one session."""

    topic: str
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
    poll_interval_seconds: float


class EventBatch(TypedDict):
    """One scheduler event on the session topic: a sequence number and ordered records."""

    s: int
    r: list[list[Any]]


LaunchStatus = Literal["exited", "stopped", "redelivered", "launch_failed", "launcher_missing"]


class LaunchOutcome(TypedDict):
    """What the launcher task returns to the orchestrator."""

    status: LaunchStatus
    returncode: int | None
    last_seq: int
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
