"""A real ``dask-gateway-server`` on 127.0.0.1 with local-process clusters, for the tests.

The server runs as ``python -m dask_gateway_server -f <generated config>`` (a child of the test
process) with:

- ``UnsafeLocalBackend``: each cluster's scheduler and workers are local processes running as the
  server's user (children of the server). ``LocalBackend`` fails as root in dask-gateway-server
  2026.3.0: ``setup_working_directory`` does ``paths.extend(path)`` on a string and then
  ``os.chown``-s each character (``FileNotFoundError: ... 't'``), so no cluster starts.
- ``SimpleAuthenticator`` with a password (HTTP Basic; any user name).
- the HTTP API and the scheduler proxy (``gateway://``, TLS with SNI) multiplexed on one loopback
  port, the private API on another; the cluster processes bind 127.0.0.1.
- the venv's ``python -m distributed.cli.dask_scheduler`` / ``dask_worker`` for the clusters.

Clients: ``Gateway(server.address, auth=server.auth)`` (see :meth:`GatewayServer.gateway`);
``gateway.new_cluster()`` / ``gateway.connect(name)`` give a ``GatewayCluster`` whose
``scheduler_address`` is ``gateway://127.0.0.1:<port>/<cluster name>`` and whose ``security`` is
a ``dask_gateway.client.GatewaySecurity`` (the cluster's own TLS key and certificate, in memory).
``distributed.Client(cluster)`` or ``Client(cluster.scheduler_address, security=cluster.security)``
connect; the ``gateway://`` scheme exists only once ``dask_gateway`` is imported.

Stopping by PID: SIGTERM to the server, which stops its clusters (SIGINT, then SIGTERM, to each
process) and its proxy; then every process that was in its tree is stopped and, if it had
survived, listed in :attr:`GatewayServer.leaked`.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from dagster_pipes_ext_tests.support.processes import stop_pid, wait_for
from dagster_pipes_ext_tests.support.slurm import free_port

if TYPE_CHECKING:
    from dask_gateway import BasicAuth, Gateway, GatewayCluster

USERNAME = "pipes-test"


def missing_requirements() -> list[str]:
    """The Python packages the gateway tests need and cannot import."""
    missing = []
    for module, package in (
        ("dask_gateway", "dask-gateway"),
        ("dask_gateway_server", "dask-gateway-server[local]"),
        ("sqlalchemy", "dask-gateway-server[local]"),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{package} (dev dependency group: `make install`)")
    return missing


@dataclass
class GatewayServer:
    """One ``dask-gateway-server`` process and what a client needs to reach it."""

    root: Path
    port: int
    api_port: int
    password: str
    proc: subprocess.Popen | None = None
    username: str = USERNAME
    startup_seconds: float = 0.0
    leaked: list[str] = field(default_factory=list)
    """Processes of the server's tree still alive after it exited (should stay empty)."""

    @property
    def address(self) -> str:
        """The HTTP address a ``dask_gateway.Gateway`` takes: ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxy_address(self) -> str:
        """The scheduler proxy: ``gateway://127.0.0.1:<port>`` (same port as :attr:`address`)."""
        return f"gateway://127.0.0.1:{self.port}"

    @property
    def auth(self) -> BasicAuth:
        """``dask_gateway.BasicAuth`` for :attr:`username` / :attr:`password`."""
        from dask_gateway import BasicAuth

        return BasicAuth(username=self.username, password=self.password)

    def gateway(self, **kwargs: object) -> Gateway:
        """A new ``dask_gateway.Gateway`` for this server; close it with :func:`close_quietly`."""
        from dask_gateway import Gateway

        return Gateway(address=self.address, auth=self.auth, **kwargs)  # type: ignore[arg-type]

    # --- starting -------------------------------------------------------------------------

    @classmethod
    def start(cls, timeout: float = 30.0) -> GatewayServer:
        """Write the config, start the server, wait until ``/api/health`` answers ``pass``."""
        started = time.monotonic()
        root = Path(tempfile.mkdtemp(prefix="pipes-gateway-"))
        (root / "clusters").mkdir()
        server = cls(
            root=root, port=free_port(), api_port=free_port(), password=secrets.token_hex(8)
        )
        config = root / "dask_gateway_config.py"
        config.write_text(server._config())
        with open(root / "gateway.log", "wb") as log:
            server.proc = subprocess.Popen(
                [sys.executable, "-m", "dask_gateway_server", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=root,
            )
        try:
            wait_for(server._healthy, timeout=timeout, what="dask-gateway-server to answer")
        except BaseException as exc:
            log_text = server.log()
            server.stop()
            if isinstance(exc, Exception):
                raise RuntimeError(f"dask-gateway-server did not start: {exc}\n{log_text}") from exc
            raise
        server.startup_seconds = time.monotonic() - started
        return server

    def _config(self) -> str:
        py = sys.executable
        return f"""\
# Generated by dagster_pipes_ext_tests/support/gateway.py
c.DaskGateway.address = "127.0.0.1:{self.api_port}"
c.Proxy.address = "127.0.0.1:{self.port}"
c.Proxy.tcp_address = "127.0.0.1:{self.port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {self.password!r}
c.UnsafeLocalBackend.clusters_directory = {str(self.root / "clusters")!r}
c.UnsafeLocalBackend.sigint_timeout = 5
c.UnsafeLocalBackend.sigterm_timeout = 3
c.UnsafeLocalBackend.sigkill_timeout = 3
c.UnsafeLocalBackend.cluster_start_timeout = 60
c.UnsafeLocalBackend.worker_start_timeout = 60
# Status polling: the default 30 s period is too slow to notice a dead process in a test.
c.UnsafeLocalBackend.cluster_status_period = 2
c.UnsafeLocalBackend.worker_status_period = 2
c.LocalClusterConfig.scheduler_cmd = [{py!r}, "-m", "distributed.cli.dask_scheduler"]
c.LocalClusterConfig.worker_cmd = [
    {py!r}, "-m", "distributed.cli.dask_worker", "--host", "127.0.0.1",
]
c.LocalClusterConfig.worker_cores = 1
c.LocalClusterConfig.worker_threads = 2
c.LocalClusterConfig.worker_memory = "1 G"
c.LocalClusterConfig.scheduler_memory = "1 G"
"""

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"dask-gateway-server exited with code {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"{self.address}/api/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    # --- using ----------------------------------------------------------------------------

    def new_cluster(
        self, n_workers: int = 1, *, gateway: Gateway | None = None, timeout: float = 60.0
    ) -> GatewayCluster:
        """Create a cluster, scale it to ``n_workers`` and wait until they are connected.

        The cluster is made through ``gateway`` (a temporary Gateway object when omitted) but
        has its own Gateway inside; closing it shuts the cluster down: use
        :func:`close_quietly`.
        """
        gw = gateway or self.gateway()
        try:
            cluster = gw.new_cluster(shutdown_on_close=True)
        finally:
            if gateway is None:
                close_quietly(gw)
        try:
            if n_workers:
                cluster.scale(n_workers)
                with cluster.get_client(set_as_default=False) as client:
                    client.wait_for_workers(n_workers, timeout=timeout)
        except BaseException:
            close_quietly(cluster)
            raise
        return cluster

    def cluster_processes(self) -> list[psutil.Process]:
        """The live processes under the server: proxy, schedulers, nannies, workers."""
        if self.proc is None:
            return []
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [p for p in kids if _alive(p)]

    def log(self) -> str:
        """The tail of the server's log."""
        try:
            return (self.root / "gateway.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # --- stopping -------------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server (it stops its clusters), then stop whatever of its tree is left."""
        proc = self.proc
        if proc is not None:
            family = self.cluster_processes()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    stop_pid(proc.pid)
                    proc.wait(timeout=10)
            survivors = [p for p in family if _alive(p)]
            for p in survivors:
                try:
                    self.leaked.append(f"{p.pid}: {' '.join(p.cmdline())[:200]}")
                    p.kill()  # psutil checks the PID still names the same process
                except psutil.Error:
                    pass
            psutil.wait_procs(survivors, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> GatewayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def close_quietly(obj: Gateway | GatewayCluster) -> None:
    """Close a ``Gateway`` or ``GatewayCluster`` so that garbage collection stays silent.

    With dask-gateway 2026.3.0 and distributed 2026.8.0, ``Gateway.close()`` stops its loop
    runner, and ``Gateway.__del__`` calls ``close()`` again, which reads ``LoopRunner.loop`` and
    raises ``RuntimeError: Accessing the loop property while the loop is not running is not
    supported``: an unraisable exception at some later garbage collection, which pytest (with
    ``filterwarnings = error``) turns into an error of whichever test is running then. A
    ``GatewayCluster`` owns its own ``Gateway`` (``cluster.gateway``), with the same problem.
    After the close, the gateway is marked asynchronous: ``__del__`` skips asynchronous ones.
    """
    try:
        obj.close()
    finally:
        gw = getattr(obj, "gateway", obj)
        gw._asynchronous = True  # type: ignore[union-attr]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
