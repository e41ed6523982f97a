"""Dagster Pipes on Dask: run external code on any Dask cluster with full Pipes observability."""

from dagster_shared.libraries import DagsterLibraryRegistry

from dagster_pipes_ext.client import PipesDaskClient
from dagster_pipes_ext.cluster import close_cached_clients
from dagster_pipes_ext.context_injector import PipesDaskContextInjector
from dagster_pipes_ext.errors import (
    PipesDaskConfigurationError,
    PipesDaskError,
    PipesDaskLaunchError,
    PipesDaskMessagesLostError,
    PipesDaskMessageTooLargeError,
    PipesDaskNoWorkerError,
    PipesDaskProcessError,
    PipesDaskSchedulerUnreachableError,
    PipesDaskWorkerLostError,
)
from dagster_pipes_ext.message_reader import PipesDaskMessageReader
from dagster_pipes_ext.version import __version__

DagsterLibraryRegistry.register("dagster-pipes-ext", __version__, is_dagster_package=False)

__all__ = [
    "PipesDaskClient",
    "PipesDaskConfigurationError",
    "PipesDaskContextInjector",
    "PipesDaskError",
    "PipesDaskLaunchError",
    "PipesDaskMessageReader",
    "PipesDaskMessageTooLargeError",
    "PipesDaskMessagesLostError",
    "PipesDaskNoWorkerError",
    "PipesDaskProcessError",
    "PipesDaskSchedulerUnreachableError",
    "PipesDaskWorkerLostError",
    "__version__",
    "close_cached_clients",
]
