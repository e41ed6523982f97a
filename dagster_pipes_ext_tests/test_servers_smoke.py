"""The real servers the connection tests use: single-node Slurm, dask-gateway, a TLS scheduler.

Each fixture is checked with plain ``distributed`` (and, for Slurm, one Pipes asset through
today's ``PipesDaskClient(scheduler_address=...)``), independently of the package's new features.
Slurm needs Debian's ``slurmctld slurmd slurm-client munge`` (``.ci/install-system-packages``):
without them the Slurm tests skip, unless ``DAGSTER_PIPES_EXT_SERVERS_REQUIRED=1`` (CI).
"""

import gc
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import materialize
from distributed import Client, Security

from dagster_pipes_ext import PipesDaskClient, close_cached_clients
from dagster_pipes_ext_tests.conftest import script_asset
from dagster_pipes_ext_tests.support.gateway import GatewayServer, close_quietly
from dagster_pipes_ext_tests.support.slurm import SingleNodeSlurm
from dagster_pipes_ext_tests.support.tls import TlsCluster, start_tls_cluster

pytestmark = pytest.mark.slow

TASK_TIMEOUT = 60


def _one_plus_one(client: Client) -> int:
    return client.submit(lambda: 1 + 1, pure=False).result(timeout=TASK_TIMEOUT)


def _connect_error(*args: object, **kwargs: object) -> tuple[type[BaseException], str]:
    """The exception type and message of a ``Client(...)`` that must fail to connect.

    A failed ``Client`` stays in a reference cycle with its exception's traceback, so only the
    cyclic garbage collector runs its ``__del__`` (``close()``), at a random later moment. If
    that moment falls inside another ``Client``'s start in the same thread, ``close()`` waits
    for ``LoopRunner._lock`` (one class-wide, non-reentrant lock) that the start holds: a
    deadlock (seen here: a later ``Client(...)`` hung until interrupted). So only the type and
    message leave this function, and the collector runs now.
    """
    try:
        client = Client(*args, set_as_default=False, **kwargs)  # type: ignore[arg-type]
    except Exception as exc:
        outcome: tuple[type[BaseException], str] = (type(exc), str(exc))
    else:
        client.close()
        pytest.fail(f"Client{args} connected")
    gc.collect()
    return outcome


def _dead_tcp_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


# --- Slurm -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_dask(slurm: SingleNodeSlurm) -> Iterator[object]:
    """A dask-jobqueue SLURMCluster with one worker job; its scheduler runs in this process."""
    from dask_jobqueue import SLURMCluster

    logs = Path(tempfile.mkdtemp(prefix="pipes-slurm-jobs-"))
    cluster = SLURMCluster(
        queue=slurm.partition,
        cores=1,
        processes=1,
        memory="1GiB",
        walltime="00:10:00",
        # The job script runs `<python> -m distributed.cli.dask_worker`: the venv's interpreter
        # (also dask-jobqueue's default, sys.executable; said here so it does not depend on it).
        python=sys.executable,
        scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        worker_extra_args=["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"],
        log_directory=str(logs),
        local_directory=str(logs),
        death_timeout=30,
    )
    try:
        cluster.scale(1)
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
        yield cluster
    finally:
        close_cached_clients()
        cluster.close()  # scancel, without waiting for the job to end
        leftover = slurm.cancel_all()
        shutil.rmtree(logs, ignore_errors=True)
    assert not leftover, f"the worker job outlived SLURMCluster.close(): {leftover}"


def test_slurm_cluster_runs_a_task(slurm: SingleNodeSlurm, slurm_dask) -> None:
    assert slurm.job_ids(), "the worker should be a running Slurm job"
    commands = [" ".join(p.cmdline()) for p in slurm.job_processes()]
    assert any(f"{sys.executable} -m distributed.cli.dask_worker" in c for c in commands)
    with Client(slurm_dask, set_as_default=False) as client:
        assert _one_plus_one(client) == 2
        workers = client.scheduler_info(n_workers=-1)["workers"]
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in workers)


def test_slurm_pipes_asset(slurm_dask) -> None:
    pipes = PipesDaskClient(scheduler_address=slurm_dask.scheduler_address)
    result = materialize(
        [script_asset("on_slurm", "env_report.py")], resources={"dask_pipes": pipes}
    )
    assert result.success
    mats = result.asset_materializations_for_node("on_slurm")
    assert mats and "cwd" in mats[0].metadata


