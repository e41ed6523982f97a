import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from dagster import AssetExecutionContext, AssetsDefinition, DagsterInstance, asset

from dagster_pipes_ext import PipesDaskClient, close_cached_clients
from dagster_pipes_ext_tests.support import gateway as gateway_support
from dagster_pipes_ext_tests.support import slurm as slurm_support
from dagster_pipes_ext_tests.support.gateway import GatewayServer
from dagster_pipes_ext_tests.support.processes import DaskProcesses, kill_survivors, start_cluster
from dagster_pipes_ext_tests.support.slurm import SingleNodeSlurm
from dagster_pipes_ext_tests.support.tls import TlsCluster, start_tls_cluster

SCRIPTS = Path(__file__).parent / "scripts"

# External commands say "python", as users' code does; it must be this environment's Python
# (with dagster-pipes), for the embedded cluster and for worker processes the tests start.
_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running() -> Iterator[None]:
    """After the whole session, no process started by a test (or by a command) is still alive."""
    yield
    close_cached_clients()
    descriptions = kill_survivors(psutil.Process().children(recursive=True))
    assert not descriptions, "processes left running after the tests:\n" + "\n".join(descriptions)


@pytest.fixture(scope="session")
def separate_cluster() -> Iterator[DaskProcesses]:
    """A `dask scheduler` and one import-blocked `dask worker`, separate processes on 127.0.0.1.

    The worker's working directory and TMPDIR differ from the test process's, and it offers a
    `SLOTS=4` resource.
    """
    cluster = start_cluster(1, resources="SLOTS=4", dashboard=True)
    try:
        yield cluster
    finally:
        close_cached_clients()
        cluster.stop()


@pytest.fixture(params=["embedded", "separate"])
def cluster_kind(request: pytest.FixtureRequest) -> str:
    """Run a test once against the embedded cluster and once against the separate one."""
    return request.param


@pytest.fixture
def pipes_client(cluster_kind: str, request: pytest.FixtureRequest) -> PipesDaskClient:
    """A PipesDaskClient for the cluster kind under test."""
    if cluster_kind == "embedded":
        return PipesDaskClient(termination_timeout_seconds=5)
    cluster: DaskProcesses = request.getfixturevalue("separate_cluster")
    return PipesDaskClient(scheduler_address=cluster.address, termination_timeout_seconds=5)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """A real on-disk Dagster instance (run storage, event log and compute logs)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as inst:
        yield inst


@pytest.fixture(autouse=True)
def _no_scheduler_address_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their cluster explicitly; a developer's DASK_SCHEDULER_ADDRESS must not leak."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    os.environ.pop("DASK_SCHEDULER_ADDRESS", None)


def script(name: str) -> str:
    """The absolute path of an external script under dagster_pipes_ext_tests/scripts."""
    return str(SCRIPTS / name)


def script_asset(name: str, script_name: str, **run_kwargs: Any) -> AssetsDefinition:
    """An asset named `name` that runs scripts/<script_name> through PipesDaskClient."""

    # No docstring and no `from __future__ import annotations` here: Dagster reads the real
    # annotations to recognize the context and to inject the `dask_pipes` resource.
    @asset(name=name)
    def _asset(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(
            context=context, command=["python", script(script_name)], **run_kwargs
        ).get_materialize_result()

    return _asset


# -- real servers (Slurm, dask-gateway, TLS), shared by the deployment and smoke tests --------


@pytest.fixture(scope="session")
def slurm() -> Iterator[SingleNodeSlurm]:
    """A single-node Slurm (munged, slurmctld, slurmd); its SLURM_CONF is in os.environ."""
    slurm_support.require_slurm()
    cluster = SingleNodeSlurm.start()
    try:
        with cluster.activate():
            yield cluster
    finally:
        cluster.stop()
    assert not cluster.leaked, f"Slurm processes survived stop: {cluster.leaked}"


@pytest.fixture(scope="session")
def gateway_server() -> Iterator[GatewayServer]:
    """A dask-gateway-server with its local backend, on 127.0.0.1."""
    missing = gateway_support.missing_requirements()
    if missing:
        slurm_support.skip_or_fail(f"dask-gateway unavailable: {', '.join(missing)}")
    server = GatewayServer.start()
    try:
        yield server
    finally:
        close_cached_clients()
        server.stop()
    assert not server.leaked, f"gateway processes survived stop: {server.leaked}"


@pytest.fixture(scope="session")
def tls_cluster() -> Iterator[TlsCluster]:
    """A tls:// scheduler and one import-blocked TLS worker, with certificates made here."""
    cluster = start_tls_cluster(1)
    try:
        yield cluster
    finally:
        close_cached_clients()
        cluster.stop()
