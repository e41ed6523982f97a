"""Where the Dask ``Client`` comes from, and what each connection knows.

One documented precedence (:func:`resolve_source`): an explicit ``scheduler_address``,
``scheduler_file`` or ``cluster_class`` (setting two is a configuration error), else
``DASK_SCHEDULER_ADDRESS`` / Dask's ``scheduler-address`` config (what ``distributed.Client()``
itself honours), else the embedded in-process ``LocalCluster`` (unless refused).

Connections are cached per process, keyed by source and security, so consecutive runs in one
process share one scheduler connection (and one embedded or started cluster). Each connection
carries a :class:`ConnectionState`: what the client has learned about that scheduler (Dagster
builds a new resource object for every run, so the resource cannot hold it). Everything cached is
closed when the process exits, or by :func:`close_cached_clients`.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

# Imported with the package, not on first use (~0.4 s of CPU): a process that imports the code
# location before forking its step processes (Dagster's multiprocess executor with
# `start_method: forkserver`) then hands them `distributed` ready to use.
from distributed import Client, LocalCluster, Worker

from dagster_pipes_ext.remote import dask_compat
from dagster_pipes_ext.remote.process import close_spare_supervisors

SourceKind = Literal["address", "scheduler_file", "cluster_class", "environment", "embedded"]
# A failed connection attempt is closed within this long, so it never holds process exit back.
CLOSE_FAILED_SECONDS = 2.0

_lock = threading.Lock()
logger = logging.getLogger(__name__)


class DaskConnectionError(ConnectionError):
    """The Dask scheduler could not be reached (the message says what to check)."""


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


@dataclass
class ConnectionState:
    """What one scheduler connection has learned about its scheduler.

    Attributes:
        published_launchers: Digests of the launchers published in the scheduler's metadata.
        dashboard_links: The dashboard link, by whether the embedded dashboard was asked for.
        run_function_refused: The scheduler blocks ``run_function`` (and ``run_on_scheduler``).
        threads_checked: Whether the "one thread only" warning was considered.
    """

    published_launchers: set[str] = field(default_factory=set)
    dashboard_links: dict[bool, str | None] = field(default_factory=dict)
    run_function_refused: bool = False
    threads_checked: bool = False


@dataclass
class Connection:
    """A connected client, where it came from, and what started it (if this package did)."""

    client: Client
    source: ClusterSource
    cluster: Any = None  # a cluster this package started (embedded or cluster_class)

    def command_tls_env(self) -> dict[str, str]:
        """Dask's TLS config variables for a command that connects to this cluster too."""
        security = getattr(self.client, "security", None)
        if security is None or not getattr(security, "tls_client_cert", None):
            return {}
        return TlsSettings(
            getattr(security, "tls_ca_file", None),
            getattr(security, "tls_client_cert", None),
            getattr(security, "tls_client_key", None),
            bool(getattr(security, "require_encryption", False)),
        ).command_env()

    @property
    def address(self) -> str:
        """The scheduler's address."""
        return str(self.client.scheduler.address if self.client.scheduler else "")

    def close(self) -> None:
        """Close the client, then the cluster this package started."""
        _close_quietly(self.client)
        if self.cluster is not None:
            _close_quietly(self.cluster)
            dask_compat.silence_closed_gateway(self.cluster)


@dataclass
class _Cache:
    pid: int = field(default_factory=os.getpid)
    connections: dict[tuple[Any, ...], Connection] = field(default_factory=dict)
    # By Client.id: a reconnection is a new client, which learns everything again.
    states: dict[str, ConnectionState] = field(default_factory=dict)


_cache = _Cache()


# -- resolving ----------------------------------------------------------------------------------


