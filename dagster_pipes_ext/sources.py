"""Where a connection comes from: the sources, their precedence, and TLS settings.

One documented precedence (:func:`resolve_source`): an explicit ``scheduler_address``,
``scheduler_file`` or ``cluster_class`` (setting two is a configuration error), else
``DASK_SCHEDULER_ADDRESS`` / Dask's ``scheduler-address`` config (what ``distributed.Client()``
itself honours), else the embedded in-process ``LocalCluster`` (unless refused).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

SourceKind = Literal["address", "scheduler_file", "cluster_class", "environment", "embedded"]


class DaskConfigurationError(ValueError):
    """The connection settings contradict each other or name nothing usable."""


@dataclass(frozen=True)
class ClusterSource:
    """Where a connection comes from.

    Attributes:
        kind: Which source won (see :func:`resolve_source`).
        target: The address, scheduler file or cluster class (empty for the embedded cluster).
        cluster_kwargs: JSON of the cluster class's keyword arguments.
        adapt_kwargs: JSON of ``cluster.adapt()``'s arguments (``""``: no adaptive scaling).
    """

    kind: SourceKind
    target: str = ""
    cluster_kwargs: str = "{}"
    adapt_kwargs: str = ""

    def describe(self) -> str:
        """Say where the cluster came from, for the run's log."""
        return {
            "address": f"scheduler_address {self.target}",
            "scheduler_file": f"scheduler_file {self.target}",
            "cluster_class": f"cluster_class {self.target}",
            "environment": f"DASK_SCHEDULER_ADDRESS / Dask config {self.target}",
            "embedded": "the embedded in-process cluster",
        }[self.kind]


@dataclass(frozen=True)
class TlsSettings:
    """Client-side TLS for the scheduler connection (all paths on the orchestrator)."""

    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    require_encryption: bool | None = None

    def security(self) -> Any:
        """A ``distributed.Security`` for these settings, or ``None`` for Dask's own config."""
        if not any((self.ca_file, self.client_cert, self.client_key, self.require_encryption)):
            return None
        for field_name, path in (
            ("tls_ca_file", self.ca_file),
            ("tls_client_cert", self.client_cert),
            ("tls_client_key", self.client_key),
        ):
            if path and not os.path.isfile(path):
                raise DaskConfigurationError(
                    f"{field_name}={path!r} is not a file on this host (TLS files are read "
                    "where the Dagster step runs). Point it at the PEM file, or mount it there."
                )
        from distributed.security import Security

        return Security(
            tls_ca_file=self.ca_file,
            tls_client_cert=self.client_cert,
            tls_client_key=self.client_key,
            require_encryption=bool(self.require_encryption),
        )

    def command_env(self) -> dict[str, str]:
        """Dask's TLS config variables that give the command the same client TLS settings."""
        prefix = "DASK_DISTRIBUTED__COMM__"
        env = {
            f"{prefix}TLS__CA_FILE": self.ca_file,
            f"{prefix}TLS__CLIENT__CERT": self.client_cert,
            f"{prefix}TLS__CLIENT__KEY": self.client_key,
        }
        out = {k: v for k, v in env.items() if v}
        if self.require_encryption:
            out[f"{prefix}REQUIRE_ENCRYPTION"] = "True"
        return out


# -- resolving ----------------------------------------------------------------------------------


def resolve_source(
    *,
    scheduler_address: str | None = None,
    scheduler_file: str | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
    adapt_kwargs: dict[str, Any] | None = None,
    allow_embedded: bool = True,
    embedded_tcp: bool = False,
) -> ClusterSource:
    """Pick the connection source by the documented precedence.

    Raises:
        DaskConfigurationError: Two explicit sources, cluster options without a class, or no
            source while the embedded cluster is refused.
    """
    explicit = {
        "scheduler_address": scheduler_address,
        "scheduler_file": scheduler_file,
        "cluster_class": cluster_class,
    }
    named = [name for name, value in explicit.items() if value]
    if len(named) > 1:
        raise DaskConfigurationError(
            f"PipesDaskClient has both {named[0]} and {named[1]} set; set only one of "
            "scheduler_address, scheduler_file and cluster_class."
        )
    if (cluster_kwargs or adapt_kwargs) and not cluster_class:
        raise DaskConfigurationError(
            "PipesDaskClient has cluster_kwargs/adapt_kwargs but no cluster_class to pass them to."
        )
    if scheduler_address:
        return ClusterSource("address", scheduler_address)
    if scheduler_file:
        return ClusterSource("scheduler_file", scheduler_file)
    if cluster_class:
        return ClusterSource(
            "cluster_class",
            cluster_class,
            json.dumps(cluster_kwargs or {}, sort_keys=True, default=str),
            json.dumps(adapt_kwargs, sort_keys=True, default=str) if adapt_kwargs else "",
        )
    configured = os.environ.get("DASK_SCHEDULER_ADDRESS") or _dask_config_address()
    if configured:
        return ClusterSource("environment", configured)
    if not allow_embedded:
        raise DaskConfigurationError(
            "PipesDaskClient found no Dask cluster and allow_embedded_cluster is False. Looked "
            "at: scheduler_address, scheduler_file and cluster_class (unset), the "
            "DASK_SCHEDULER_ADDRESS environment variable (unset) and Dask's scheduler-address "
            "config (unset). Set one of them."
        )
    return ClusterSource("embedded", "tcp" if embedded_tcp else "")


def dask_tls_config() -> str:
    """Dask's own TLS settings, as a key (without TLS fields, they decide the security)."""
    import dask

    config = {
        "tls": dask.config.get("distributed.comm.tls", {}),
        "require-encryption": dask.config.get("distributed.comm.require-encryption", None),
    }
    return json.dumps(config, sort_keys=True, default=str)


def _dask_config_address() -> str | None:
    import dask

    configured = dask.config.get("scheduler-address", None)
    return str(configured) if configured else None
