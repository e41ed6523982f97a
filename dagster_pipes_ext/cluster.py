"""Connecting: the Dask ``Client`` for a source (:mod:`.sources`), and what each connection knows.

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
from typing import Any

import dask

# Imported with the package, not on first use (~0.4 s of CPU): a process that imports the code
# location before forking its step processes (Dagster's multiprocess executor with
# `start_method: forkserver`) then hands them `distributed` ready to use.
from distributed import Client, LocalCluster, Worker

from dagster_pipes_ext.remote import dask_compat
from dagster_pipes_ext.remote.process import close_spare_supervisors
from dagster_pipes_ext.sources import (
    ClusterSource,
    DaskConfigurationError,
    TlsSettings,
    dask_tls_config,
)

# A failed connection attempt is closed within this long, so it never holds process exit back.
CLOSE_FAILED_SECONDS = 2.0
EMBEDDED_SERVER_CONFIG = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.scheduler.work-stealing": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.enabled": False,
}

NO_TLS = TlsSettings()
_lock = threading.Lock()
logger = logging.getLogger(__name__)


class DaskConnectionError(ConnectionError):
    """The Dask scheduler could not be reached (the message says what to check)."""


@dataclass
class ConnectionState:
    """What one scheduler connection has learned about its scheduler.

    Attributes:
        published_launchers: Digests of the launchers published in the scheduler's metadata.
        dashboard_links: The dashboard link, by whether the embedded dashboard was asked for.
        run_function_refused: The scheduler blocks ``run_function`` (and ``run_on_scheduler``).
        threads_checked: Whether the "one thread only" warning was considered.
        spec_stash_works: A launch spec was stashed on the scheduler once (see ``LaunchTask``).
        handlers_ready: A session's ``OPEN_SESSION`` installed this package's scheduler
            handlers: later sessions open, stash, claim and clean up through them (cleared
            when a handler is found missing, e.g. after a scheduler restart).
    """

    published_launchers: set[str] = field(default_factory=set)
    dashboard_links: dict[bool, str | None] = field(default_factory=dict)
    run_function_refused: bool = False
    threads_checked: bool = False
    spec_stash_works: bool = False
    handlers_ready: bool = False


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


# -- connecting ---------------------------------------------------------------------------------


def get_connection(
    source: ClusterSource,
    *,
    tls: TlsSettings = NO_TLS,
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
    key = (source, tls, dask_tls_config())
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
        tcp = source.target == "tcp"
        cluster = _embedded_cluster(embedded_threads, embedded_dashboard, tcp=tcp)
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
    try:
        made = factory(**json.loads(source.cluster_kwargs))
    except Exception as exc:
        raise DaskConfigurationError(
            f"cluster_class={source.target!r} did not start with cluster_kwargs="
            f"{source.cluster_kwargs}: {_with_root_cause(exc)}. Check cluster_kwargs against "
            f"{source.target}'s parameters, and that what it asks for is available from this host."
        ) from exc
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


def _with_root_cause(exc: BaseException) -> str:
    """``Type: message``, and the innermost cause when there is one (what actually went wrong)."""
    text = f"{type(exc).__name__}: {exc}"
    root, seen = exc, {id(exc)}
    while (inner := root.__cause__ or root.__context__) is not None and id(inner) not in seen:
        root = inner
        seen.add(id(inner))
    return text if root is exc else f"{text} (caused by {type(root).__name__}: {root})"


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


def _embedded_cluster(
    threads_per_worker: int, dashboard_wanted: bool, *, tcp: bool = False
) -> LocalCluster:
    class LoopbackWorker(Worker):
        """A worker whose HTTP server (health, metrics) listens on loopback only."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.update(dashboard=False, dashboard_address="127.0.0.1:0")
            super().__init__(*args, **kwargs)

    # The dashboard costs ~1.5 s of start-up (bokeh). The scheduler and worker start HTTP servers
    # (health, metrics) even without it, by default on the host's address: keep them on loopback.
    has_bokeh = importlib.util.find_spec("bokeh") is not None
    # In-process, the servers' periodic work competes with the Dagster step for the GIL: the
    # event-loop tick monitors (every 20 ms each, by default), work stealing (one worker: there
    # is nothing to steal), the system monitors (every 500 ms each, of this one process), the
    # worker's profiler (every 10 ms; a launcher takes its thread out of its samples anyway).
    with dask.config.set(EMBEDDED_SERVER_CONFIG):
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
            # In-process only (inproc://), or on loopback TCP where the command may connect too.
            protocol="tcp://" if tcp else None,
            host="127.0.0.1" if tcp else None,
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