def resolve_source(
    *,
    scheduler_address: str | None = None,
    scheduler_file: str | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
    adapt_kwargs: dict[str, Any] | None = None,
    allow_embedded: bool = True,
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
    return ClusterSource("embedded")


def _dask_tls_config() -> str:
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


# -- connecting ---------------------------------------------------------------------------------


def get_connection(
    source: ClusterSource,
    *,
    tls: TlsSettings = TlsSettings(),
    connect_timeout_seconds: float,
    embedded_threads_per_worker: int = 4,
    embedded_dashboard: bool = False,
    cached: bool = True,
) -> Connection:
    """A connected client for ``source``.

    The process's cached one, or (``cached=False``) a new one that the caller closes.

    Raises:
        DaskConnectionError: The scheduler could not be reached.
        DaskConfigurationError: The source names nothing usable.
    """
    global _cache
    # Keyed by security too: without TLS fields, Dask's own TLS config decides it.
    key = (source, tls, _dask_tls_config())
    with _lock:
        if _cache.pid != os.getpid():
            # A forked child must not reuse its parent's sockets or event-loop thread.
            _cache = _Cache()
        connection = _cache.connections.get(key) if cached else None
        if connection is not None and connection.client.status == "running":
            return connection
        if connection is not None:
            connection.close()
            _cache.states.pop(connection.client.id, None)
        connection = _connect(source, tls, connect_timeout_seconds, embedded_threads_per_worker,
                              embedded_dashboard)  # fmt: skip
        if cached:
            _cache.connections[key] = connection
        return connection


def _connect(
    source: ClusterSource,
    tls: TlsSettings,
    timeout: float,
    embedded_threads: int,
    embedded_dashboard: bool,
) -> Connection:
    if source.kind == "embedded":
        cluster = _embedded_cluster(embedded_threads, embedded_dashboard)
        return Connection(Client(cluster, set_as_default=False), source, cluster)
    if source.kind == "cluster_class":
        return _start_cluster(source, tls, timeout)
    address = _read_scheduler_file(source.target) if source.kind == "scheduler_file" else None
    return Connection(_client(address or source.target, tls, timeout, source), source)


def _client(address: Any, tls: TlsSettings, timeout: float, source: ClusterSource) -> Client:
    """``Client(address)``, every failure a :class:`DaskConnectionError` saying what to check."""
    where = source.describe()
    if isinstance(address, str) and address.startswith("gateway://"):
        _import_gateway(where)
    security = tls.security()
    kwargs: dict[str, Any] = {"timeout": timeout, "set_as_default": False}
    if security is not None:
        kwargs["security"] = security
    try:
        return dask_compat.new_client(lambda: Client(address, **kwargs))
    except TypeError as exc:
        if "TLS expects" in str(exc) or "ssl_context" in str(exc):
            raise DaskConnectionError(
                f"The Dask scheduler at {address!r} ({where}) uses TLS, but no client "
                "certificate is configured. Set tls_ca_file, tls_client_cert and "
                "tls_client_key on PipesDaskClient (or Dask's DASK_DISTRIBUTED__COMM__TLS__* "
                "config)."
            ) from exc
        raise
    except RuntimeError as exc:
        if "encrypt" in str(exc).lower():
            raise DaskConnectionError(
                f"Encryption is required (require_encryption / Dask's "
                f"distributed.comm.require-encryption), but {address!r} ({where}) is not a "
                "tls:// address. Use the scheduler's tls:// address, or drop the requirement."
            ) from exc
        raise DaskConnectionError(f"Could not connect to {address!r} ({where}): {exc}") from exc
    except ValueError as exc:
        raise DaskConnectionError(
            f"The Dask scheduler address {address!r} ({where}) is not valid ({exc}). Use the "
            "form tcp://host:port or tls://host:port."
        ) from exc
    except (OSError, TimeoutError) as exc:
        raise DaskConnectionError(
            f"Could not connect to the Dask scheduler at {address!r} within {timeout:g}s "
            f"({where}; {type(exc).__name__}: {exc}). Check that the scheduler is running "
            "there and reachable from this host, and, for tls://, that the CA and client "
            "certificate match the scheduler's. Unset every source to use the embedded cluster."
        ) from exc


def _read_scheduler_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            address = json.load(f)["address"]
    except FileNotFoundError as exc:
        raise DaskConnectionError(
            f"The scheduler file {path!r} (scheduler_file) does not exist on this host. Point "
            "scheduler_file at the file `dask scheduler --scheduler-file` wrote."
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DaskConnectionError(
            f"The scheduler file {path!r} (scheduler_file) has no scheduler address ({exc})."
        ) from exc
    return str(address)


def _import_gateway(where: str) -> None:
    """``gateway://`` is a comm that only exists once ``dask_gateway`` is imported."""
    try:
        importlib.import_module("dask_gateway")
    except ImportError as exc:
        raise DaskConnectionError(
            f"A gateway:// address ({where}) needs the dask-gateway package: "
            "pip install dask-gateway."
        ) from exc


def _start_cluster(source: ClusterSource, tls: TlsSettings, timeout: float) -> Connection:
    """Start ``cluster_class(**cluster_kwargs)`` (a cluster, or a ready ``Client``) and connect."""
    factory = import_object(source.target)
    made = factory(**json.loads(source.cluster_kwargs))
    if isinstance(made, Client):
        return Connection(made, source)
    try:
        if source.adapt_kwargs:
            made.adapt(**json.loads(source.adapt_kwargs))
        # A cluster object carries its own security (gateway clusters' per-cluster TLS).
        security = getattr(made, "security", None) or tls.security()
        kwargs: dict[str, Any] = {"timeout": timeout, "set_as_default": False}
        if security is not None:
            kwargs["security"] = security
        return Connection(Client(made, **kwargs), source, made)
    except Exception as exc:
        _close_quietly(made)
        raise DaskConnectionError(
            f"Started {source.target} but could not connect to its scheduler: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def import_object(path: str) -> Any:
    """The object a dotted path names: ``package.module.Name`` or ``package.module:name``.

    Raises:
        DaskConfigurationError: Nothing importable has that name.
    """
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise DaskConfigurationError(
            f"cluster_class={path!r} does not name an importable class or callable "
            f"({type(exc).__name__}: {exc}). Use a dotted path such as "
            "'dask_jobqueue.SLURMCluster', and install the package that provides it."
        ) from exc
    if not callable(obj):
        raise DaskConfigurationError(f"cluster_class={path!r} is not a class or callable.")
    return obj


def _embedded_cluster(threads_per_worker: int, dashboard_wanted: bool) -> LocalCluster:
    class LoopbackWorker(Worker):
        """A worker whose HTTP server (health, metrics) listens on loopback only."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.update(dashboard=False, dashboard_address="127.0.0.1:0")
            super().__init__(*args, **kwargs)

    # The dashboard costs ~1.5 s of start-up (bokeh). The scheduler and worker start HTTP servers
    # (health, metrics) even without it, by default on the host's address: keep them on loopback.
    has_bokeh = importlib.util.find_spec("bokeh") is not None
    return LocalCluster(
        processes=False,
        n_workers=1,
        threads_per_worker=threads_per_worker,
        # In-process, the worker would measure (and pause on) the Dagster process's memory; it
        # holds no data, only launchers, so memory management stays off.
        memory_limit=0,
        worker_class=LoopbackWorker,
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": dashboard_wanted and has_bokeh},
        silence_logs=logging.WARNING,
    )


# -- state and closing --------------------------------------------------------------------------


def connection_state(client: Client) -> ConnectionState:
    """The state of a connection (of a cached client, or of one made elsewhere)."""
    with _lock:
        return _cache.states.setdefault(client.id, ConnectionState())


def get_dask_client(
    address: str | None,
    *,
    connect_timeout_seconds: float,
    embedded_threads_per_worker: int = 4,
    embedded_dashboard: bool = False,
) -> Client:
    """The cached client for a scheduler address (``None``: the embedded cluster).

    Raises:
        DaskConnectionError: The scheduler could not be reached.
    """
    source = ClusterSource("address", address) if address else ClusterSource("embedded")
    return get_connection(
        source,
        connect_timeout_seconds=connect_timeout_seconds,
        embedded_threads_per_worker=embedded_threads_per_worker,
        embedded_dashboard=embedded_dashboard,
    ).client


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception:  # closing is best effort at shutdown
        logger.debug("error closing %r", obj, exc_info=True)


def close_cached_clients() -> None:
    """Close every cached scheduler connection and every cluster this process started."""
    with _lock:
        if _cache.pid != os.getpid():
            return
        for connection in _cache.connections.values():
            connection.close()
        _cache.connections.clear()
        _cache.states.clear()
    # The embedded worker runs in this process, and so do the supervisors it keeps ready.
    close_spare_supervisors()


atexit.register(close_cached_clients)
