"""dask-gateway clusters for ``PipesDaskClient(cluster_class=...)``, without user-written glue.

Creating a cluster needs nothing from here: ``cluster_class="dask_gateway.GatewayCluster"`` with
its options in ``cluster_kwargs``. Connecting to a cluster that already runs, by name, is a
method of a ``Gateway`` object, which a dotted path cannot name; :func:`connect_gateway_cluster`
is that call. Either way the cluster object carries the gateway's per-cluster TLS credentials
(``cluster.security``), which the connection uses.
"""

from __future__ import annotations

import os
from typing import Any


def gateway_auth(
    username: str | None = None,
    password: str | None = None,
    auth: Any = None,
    password_env: str | None = None,
) -> Any:
    """The ``auth`` argument for dask-gateway: basic auth from a user name and password.

    ``password_env`` names an environment variable that holds the password, read here, so the
    password never appears in the resource's (visible) configuration.
    """
    if password_env is not None:
        password = os.environ[password_env]
    if auth is not None or password is None:
        return auth
    from dask_gateway.auth import BasicAuth

    return BasicAuth(username=username, password=password)


def connect_gateway_cluster(
    address: str,
    cluster_name: str,
    *,
    proxy_address: str | None = None,
    username: str | None = None,
    password: str | None = None,
    password_env: str | None = None,
    auth: Any = None,
) -> Any:
    """Connect to a running dask-gateway cluster by name.

    Args:
        address: The gateway's HTTP address, e.g. ``http://127.0.0.1:8000``.
        cluster_name: The cluster's name (``GatewayCluster.name``).
        proxy_address: The gateway's scheduler proxy, if it is not served at ``address``.
        username: For the gateway's basic authentication (with ``password``).
        password: For the gateway's basic authentication.
        password_env: An environment variable holding that password instead.
        auth: Any other ``dask_gateway`` authentication (``"kerberos"``, ``"jupyterhub"``...).

    Returns:
        The ``GatewayCluster``; closing it does not shut the cluster down.
    """
    from dask_gateway import Gateway

    gateway = Gateway(
        address=address,
        proxy_address=proxy_address,
        auth=gateway_auth(username, password, auth, password_env),
    )
    return gateway.connect(cluster_name)


def new_gateway_cluster(
    address: str,
    *,
    proxy_address: str | None = None,
    username: str | None = None,
    password: str | None = None,
    password_env: str | None = None,
    auth: Any = None,
    workers: int = 1,
    **cluster_options: Any,
) -> Any:
    """Create a dask-gateway cluster with ``workers`` workers (shut down when closed).

    Args:
        address: The gateway's HTTP address.
        proxy_address: The gateway's scheduler proxy, if it is not served at ``address``.
        username: For the gateway's basic authentication (with ``password``).
        password: For the gateway's basic authentication.
        password_env: An environment variable holding that password instead.
        auth: Any other ``dask_gateway`` authentication.
        workers: How many workers to scale to at once (adapt_kwargs can take over).
        **cluster_options: The gateway's cluster options.
    """
    from dask_gateway import GatewayCluster

    cluster = GatewayCluster(
        address=address,
        proxy_address=proxy_address,
        auth=gateway_auth(username, password, auth, password_env),
        shutdown_on_close=True,
        **cluster_options,
    )
    if workers:
        cluster.scale(workers)
    return cluster