def test_slurm_scancel_kills_the_job(slurm: SingleNodeSlurm) -> None:
    job = slurm.run(
        ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 300 & sleep 301; wait"]
    ).stdout.strip()
    deadline = time.monotonic() + 30
    while not any("sleep 301" in " ".join(p.cmdline()) for p in slurm.job_processes()):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    slurm.run(["scancel", job])
    deadline = time.monotonic() + 20
    while any("sleep 30" in " ".join(p.cmdline()) for p in slurm.job_processes()):
        assert time.monotonic() < deadline, "scancel left the job's processes running"
        time.sleep(0.05)


# --- dask-gateway ------------------------------------------------------------------------------


def test_gateway_cluster_and_reconnect_by_name(gateway_server: GatewayServer) -> None:
    first = gateway_server.gateway()
    second = gateway_server.gateway()
    try:
        cluster = gateway_server.new_cluster(1, gateway=first)
        try:
            assert cluster.scheduler_address == f"{gateway_server.proxy_address}/{cluster.name}"
            with Client(cluster, set_as_default=False) as client:
                assert _one_plus_one(client) == 2

            assert [c.name for c in second.list_clusters()] == [cluster.name]
            same = second.connect(cluster.name)
            try:
                assert not same.shutdown_on_close  # connecting does not adopt the cluster
                # The proxy address and the cluster's own TLS credentials, in memory.
                with Client(
                    same.scheduler_address, security=same.security, set_as_default=False
                ) as client:
                    assert _one_plus_one(client) == 2
            finally:
                close_quietly(same)
        finally:
            close_quietly(cluster)  # shutdown_on_close: the cluster stops
        deadline = time.monotonic() + 30
        while second.list_clusters():
            assert time.monotonic() < deadline, "the gateway cluster did not stop"
            time.sleep(0.2)
    finally:
        close_quietly(second)
        close_quietly(first)


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_required_cluster() -> Iterator[TlsCluster]:
    cluster = start_tls_cluster(1, require_encryption=True)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_tls_client_with_security(tls_cluster: TlsCluster) -> None:
    assert tls_cluster.address.startswith("tls://127.0.0.1:")
    certs = tls_cluster.certs
    security = Security(
        tls_ca_file=str(certs.ca),
        tls_client_cert=str(certs.client_cert),
        tls_client_key=str(certs.client_key),
        require_encryption=True,
    )
    with Client(tls_cluster.address, security=security, timeout=30, set_as_default=False) as c:
        assert _one_plus_one(c) == 2


def test_tls_scheduler_file(tls_cluster: TlsCluster) -> None:
    with Client(
        scheduler_file=str(tls_cluster.scheduler_file),
        security=tls_cluster.certs.security(),
        timeout=30,
        set_as_default=False,
    ) as c:
        assert c.scheduler.address == tls_cluster.address
        assert _one_plus_one(c) == 2


def test_plain_client_to_tls_is_a_bare_type_error(tls_cluster: TlsCluster) -> None:
    kind, message = _connect_error(tls_cluster.address, timeout=5)
    assert kind is TypeError
    assert message.startswith("TLS expects a `ssl_context` argument of type ssl.SSLContext")


def test_wrong_ca_is_refused(tls_cluster: TlsCluster) -> None:
    from distributed.comm.core import FatalCommClosedError

    security = tls_cluster.certs.security(tls_ca_file=str(tls_cluster.certs.other_ca))
    kind, message = _connect_error(tls_cluster.address, security=security, timeout=5)
    assert kind is FatalCommClosedError
    assert message.startswith("TLS certificate does not match")


def test_require_encryption_scheduler(tls_required_cluster: TlsCluster) -> None:
    with Client(
        tls_required_cluster.address,
        security=tls_required_cluster.certs.security(),
        timeout=30,
        set_as_default=False,
    ) as c:
        assert _one_plus_one(c) == 2
    kind, _ = _connect_error(tls_required_cluster.address, timeout=5)
    assert kind is TypeError


def test_require_encryption_refuses_tcp(tls_cluster: TlsCluster) -> None:
    address = _dead_tcp_address()  # refused before any connection is attempted
    kind, message = _connect_error(address, security=tls_cluster.certs.security(), timeout=5)
    assert kind is RuntimeError
    assert message == (
        f"encryption required by Dask configuration, refusing communication from/to {address!r}"
    )


def test_unknown_scheme() -> None:
    kind, message = _connect_error("foo://127.0.0.1:1", timeout=5)
    assert kind is ValueError
    assert message.startswith("unknown address scheme 'foo' (known schemes: [")
