"""The connection settings of ``PipesDaskClient``: which cluster, how to reach it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from dagster import ConfigurableResource
from pydantic import Field

from dagster_pipes_ext.cluster import Connection, DaskConnectionError, get_connection
from dagster_pipes_ext.errors import (
    PipesDaskConfigurationError,
    PipesDaskSchedulerUnreachableError,
)
from dagster_pipes_ext.sources import DaskConfigurationError, TlsSettings, resolve_source

if TYPE_CHECKING:
    from distributed import Client


class DaskConnectionResource(ConfigurableResource):
    """Where the Dask cluster is, and how to connect to it (``PipesDaskClient``'s base).

    See ``docs/deployments.md`` for the precedence of the sources and one recipe per engine.
    """

    scheduler_address: str | None = Field(
        default=None,
        description=(
            "Address of the Dask scheduler, e.g. tcp://127.0.0.1:8786 or tls://... Set at most "
            "one of scheduler_address, scheduler_file and cluster_class; with none, "
            "DASK_SCHEDULER_ADDRESS or Dask's scheduler-address config, else the embedded "
            "in-process cluster."
        ),
    )
    scheduler_file: str | None = Field(
        default=None,
        description="A scheduler file (`dask scheduler --scheduler-file`) naming the scheduler.",
    )
    cluster_class: str | None = Field(
        default=None,
        description=(
            "Dotted path of a Dask cluster class, or of a callable returning a cluster or a "
            "distributed.Client, e.g. 'dask_jobqueue.SLURMCluster' or "
            "'dagster_pipes_ext.gateway.connect_gateway_cluster'."
        ),
    )
    cluster_kwargs: dict[str, Any] | None = Field(
        default=None, description="Keyword arguments for cluster_class."
    )
    adapt_kwargs: dict[str, Any] | None = Field(
        default=None,
        description="Arguments of cluster.adapt(...) for a started cluster (minimum, maximum).",
    )
    cluster_lifetime: Literal["process", "run"] = Field(
        default="process",
        description=(
            "A cluster_class cluster lives once per process (cached, closed at exit) or is "
            "started and closed inside each run()."
        ),
    )
    allow_embedded_cluster: bool = Field(
        default=True,
        description=(
            "Fall back to the embedded in-process cluster when no source is set. False: fail "
            "instead, naming the sources looked at (for deployments where running on the "
            "Dagster host is wrong)."
        ),
    )
    tls_ca_file: str | None = Field(
        default=None,
        description="CA certificate (PEM) the scheduler's certificate is checked with.",
    )
    tls_client_cert: str | None = Field(
        default=None, description="Client certificate (PEM) for a tls:// scheduler."
    )
    tls_client_key: str | None = Field(
        default=None, description="Client private key (PEM) for a tls:// scheduler."
    )
    require_encryption: bool | None = Field(
        default=None, description="Refuse any scheduler connection that is not TLS."
    )
    connect_timeout_seconds: float = Field(
        default=10.0, description="How long to wait for the Dask scheduler to answer."
    )
    embedded_threads_per_worker: int = Field(
        default=4, description="Threads (concurrent commands) of the embedded cluster's worker."
    )
    embedded_tcp: bool = Field(
        default=False,
        description=(
            "The embedded cluster listens on tcp://127.0.0.1 instead of in-process only, so the "
            "command can connect a distributed.Client to it (DASK_SCHEDULER_ADDRESS is set)."
        ),
    )
    embedded_dashboard: bool = Field(
        default=False,
        description=(
            "Serve the embedded cluster's Dask dashboard on 127.0.0.1 (needs bokeh; adds ~1.5 s "
            "to the cluster's start, and lives as long as the process that started it)."
        ),
    )

    def get_dask_client(self) -> Client:
        """Return the (cached) Dask client this resource submits to.

        Raises:
            PipesDaskSchedulerUnreachableError: The scheduler could not be reached.
            PipesDaskConfigurationError: The connection fields contradict each other.
        """
        return self._connect(cached=True).client

    def _connect(self, *, cached: bool) -> Connection:
        require_field(
            "connect_timeout_seconds",
            self.connect_timeout_seconds,
            above=0,
            why="how long the scheduler has to answer",
        )
        require_field(
            "embedded_threads_per_worker",
            self.embedded_threads_per_worker,
            at_least=1,
            why="each concurrent command on the embedded cluster takes one thread",
        )
        try:
            source = resolve_source(
                scheduler_address=self.scheduler_address,
                scheduler_file=self.scheduler_file,
                cluster_class=self.cluster_class,
                cluster_kwargs=self.cluster_kwargs,
                adapt_kwargs=self.adapt_kwargs,
                allow_embedded=self.allow_embedded_cluster,
                embedded_tcp=self.embedded_tcp,
            )
            return get_connection(
                source,
                tls=self._tls,
                connect_timeout_seconds=self.connect_timeout_seconds,
                embedded_threads_per_worker=self.embedded_threads_per_worker,
                embedded_dashboard=self.embedded_dashboard,
                cached=cached,
            )
        except DaskConfigurationError as exc:
            raise PipesDaskConfigurationError(str(exc)) from exc
        except DaskConnectionError as exc:
            raise PipesDaskSchedulerUnreachableError(str(exc)) from exc

    @property
    def _tls(self) -> TlsSettings:
        return TlsSettings(
            self.tls_ca_file, self.tls_client_cert, self.tls_client_key, self.require_encryption
        )


def require_field(
    name: str,
    value: float,
    *,
    why: str,
    at_least: float | None = None,
    above: float | None = None,
) -> None:
    """Fail with a :class:`PipesDaskConfigurationError` naming a field whose value is out of range.

    Checked when the resource is used, not when it is built: ``EnvVar`` values are known then.
    """
    if at_least is not None and value >= at_least:
        return
    if above is not None and value > above:
        return
    bound = f"at least {at_least:g}" if at_least is not None else f"more than {above:g}"
    raise PipesDaskConfigurationError(
        f"PipesDaskClient({name}={value!r}) is out of range: it must be {bound} ({why}). "
        "Change it where the resource is configured."
    )
