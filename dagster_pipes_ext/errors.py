"""Errors raised by ``PipesDaskClient``; all are ``DagsterPipesExecutionError``s."""

from __future__ import annotations

from dagster._core.errors import DagsterPipesExecutionError


class PipesDaskError(DagsterPipesExecutionError):
    """Base class of this package's errors."""


class PipesDaskSchedulerUnreachableError(PipesDaskError):
    """The Dask scheduler did not answer within the connect timeout."""


class PipesDaskNoWorkerError(PipesDaskError):
    """No worker could run the task (none connected, or none has the requested resources)."""


class PipesDaskWorkerLostError(PipesDaskError):
    """The worker running the command was lost; the command is not re-run on another worker."""


class PipesDaskLaunchError(PipesDaskError):
    """The command could not be started on the worker (not found, bad working directory...)."""


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
