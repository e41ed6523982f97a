"""Errors raised by ``PipesDaskClient``; all are ``DagsterPipesExecutionError``s.

Also the mapping from what the cluster reported to the error a step fails with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster._core.errors import DagsterPipesExecutionError

from dagster_pipes_ext.remote.wire import LAUNCHER_METADATA_KEY, LaunchOutcome


class PipesDaskError(DagsterPipesExecutionError):
    """Base class of this package's errors."""


class PipesDaskConfigurationError(PipesDaskError):
    """The resource's fields are out of range, contradict each other or name nothing usable."""


class PipesDaskSchedulerUnreachableError(PipesDaskError):
    """The Dask scheduler did not answer within the connect timeout."""


class PipesDaskNoWorkerError(PipesDaskError):
    """No worker could run the task (none connected, or none has the requested resources)."""


class PipesDaskWorkerLostError(PipesDaskError):
    """The worker running the command was lost; the command is not re-run on another worker."""


class PipesDaskLaunchError(PipesDaskError):
    """The command could not be started on the worker (not found, bad working directory...)."""


class PipesDaskMessagesLostError(PipesDaskError):
    """Messages the external process reported did not all reach Dagster: the step fails."""


class PipesDaskMessageTooLargeError(PipesDaskError):
    """A Pipes message was larger than ``max_message_bytes`` and was not forwarded.

    Attributes:
        oversized: ``{"method", "bytes"}`` of each such message.
    """

    def __init__(self, oversized: list[dict[str, Any]]) -> None:
        described = ", ".join(f"{m.get('method')!r} ({m.get('bytes'):,} bytes)" for m in oversized)
        super().__init__(
            f"{len(oversized)} Pipes message(s) from the external process were larger than "
            f"max_message_bytes and were not forwarded: {described}. Every other message was "
            "delivered. Raise PipesDaskClient(max_message_bytes=...) above that size, or report "
            "less data in one message (large values belong in storage, with a path in the "
            "metadata)."
        )
        self.oversized = oversized


class PipesDaskProcessError(PipesDaskError):
    """The external process exited with a non-zero code or was killed by a signal.

    Attributes:
        returncode: The exit code (negative: the signal that killed the process).
        worker: The address of the Dask worker that ran it.
        stderr_tail: The last few KiB the process wrote to stderr.
    """

    def __init__(self, message: str, *, returncode: int, worker: str, stderr_tail: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.worker = worker
        self.stderr_tail = stderr_tail


# -- from what the cluster said to the error the step fails with --------------------------------


def error_for_outcome(
    outcome: LaunchOutcome, started_on: str | None = None
) -> PipesDaskError | None:
    """The error for a launcher's outcome, or ``None`` when the command exited 0.

    Args:
        outcome: What the launcher returned.
        started_on: The worker an earlier delivery of the task started on, if known.
    """
    if outcome["status"] == "launcher_missing":
        return PipesDaskLaunchError(
            f"Dask worker {outcome['worker']} could not find the launcher this client published "
            f"in the scheduler's metadata (key {list(LAUNCHER_METADATA_KEY)}), even after "
            "publishing it again; the command was not started. Check that the scheduler accepts "
            "set_metadata/get_metadata calls."
        )
    if outcome["status"] == "redelivered":
        return worker_lost_error(started_on, redelivered_to=outcome["worker"])
    if outcome["status"] == "launch_failed":
        return PipesDaskLaunchError(
            f"{outcome['error']} (Dask worker {outcome['worker']}, host {outcome['hostname']})"
        )
    code = outcome["returncode"]
    if code == 0:
        return None
    assert code is not None
    tail = outcome["stderr_tail"].rstrip()
    how = f"was {outcome['error']}" if outcome["error"] else f"failed with exit code {code}"
    stopped = " after a stop request" if outcome["status"] == "stopped" else ""
    return PipesDaskProcessError(
        f"External process on Dask worker {outcome['worker']} "
        f"(host {outcome['hostname']}) {how}{stopped}."
        + (f"\nLast lines of its stderr:\n{tail}" if tail else ""),
        returncode=code,
        worker=outcome["worker"],
        stderr_tail=outcome["stderr_tail"],
    )


def worker_lost_error(
    worker: str | None, redelivered_to: str | None = None
) -> PipesDaskWorkerLostError:
    """The worker running the command was lost (and Dask may have delivered the task again)."""
    where = f" ({worker})" if worker else ""
    again = (
        f" Dask delivered the task again to {redelivered_to}, which refused to start it."
        if redelivered_to
        else ""
    )
    return PipesDaskWorkerLostError(
        f"The Dask worker running the external process{where} was lost.{again} The command is "
        "not re-run automatically because it may have side effects; add a Dagster RetryPolicy "
        "to the asset or op to run it again."
    )


def worker_unresponsive_error(
    worker: str, silent_seconds: float, timeout: float
) -> PipesDaskWorkerLostError:
    """The launcher sent nothing, not even a heartbeat, for longer than the timeout."""
    return PipesDaskWorkerLostError(
        f"The Dask worker running the external process ({worker}) stopped responding: no "
        f"heartbeat from its launcher for {silent_seconds:.1f}s (heartbeat_timeout_seconds="
        f"{timeout:g}). The worker may be hung, stopped or overloaded; its supervisor stops the "
        "command on its own. Add a Dagster RetryPolicy to run it again."
    )


def error_for_ended_task(
    key: str, exception: BaseException | None, cancelled: bool, connected: bool, worker: str | None
) -> PipesDaskError:
    """The error for a launcher task that ended without an outcome (failed or cancelled)."""
    from distributed.scheduler import KilledWorker

    if isinstance(exception, KilledWorker):
        return worker_lost_error(worker)
    if exception is not None:
        # Without a worker, it never reported in: the scheduler refused it, or it failed first.
        where = (
            f"failed on the Dask worker {worker}"
            if worker
            else "failed before it reported from any Dask worker (the scheduler refused it, or "
            "the worker could not start it)"
        )
        return PipesDaskLaunchError(
            f"The launcher task {key!r} {where}: {type(exception).__name__}: {exception}"
        )
    if cancelled and not connected:
        return PipesDaskSchedulerUnreachableError(
            f"The connection to the Dask scheduler was lost while task {key!r} ran. The launcher "
            "stops the command when its worker loses the scheduler; add a Dagster RetryPolicy "
            "to run it again once the scheduler is back."
        )
    return PipesDaskError(f"The Dask task {key!r} was cancelled on the cluster.")


def no_worker_error(
    workers_info: Mapping[str, Any], key: str, restrictions: Mapping[str, Any], timeout: float
) -> PipesDaskNoWorkerError:
    """No connected worker could run the task within ``timeout`` seconds."""
    if not workers_info:
        return PipesDaskNoWorkerError(
            f"No Dask worker connected to the scheduler within {timeout:g}s, so the task "
            f"{key!r} could not start. Start a worker (`dask worker <scheduler>`)."
        )
    offered = {addr: info.get("resources") or {} for addr, info in workers_info.items()}
    return PipesDaskNoWorkerError(
        f"No Dask worker can run task {key!r}: it needs "
        f"resources={restrictions.get('resources') or {}} workers={restrictions.get('workers')}, "
        f"and within {timeout:g}s no connected worker offered them (workers and their "
        f"resources: {offered}). Start a worker with `dask worker --resources ...` or change "
        "`resources=`/`workers=`."
    )
