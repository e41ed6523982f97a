"""Where the Dask ``Client`` comes from.

In order: an explicit scheduler address, else ``DASK_SCHEDULER_ADDRESS`` / Dask's
``scheduler-address`` config, else an embedded in-process ``LocalCluster``.

Connections are cached per process and address, so consecutive runs in one process share one
scheduler connection (and one embedded cluster) instead of paying for a new one each time. Each
connection also carries a :class:`ConnectionState`: what the client has learned about that
scheduler (Dagster builds a new resource object for every run, so the resource cannot hold it).
Everything cached is closed when the process exits, or by :func:`close_cached_clients`.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

# Imported with the package, not on first use (~0.4 s of CPU): a process that imports the code
# location before forking its step processes (Dagster's multiprocess executor with
# `start_method: forkserver`) then hands them `distributed` ready to use.
from distributed import Client, LocalCluster, Worker

EMBEDDED = "embedded"

_lock = threading.Lock()


@dataclass
class ConnectionState:
    """What one scheduler connection has learned about its scheduler.

    Attributes:
        published_launchers: Digests of the launchers published in the scheduler's metadata.
        dashboard_links: The dashboard link, by whether the embedded dashboard was asked for.
        run_function_refused: The scheduler blocks ``run_function`` (and ``run_on_scheduler``).
    """

    published_launchers: set[str] = field(default_factory=set)
    dashboard_links: dict[bool, str | None] = field(default_factory=dict)
    run_function_refused: bool = False


@dataclass
class _Cache:
    pid: int = field(default_factory=os.getpid)
    clients: dict[str, Client] = field(default_factory=dict)
    # By Client.id: a reconnection is a new client, which learns everything again.
    states: dict[str, ConnectionState] = field(default_factory=dict)
    cluster: LocalCluster | None = None


_cache = _Cache()


class DaskConnectionError(ConnectionError):
    """The Dask scheduler could not be reached."""


def resolve_scheduler_address(explicit: str | None) -> str | None:
    """Return the scheduler address to use, or ``None`` for the embedded cluster.

    Args:
        explicit: The address configured on the resource, if any.
    """
    if explicit:
        return explicit
    env = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if env:
        return env
    import dask

    configured = dask.config.get("scheduler-address", None)
    return str(configured) if configured else None


def _embedded_client(threads_per_worker: int, dashboard_wanted: bool) -> Client:
    class LoopbackWorker(Worker):
        """A worker whose HTTP server (health, metrics) listens on loopback only."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.update(dashboard=False, dashboard_address="127.0.0.1:0")
            super().__init__(*args, **kwargs)

    # The dashboard costs ~1.5 s of start-up (bokeh). The scheduler and worker start HTTP servers
    # (health, metrics) even without it, by default on the host's address: keep them on loopback.
    has_bokeh = importlib.util.find_spec("bokeh") is not None
    cluster = LocalCluster(
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
    _cache.cluster = cluster
    return Client(cluster, set_as_default=False)


def get_dask_client(
    address: str | None,
    *,
    connect_timeout_seconds: float,
    embedded_threads_per_worker: int,
    embedded_dashboard: bool = False,
) -> Client:
    """Return a connected, cached Dask client for ``address`` (``None``: embedded cluster).

    Raises:
        DaskConnectionError: The scheduler did not answer within ``connect_timeout_seconds``.
    """
    global _cache
    key = address or EMBEDDED
    with _lock:
        if _cache.pid != os.getpid():
            # A forked child must not reuse its parent's sockets or event-loop thread.
            _cache = _Cache()
        client = _cache.clients.get(key)
        if client is not None and client.status == "running":
            return client
        if client is not None:
            _close_quietly(client)
            _cache.states.pop(client.id, None)
        if address is None:
            if _cache.cluster is not None:
                _close_quietly(_cache.cluster)
                _cache.cluster = None
            client = _embedded_client(embedded_threads_per_worker, embedded_dashboard)
        else:
            try:
                client = Client(address, timeout=connect_timeout_seconds, set_as_default=False)
            except ValueError as exc:
                raise DaskConnectionError(
                    f"The Dask scheduler address {address!r} is not valid ({exc}). Use the form "
                    "tcp://host:port in `scheduler_address` or DASK_SCHEDULER_ADDRESS."
                ) from exc
            except (OSError, TimeoutError) as exc:
                raise DaskConnectionError(
                    f"Could not connect to the Dask scheduler at {address!r} within "
                    f"{connect_timeout_seconds:g}s ({type(exc).__name__}: {exc}). Check that "
                    "`dask scheduler` is running there and that `scheduler_address` or "
                    "DASK_SCHEDULER_ADDRESS is right; unset both to use the embedded cluster."
                ) from exc
        _cache.clients[key] = client
        return client


def connection_state(client: Client) -> ConnectionState:
    """The state of a connection (of a cached client, or of one made elsewhere)."""
    with _lock:
        return _cache.states.setdefault(client.id, ConnectionState())


def _close_quietly(obj: Client | LocalCluster) -> None:
    try:
        obj.close()
    except Exception:  # closing is best effort at shutdown
        logging.getLogger(__name__).debug("error closing %r", obj, exc_info=True)


def close_cached_clients() -> None:
    """Close every cached scheduler connection and the embedded cluster of this process."""
    with _lock:
        if _cache.pid != os.getpid():
            return
        for client in _cache.clients.values():
            _close_quietly(client)
        _cache.clients.clear()
        _cache.states.clear()
        if _cache.cluster is not None:
            _close_quietly(_cache.cluster)
            _cache.cluster = None


atexit.register(close_cached_clients)
