"""One asset, every Dask deployment: TLS, scheduler files, cluster classes, Slurm, dask-gateway.

Real servers, started by the fixtures on 127.0.0.1 and stopped by PID: a TLS scheduler and
worker with certificates made here, a single-node Slurm (slurmctld, slurmd, munged) driven by
dask-jobqueue, and a dask-gateway-server with its local backend.
"""

import json
import multiprocessing.resource_tracker
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dask
import psutil
import pytest
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    DagsterInstance,
    EnvVar,
    asset,
    materialize,
)

from dagster_pipes_ext import PipesDaskClient, PipesDaskWorkerLostError, close_cached_clients
from dagster_pipes_ext_tests.conftest import script
from dagster_pipes_ext_tests.support import gateway as gateway_support
from dagster_pipes_ext_tests.support.gateway import GatewayServer
from dagster_pipes_ext_tests.support.processes import DaskProcesses, pid_alive, wait_for
from dagster_pipes_ext_tests.support.slurm import SingleNodeSlurm
from dagster_pipes_ext_tests.support.tls import TlsCluster, start_tls_cluster
from dagster_pipes_ext_tests.test_termination import _interrupt_run

pytestmark = pytest.mark.slow


def _tutorial(name: str = "orders", **run_kwargs):
    @asset(name=name, check_specs=[AssetCheckSpec("no_nulls", asset=name)])
    def _asset(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(
            context=context, command=["python", script("tutorial.py")], **run_kwargs
        ).get_materialize_result()

    return _asset


def _run(client: PipesDaskClient, instance: DagsterInstance, **run_kwargs) -> dict:
    """Materialize the tutorial asset; return its metadata, check and the cluster log line."""
    result = materialize(
        [_tutorial(**run_kwargs)], resources={"dask_pipes": client}, instance=instance
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("orders")
    [check] = result.get_asset_check_evaluations()
    [used] = [
        e.message for e in instance.all_logs(result.run_id) if "[pipes] Dask cluster:" in e.message
    ]
    return {
        "metadata": {k: v.value for k, v in materialization.metadata.items()},
        "check_passed": check.passed,
        "cluster": used,
    }


def _step_error(client: PipesDaskClient) -> tuple[str, str]:
    result = materialize([_tutorial()], resources={"dask_pipes": client}, raise_on_error=False)
    failure = result.failure_data_for_node("orders")
    assert failure is not None and failure.error is not None and failure.error.cause
    return failure.error.cause.cls_name or "", failure.error.cause.to_string()


# -- TLS ----------------------------------------------------------------------------------------


def _tls_client(cluster: TlsCluster, **fields) -> PipesDaskClient:
    certs = cluster.certs
    defaults = {
        "scheduler_address": cluster.address,
        "tls_ca_file": str(certs.ca),
        "tls_client_cert": str(certs.client_cert),
        "tls_client_key": str(certs.client_key),
    }
    return PipesDaskClient(**{**defaults, **fields})


def test_tls_fields(tls_cluster: TlsCluster, instance: DagsterInstance) -> None:
    """TLS fields: the tutorial asset and its check, and the command uses the cluster over TLS."""
    seen = _run(
        _tls_client(tls_cluster, require_encryption=True), instance, env={"USE_CLUSTER": "1"}
    )
    assert seen["check_passed"] and seen["metadata"]["rows"] == 1234
    assert seen["metadata"]["cluster_sum"] == 6
    assert f"scheduler_address {tls_cluster.address}" in seen["cluster"]


def test_dasks_own_tls_config_keeps_working(tls_cluster: TlsCluster, instance) -> None:
    """Dask's TLS config (what DASK_DISTRIBUTED__COMM__TLS__* sets) is honoured as before."""
    certs = tls_cluster.certs
    config = {
        "distributed.comm.tls.ca-file": str(certs.ca),
        "distributed.comm.tls.client.cert": str(certs.client_cert),
        "distributed.comm.tls.client.key": str(certs.client_key),
    }
    with dask.config.set(config):
        seen = _run(PipesDaskClient(scheduler_address=tls_cluster.address), instance)
    assert seen["check_passed"]


@pytest.mark.parametrize(
    "case",
    ["no-certificate", "wrong-ca", "encryption-required-on-tcp", "unknown-scheme", "refused"],
)
def test_connection_failures_are_clear(case: str, tls_cluster: TlsCluster) -> None:
    """Each way a connection fails is a PipesDaskSchedulerUnreachableError saying what to check."""
    certs = tls_cluster.certs
    client, expected = {
        "no-certificate": (
            PipesDaskClient(scheduler_address=tls_cluster.address, connect_timeout_seconds=5),
            "tls_client_cert",
        ),
        "wrong-ca": (
            PipesDaskClient(
                scheduler_address=tls_cluster.address,
                tls_ca_file=str(certs.other_ca),
                tls_client_cert=str(certs.other_client_cert),
                tls_client_key=str(certs.other_client_key),
                connect_timeout_seconds=3,
            ),
            "certificate match",
        ),
        "encryption-required-on-tcp": (
            PipesDaskClient(
                scheduler_address=tls_cluster.address.replace("tls://", "tcp://"),
                require_encryption=True,
                tls_ca_file=str(certs.ca),
                tls_client_cert=str(certs.client_cert),
                tls_client_key=str(certs.client_key),
            ),
            "not a tls:// address",
        ),
        "unknown-scheme": (
            PipesDaskClient(scheduler_address="foo://127.0.0.1:1"),
            "tcp://host:port or tls://host:port",
        ),
        "refused": (
            PipesDaskClient(scheduler_address="tcp://127.0.0.1:1", connect_timeout_seconds=2),
            "Check that the scheduler is running",
        ),
    }[case]
    started = time.monotonic()
    cls_name, message = _step_error(client)
    assert cls_name == "PipesDaskSchedulerUnreachableError", message
    assert expected in message
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("field", ["tls_ca_file", "tls_client_cert", "tls_client_key"])
def test_a_missing_tls_file_is_named(field: str, tls_cluster: TlsCluster, tmp_path: Path) -> None:
    """A TLS path that is not a file fails up front, naming the field (Dask's own error names
    no file: `FileNotFoundError: [Errno 2] No such file or directory`).
    """
    missing = str(tmp_path / "missing.pem")
    cls_name, message = _step_error(_tls_client(tls_cluster, **{field: missing}))
    assert cls_name == "PipesDaskConfigurationError", message
    assert f"{field}={missing!r} is not a file on this host" in message


def test_failed_connect_does_not_delay_process_exit(tls_cluster: TlsCluster) -> None:
    """A process whose TLS connection failed exits at once (no half-built client holds it)."""
    code = textwrap.dedent(
        f"""
        from dagster_pipes_ext import PipesDaskClient, PipesDaskSchedulerUnreachableError
        try:
            PipesDaskClient(scheduler_address={tls_cluster.address!r},
                            connect_timeout_seconds=5).get_dask_client()
        except PipesDaskSchedulerUnreachableError:
            print("refused", flush=True)
        """
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert "refused" in proc.stdout, proc.stderr[-2000:]
    assert elapsed < 8, f"exit took {elapsed:.1f}s"


def test_tls_termination_stops_the_command(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    """Terminating a run on the TLS cluster stops the command and its child on the worker."""
    pid, grandchild, out = _interrupt_run(
        tmp_path, tls_cluster.address, ignore_sigint=False, timeout=3,
        extra_env=tls_cluster.certs.client_env(),
    )  # fmt: skip
    wait_for(lambda: not pid_alive(pid), 15, f"external process {pid} to end")
    wait_for(lambda: not pid_alive(grandchild), 15, f"grandchild {grandchild} to end")
    assert "[pipes] execution interrupted" in out


def _kill_the_commands_worker(
    client: PipesDaskClient, tmp_path: Path, worker_pids: set[int] | None = None
) -> tuple[object, list[int]]:
    """Run the family script; SIGKILL the worker process running it; return result and family."""
    pids_file = tmp_path / "pids"

    @asset
    def doomed(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(
            context=context,
            command=["python", script("fault_family.py")],
            env={"PIDS_FILE": str(pids_file)},
        ).get_materialize_result()

    family: list[int] = []

    def strike() -> None:
        text = wait_for(lambda: pids_file.exists() and pids_file.read_text(), 120, "the command")
        family.extend(int(p) for p in text.split())
        for ancestor in psutil.Process(family[0]).parents():
            cmd = " ".join(ancestor.cmdline())
            if (worker_pids and ancestor.pid in worker_pids) or (
                not worker_pids and "distributed.cli.dask_worker" in cmd
            ):
                ancestor.kill()
                return
        raise AssertionError("no Dask worker among the command's ancestors")

    striker = threading.Thread(target=strike, daemon=True)
    striker.start()
    result = materialize([doomed], resources={"dask_pipes": client}, raise_on_error=False)
    striker.join(timeout=120)
    for pid in family:
        wait_for(lambda pid=pid: not pid_alive(pid), 15, f"process {pid} to end")
    return result, family


def _assert_worker_lost(result) -> None:
    failure = result.failure_data_for_node("doomed")
    assert failure is not None and failure.error is not None and failure.error.cause
    assert failure.error.cause.cls_name == PipesDaskWorkerLostError.__name__


def test_tls_worker_loss(tmp_path: Path) -> None:
    """A TLS worker SIGKILLed mid-run: PipesDaskWorkerLostError, nothing of the command left."""
    cluster = start_tls_cluster(1)
    try:
        client = _tls_client(cluster)
        workers = {w.pid for w in cluster.processes.workers}
        result, family = _kill_the_commands_worker(client, tmp_path, workers)
        _assert_worker_lost(result)
        assert len(family) >= 4
    finally:
        close_cached_clients()
        cluster.stop()


def test_string_fields_take_env_vars(
    tls_cluster: TlsCluster, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EnvVar works for the new string fields: scheduler_file and the TLS paths."""
    certs = tls_cluster.certs
    for name, value in {
        "PIPES_T_FILE": str(tls_cluster.scheduler_file),
        "PIPES_T_CA": str(certs.ca),
        "PIPES_T_CERT": str(certs.client_cert),
        "PIPES_T_KEY": str(certs.client_key),
    }.items():
        monkeypatch.setenv(name, value)
    client = PipesDaskClient(
        scheduler_file=EnvVar("PIPES_T_FILE"),
        tls_ca_file=EnvVar("PIPES_T_CA"),
        tls_client_cert=EnvVar("PIPES_T_CERT"),
        tls_client_key=EnvVar("PIPES_T_KEY"),
    )
    seen = _run(client, instance)
    assert seen["check_passed"]
    assert f"scheduler_file {tls_cluster.scheduler_file}" in seen["cluster"]


# -- scheduler file, precedence, no silent fallback ---------------------------------------------


def test_scheduler_file(separate_cluster: DaskProcesses, instance: DagsterInstance) -> None:
    """`scheduler_file` connects to the scheduler the file names, and the log says so."""
    path = Path(separate_cluster.worker_dir) / "scheduler.json"
    seen = _run(PipesDaskClient(scheduler_file=str(path)), instance)
    assert seen["check_passed"]
    assert f"scheduler_file {path}" in seen["cluster"]
    assert separate_cluster.address in seen["cluster"]
    assert seen["metadata"]["dask/worker"].startswith("tcp://127.0.0.1:")


def test_scheduler_file_termination_stops_the_command(
    separate_cluster: DaskProcesses, tmp_path: Path
) -> None:
    """Terminating a run that found its scheduler through a scheduler file stops the command."""
    fields = {"scheduler_file": str(Path(separate_cluster.worker_dir) / "scheduler.json")}
    pid, grandchild, out = _interrupt_run(
        tmp_path, json.dumps(fields), ignore_sigint=False, timeout=3
    )
    wait_for(lambda: not pid_alive(pid), 15, f"external process {pid} to end")
    wait_for(lambda: not pid_alive(grandchild), 15, f"grandchild {grandchild} to end")
    assert "[pipes] execution interrupted" in out


def test_missing_scheduler_file_is_clear(tmp_path: Path) -> None:
    """A scheduler file that is not there fails clearly instead of falling back."""
    cls_name, message = _step_error(PipesDaskClient(scheduler_file=str(tmp_path / "nope.json")))
    assert cls_name == "PipesDaskSchedulerUnreachableError"
    assert "does not exist" in message


def test_two_sources_are_a_configuration_error(tmp_path: Path) -> None:
    """scheduler_address and scheduler_file together: a clear configuration error."""
    client = PipesDaskClient(scheduler_address="tcp://127.0.0.1:1", scheduler_file="x.json")
    cls_name, message = _step_error(client)
    assert cls_name == "PipesDaskConfigurationError"
    assert "set only one of" in message


def test_embedded_fallback_can_be_refused() -> None:
    """allow_embedded_cluster=False with no source: an error naming every source looked at."""
    cls_name, message = _step_error(PipesDaskClient(allow_embedded_cluster=False))
    assert cls_name == "PipesDaskConfigurationError"
    for source in (
        "scheduler_address",
        "scheduler_file",
        "cluster_class",
        "DASK_SCHEDULER_ADDRESS",
    ):
        assert source in message


def test_embedded_run_says_so(instance: DagsterInstance) -> None:
    """A run on the embedded cluster says so in its log."""
    seen = _run(PipesDaskClient(), instance)
    assert "the embedded in-process cluster (scheduler inproc://" in seen["cluster"]


def test_embedded_tcp_lets_the_command_use_the_cluster(instance: DagsterInstance) -> None:
    """With embedded_tcp the embedded cluster is on loopback TCP and the command's own
    distributed.Client() reaches it; without it, the command gets no address."""
    try:
        seen = _run(PipesDaskClient(embedded_tcp=True), instance, env={"USE_CLUSTER": "1"})
    finally:
        close_cached_clients()
    assert seen["metadata"]["cluster_sum"] == 6
    assert "the embedded in-process cluster (scheduler tcp://127.0.0.1:" in seen["cluster"]


def test_cluster_class_local_cluster(instance: DagsterInstance) -> None:
    """cluster_class with kwargs (a LocalCluster of worker processes), once per process."""
    client = PipesDaskClient(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": 1, "threads_per_worker": 2, "processes": True,
            "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
        },
    )  # fmt: skip
    try:
        first = _run(client, instance, env={"USE_CLUSTER": "1"})
        second = _run(client, instance)
    finally:
        close_cached_clients()
        # LocalCluster's worker processes leave multiprocessing's resource tracker running.
        multiprocessing.resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]
    assert first["metadata"]["cluster_sum"] == 6
    assert first["cluster"] == second["cluster"]  # the same cluster, started once
    assert "cluster_class distributed.LocalCluster" in first["cluster"]


def test_cluster_class_that_does_not_start_names_the_cause() -> None:
    """A cluster class that raises on start fails as a configuration error with its real cause
    (LocalCluster says only "Nanny failed to start"; the unknown keyword is in its cause).
    """
    client = PipesDaskClient(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": 1, "processes": False, "bogus_kw": 1},
    )
    cls_name, message = _step_error(client)
    assert cls_name == "PipesDaskConfigurationError", message
    assert "cluster_class='distributed.LocalCluster' did not start with cluster_kwargs=" in message
    assert "unexpected keyword argument 'bogus_kw'" in message


# -- Slurm --------------------------------------------------------------------------------------


def _slurm_client(slurm: SingleNodeSlurm, tmp_path: Path, lifetime: str) -> PipesDaskClient:
    return PipesDaskClient(
        cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs={
            "queue": slurm.partition,
            "cores": 2,
            "processes": 1,
            "memory": "1GiB",
            "walltime": "00:10:00",
            "python": sys.executable,
            "n_workers": 1,
            "scheduler_options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
            "worker_extra_args": ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"],
            "log_directory": str(tmp_path),
            "local_directory": str(tmp_path),
            "death_timeout": 30,
        },
        cluster_lifetime=lifetime,
        worker_wait_timeout_seconds=120,
    )


def test_slurm_cluster_once_per_process(slurm: SingleNodeSlurm, tmp_path: Path, instance):
    """SLURMCluster through cluster_class: started once, two runs on its Slurm job, closed."""
    client = _slurm_client(slurm, tmp_path, "process")
    try:
        first = _run(client, instance, env={"USE_CLUSTER": "1"})
        second = _run(client, instance)
        assert slurm.job_ids(), "the worker should be a Slurm job"
    finally:
        close_cached_clients()
    assert first["check_passed"] and first["metadata"]["cluster_sum"] == 6
    assert first["cluster"] == second["cluster"]
    assert not slurm.cancel_all(), "the worker job outlived the cluster"


def test_slurm_termination_stops_the_command(slurm: SingleNodeSlurm, tmp_path: Path) -> None:
    """Terminating a run whose command runs in a Slurm job stops it and its child there."""
    from dask_jobqueue import SLURMCluster

    kwargs = dict(_slurm_client(slurm, tmp_path, "process").cluster_kwargs or {})
    cluster = SLURMCluster(**kwargs)
    try:
        pid, grandchild, out = _interrupt_run(
            tmp_path, cluster.scheduler_address, ignore_sigint=False, timeout=3
        )
        wait_for(lambda: not pid_alive(pid), 15, f"external process {pid} to end")
        wait_for(lambda: not pid_alive(grandchild), 15, f"grandchild {grandchild} to end")
        assert "[pipes] execution interrupted" in out
    finally:
        cluster.close()
        assert not slurm.cancel_all(), "the worker job outlived the cluster"


def test_slurm_cluster_per_run_and_worker_loss(slurm: SingleNodeSlurm, tmp_path: Path, instance):
    """cluster_lifetime="run": each run starts and closes its cluster; a cancelled worker job
    fails the step with PipesDaskWorkerLostError."""
    client = _slurm_client(slurm, tmp_path, "run")
    seen = _run(client, instance)
    assert seen["check_passed"]
    wait_for(lambda: not slurm.job_ids(), 30, "the run's Slurm job to end")

    pids_file = tmp_path / "pids"

    @asset
    def doomed(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(
            context=context,
            command=["python", script("fault_family.py")],
            env={"PIDS_FILE": str(pids_file)},
        ).get_materialize_result()

    import threading

    def cancel_job() -> None:
        wait_for(lambda: pids_file.exists() and pids_file.read_text(), 120, "the command")
        for job in slurm.job_ids():
            slurm.run(["scancel", "--signal=KILL", job])

    canceller = threading.Thread(target=cancel_job, daemon=True)
    canceller.start()
    result = materialize([doomed], resources={"dask_pipes": client}, raise_on_error=False)
    canceller.join(timeout=120)
    failure = result.failure_data_for_node("doomed")
    assert failure is not None and failure.error is not None and failure.error.cause
    assert failure.error.cause.cls_name == PipesDaskWorkerLostError.__name__
    assert not slurm.cancel_all()


# -- dask-gateway -------------------------------------------------------------------------------


def test_gateway_new_cluster_per_run(
    gateway_server: GatewayServer, instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cluster_class creates a gateway cluster for the run, with the gateway's own TLS (and a
    password read from the environment, not from the resource's configuration)."""
    monkeypatch.setenv("PIPES_TEST_GATEWAY_PASSWORD", gateway_server.password)
    client = PipesDaskClient(
        cluster_class="dagster_pipes_ext.gateway.new_gateway_cluster",
        cluster_kwargs={
            "address": gateway_server.address,
            "username": gateway_server.username,
            "password_env": "PIPES_TEST_GATEWAY_PASSWORD",
            "workers": 1,
        },
        cluster_lifetime="run",
        worker_wait_timeout_seconds=120,
    )
    seen = _run(client, instance)
    assert seen["check_passed"]
    assert "(scheduler gateway://127.0.0.1:" in seen["cluster"]
    gateway = gateway_server.gateway()
    try:
        wait_for(lambda: not gateway.list_clusters(), 60, "the run's gateway cluster to stop")
    finally:
        gateway_support.close_quietly(gateway)


def _by_name(server: GatewayServer, cluster) -> dict:
    """PipesDaskClient fields that connect to a running gateway cluster by its name."""
    return {
        "cluster_class": "dagster_pipes_ext.gateway.connect_gateway_cluster",
        "cluster_kwargs": {
            "address": server.address,
            "cluster_name": cluster.name,
            "username": server.username,
            "password": server.password,
        },
    }


def test_gateway_termination_stops_the_command(
    gateway_server: GatewayServer, tmp_path: Path
) -> None:
    """Terminating a run on a gateway cluster stops the command and its child there."""
    cluster = gateway_server.new_cluster(1)
    try:
        fields = _by_name(gateway_server, cluster)
        pid, grandchild, out = _interrupt_run(
            tmp_path, json.dumps(fields), ignore_sigint=False, timeout=3
        )
        wait_for(lambda: not pid_alive(pid), 15, f"external process {pid} to end")
        wait_for(lambda: not pid_alive(grandchild), 15, f"grandchild {grandchild} to end")
        assert "[pipes] execution interrupted" in out
    finally:
        gateway_support.close_quietly(cluster)


def test_gateway_worker_loss(gateway_server: GatewayServer, tmp_path: Path) -> None:
    """A gateway cluster's worker SIGKILLed mid-run: PipesDaskWorkerLostError, nothing left."""
    cluster = gateway_server.new_cluster(1)
    try:
        client = PipesDaskClient(**_by_name(gateway_server, cluster))
        try:
            result, _family = _kill_the_commands_worker(client, tmp_path)
        finally:
            close_cached_clients()
        _assert_worker_lost(result)
    finally:
        gateway_support.close_quietly(cluster)


def test_gateway_existing_cluster_by_name(gateway_server: GatewayServer, instance) -> None:
    """connect_gateway_cluster: a running gateway cluster, by name, stays up after the run."""
    cluster = gateway_server.new_cluster(1)
    try:
        client = PipesDaskClient(**_by_name(gateway_server, cluster))
        try:
            seen = _run(client, instance)
        finally:
            close_cached_clients()
        assert seen["check_passed"]
        assert cluster.name in seen["cluster"] or "gateway://" in seen["cluster"]
        gateway = gateway_server.gateway()
        try:
            assert [c.name for c in gateway.list_clusters()] == [cluster.name]
        finally:
            gateway_support.close_quietly(gateway)
    finally:
        gateway_support.close_quietly(cluster)
