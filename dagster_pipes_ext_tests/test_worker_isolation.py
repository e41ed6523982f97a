"""The separate worker has no dagster; Pipes still works there with worker-local files."""

import glob
import os
import tempfile
import time
from typing import Any

from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    ExecuteInProcessResult,
    asset,
    materialize,
)
from dagster_pipes import decode_param
from distributed import Client

from dagster_pipes_ext import PipesDaskClient
from dagster_pipes_ext_tests.conftest import script
from dagster_pipes_ext_tests.support.processes import DaskProcesses

ENV_REPORT = script("env_report.py")
SANITY_SECONDS = 30.0
BLOCKED = ("dagster", "dagster_shared", "dagster_pipes_ext", "dagster_pipes_ext_tests")


def _run_env_report(
    address: str, instance: DagsterInstance | None = None
) -> tuple[ExecuteInProcessResult, dict[str, Any]]:
    """Materialize one asset that runs env_report.py on the cluster at ``address``."""
    captured: dict[str, Any] = {}

    @asset
    def probe(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(context=context, command=["python", ENV_REPORT])
        [captured["facts"]] = invocation.get_custom_messages()
        return invocation.get_materialize_result()

    pipes = PipesDaskClient(
        scheduler_address=address, connect_timeout_seconds=2, worker_wait_timeout_seconds=3
    )
    started = time.monotonic()
    result = materialize([probe], resources={"dask_pipes": pipes}, instance=instance)
    assert time.monotonic() - started < SANITY_SECONDS
    assert result.success
    return result, captured["facts"]


def _pipes_dirs(root: str) -> set[str]:
    return set(glob.glob(os.path.join(root, "dagster-pipes-*")))


def test_separate_worker_cannot_import_dagster(separate_cluster: DaskProcesses) -> None:
    """Code run on the separate worker gets ImportError for dagster and this package."""

    # A function local to the test is pickled by value, so the blocked worker can load it.
    def try_imports(names: tuple[str, ...]) -> dict[str, str]:
        import importlib

        outcome = {}
        for name in names:
            try:
                importlib.import_module(name)
                outcome[name] = "imported"
            except ImportError as exc:
                outcome[name] = f"ImportError: {exc}"
        return outcome

    # Control: the same function imports everything in the test process.
    assert set(try_imports(BLOCKED).values()) == {"imported"}
    with Client(separate_cluster.address, timeout=10, set_as_default=False) as client:
        by_worker: Any = client.run(try_imports, BLOCKED)
        # `.submit` goes through the task path (not the `run` RPC) and sees the same.
        by_task = client.submit(try_imports, BLOCKED, pure=False).result(timeout=10)
    assert len(by_worker) == len(separate_cluster.workers)
    for outcome in [*by_worker.values(), by_task]:
        assert set(outcome) == set(BLOCKED)
        assert all(v.startswith("ImportError") for v in outcome.values()), outcome


def test_full_pipes_run_succeeds_on_blocked_worker(
    separate_cluster: DaskProcesses, instance: DagsterInstance
) -> None:
    """A full Pipes session (log, custom message, materialization) runs on the blocked worker."""
    result, facts = _run_env_report(separate_cluster.address, instance)
    [materialization] = result.asset_materializations_for_node("probe")
    worker = materialization.metadata["dask/worker"].value
    with Client(separate_cluster.address, timeout=10, set_as_default=False) as client:
        assert worker in client.scheduler_info(n_workers=-1)["workers"]
    assert materialization.metadata["dask/exit_code"].value == 0
    assert materialization.metadata["cwd"].value == facts["cwd"]
    user_logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(f"env_report running in {facts['cwd']}" in m for m in user_logs), user_logs
    assert facts["pid"] != os.getpid()


def test_bootstrap_params_are_stock_file_params_in_worker_tmpdir(
    separate_cluster: DaskProcesses,
) -> None:
    """DAGSTER_PIPES_CONTEXT/MESSAGES are stock `{"path": ...}` params under the worker's TMPDIR."""
    worker_tmp = os.path.realpath(separate_cluster.worker_tmp)
    before = _pipes_dirs(worker_tmp)
    _, facts = _run_env_report(separate_cluster.address)

    context_param = decode_param(facts["pipes_context"])
    messages_param = decode_param(facts["pipes_messages"])
    assert set(context_param) == {"path"}
    assert set(messages_param) == {"path"}
    context_path = os.path.realpath(context_param["path"])
    messages_path = os.path.realpath(messages_param["path"])
    session_dir = os.path.dirname(context_path)
    assert os.path.dirname(messages_path) == session_dir
    assert os.path.dirname(session_dir) == worker_tmp
    assert os.path.basename(session_dir).startswith("dagster-pipes-")
    # Not the test process's temp dir: the worker chose the location from its own TMPDIR.
    assert os.path.dirname(session_dir) != os.path.realpath(tempfile.gettempdir())
    assert facts["tmpdir_env"] == separate_cluster.worker_tmp
    assert facts["context_file_existed"]
    assert facts["messages_file_existed"]

    # The worker removed its session files after the run.
    assert not os.path.exists(context_path)
    assert not os.path.exists(messages_path)
    assert not os.path.exists(session_dir)
    assert _pipes_dirs(worker_tmp) - before == set()


def test_cwd_defaults_to_the_workers_cwd(separate_cluster: DaskProcesses) -> None:
    """Without `cwd`, the command runs in the worker's working directory, not the test's."""
    _, facts = _run_env_report(separate_cluster.address)
    assert facts["cwd"] == os.path.realpath(separate_cluster.worker_dir)
    assert facts["cwd"] != os.path.realpath(os.getcwd())
