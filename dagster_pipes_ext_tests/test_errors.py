"""Failures are reported as clear PipesDask* errors, quickly, and leave nothing behind."""

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from dagster import AssetExecutionContext, ExecuteInProcessResult, asset, materialize
from distributed import Client

from dagster_pipes_ext import (
    PipesDaskClient,
    PipesDaskProcessError,
)
from dagster_pipes_ext_tests.conftest import script
from dagster_pipes_ext_tests.support.processes import (
    DaskProcesses,
    start_cluster,
    start_scheduler,
    start_worker,
    stop_pid,
    wait_for,
)

ENV_REPORT = script("env_report.py")
EXIT_7 = script("err_exit_code.py")
SIGKILL = script("err_sigkill.py")
SANITY_SECONDS = 30.0
# connect_timeout_seconds / worker_wait_timeout_seconds are 2 s / 3 s: a few seconds of work.
FAST_FAILURE_SECONDS = 12.0
WRAPPER = "DagsterExecutionStepExecutionError"


def _pipes(address: str | None, **config: Any) -> PipesDaskClient:
    config.setdefault("connect_timeout_seconds", 2)
    config.setdefault("worker_wait_timeout_seconds", 3)
    return PipesDaskClient(scheduler_address=address, termination_timeout_seconds=5, **config)


def _probe(run_kwargs: dict[str, Any]):
    @asset
    def probe(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(context=context, **run_kwargs).get_materialize_result()

    return probe


def _fail(pipes: PipesDaskClient, **run_kwargs: Any) -> tuple[ExecuteInProcessResult, float]:
    """Materialize an asset that runs ``run_kwargs``; it must fail. Return result and seconds."""
    started = time.monotonic()
    result = materialize(
        [_probe(run_kwargs)], resources={"dask_pipes": pipes}, raise_on_error=False
    )
    elapsed = time.monotonic() - started
    assert not result.success
    assert elapsed < SANITY_SECONDS
    return result, elapsed


def _step_error(result: ExecuteInProcessResult) -> tuple[str, str]:
    """The class name and message of the exception that failed the step, as Dagster stored it."""
    failure = result.failure_data_for_node("probe")
    assert failure is not None and failure.error is not None
    [event] = result.get_step_failure_events()
    assert event.step_failure_data.error == failure.error
    error = failure.error
    # Dagster stores the user's exception as the cause of its step-execution wrapper.
    while error.cls_name == WRAPPER and error.cause is not None:
        error = error.cause
    return str(error.cls_name), error.message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _running(fragment: str) -> list[int]:
    """Pids of live processes whose command line mentions ``fragment``."""
    pids = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(fragment in arg for arg in cmdline):
            pids.append(proc.pid)
    return pids


def _scheduler_leftovers(client: Client, run_id: str) -> dict[str, list[str]]:
    """Topics, events and launcher tasks of ``run_id`` that the scheduler still holds."""

    # Local, so it is pickled by value (the scheduler need not import this test module).
    def leftovers(run_id: str, dask_scheduler: Any = None) -> dict[str, list[str]]:
        prefix = f"dagster-pipes/{run_id}"
        return {
            "topics": sorted(t for t in dask_scheduler._broker._topics if t.startswith(prefix)),
            "events": sorted(
                str(n)
                for n in dask_scheduler.extensions["events"]._events
                if str(n).startswith(prefix)
            ),
            "tasks": sorted(
                str(k)
                for k in dask_scheduler.tasks
                if str(k).startswith("dagster-pipes-") and run_id[:8] in str(k)
            ),
        }

    state: Any = client.run_on_scheduler(leftovers, run_id)
    return state


def _assert_clean(address: str, run_id: str, fragment: str) -> None:
    """No external process of ``fragment`` is alive and the scheduler forgot the run."""
    wait_for(lambda: not _running(fragment), timeout=10, what=f"{fragment} to be gone")
    empty = {"topics": [], "events": [], "tasks": []}
    with Client(address, timeout=10, set_as_default=False) as client:
        deadline = time.monotonic() + 10
        state = _scheduler_leftovers(client, run_id)
        while state != empty and time.monotonic() < deadline:
            time.sleep(0.1)
            state = _scheduler_leftovers(client, run_id)
    assert state == empty


@pytest.fixture
def empty_scheduler(tmp_path: Path) -> Iterator[str]:
    """A separate `dask scheduler` with no worker at all; stopped by its pid afterwards."""
    proc, address, _ = start_scheduler(tmp_path)
    try:
        yield address
    finally:
        # Close the cached connection first so it does not keep trying to reconnect.
        with contextlib.suppress(Exception):
            _pipes(address).get_dask_client().close()
        stop_pid(proc.pid)
        proc.wait(timeout=10)


# -- the external process fails ---------------------------------------------------------------


def test_nonzero_exit_names_code_worker_and_stderr(separate_cluster: DaskProcesses) -> None:
    """A non-zero exit fails the step with PipesDaskProcessError naming code, worker and stderr."""
    result, _ = _fail(_pipes(separate_cluster.address), command=["python", EXIT_7])
    cls_name, message = _step_error(result)
    assert cls_name == "PipesDaskProcessError"
    assert "exit code 7" in message
    with Client(separate_cluster.address, timeout=10, set_as_default=False) as client:
        [worker] = client.scheduler_info(n_workers=-1)["workers"]
    assert f"Dask worker {worker}" in message
    assert "Last lines of its stderr" in message
    assert "ERR-EXIT-7 first distinctive stderr line" in message
    assert message.rstrip().endswith("ERR-EXIT-7 second distinctive stderr line")
    assert "err_exit_code filler line 0\n" not in message  # only the tail, not all of stderr
    _assert_clean(separate_cluster.address, result.run_id, EXIT_7)


def test_nonzero_exit_error_carries_attributes() -> None:
    """The raised PipesDaskProcessError exposes returncode, worker and stderr tail (embedded)."""
    started = time.monotonic()
    with pytest.raises(PipesDaskProcessError, match="exit code 7") as excinfo:
        materialize(
            [_probe({"command": ["python", EXIT_7]})], resources={"dask_pipes": _pipes(None)}
        )
    assert time.monotonic() - started < SANITY_SECONDS
    error = excinfo.value
    assert error.returncode == 7
    assert error.worker.startswith("inproc://")
    assert error.worker in str(error)
    assert "ERR-EXIT-7 second distinctive stderr line" in error.stderr_tail
    assert len(error.stderr_tail) <= 4096


def test_killed_by_signal_names_the_signal(separate_cluster: DaskProcesses) -> None:
    """A process killed by SIGKILL fails the step with a PipesDaskProcessError naming SIGKILL."""
    result, _ = _fail(_pipes(separate_cluster.address), command=["python", SIGKILL])
    cls_name, message = _step_error(result)
    assert cls_name == "PipesDaskProcessError"
    assert "SIGKILL" in message
    assert "ERR-SIGKILL last words" in message
    assert "tcp://127.0.0.1:" in message
    _assert_clean(separate_cluster.address, result.run_id, SIGKILL)


# -- the command cannot start -----------------------------------------------------------------


def test_command_not_found_is_a_launch_error(separate_cluster: DaskProcesses) -> None:
    """A program missing on the worker fails with PipesDaskLaunchError naming the command."""
    result, _ = _fail(
        _pipes(separate_cluster.address), command=["definitely-not-a-command-xyz", "--x"]
    )
    cls_name, message = _step_error(result)
    assert cls_name == "PipesDaskLaunchError"
    assert "command not found on the worker: 'definitely-not-a-command-xyz'" in message
    assert "Dask worker tcp://127.0.0.1:" in message
    _assert_clean(separate_cluster.address, result.run_id, "definitely-not-a-command-xyz")


def test_non_executable_command_is_a_launch_error(separate_cluster: DaskProcesses) -> None:
    """A program that is not executable (a plain .py file) fails with a clear launch error."""
    assert not os.access(ENV_REPORT, os.X_OK)
    result, _ = _fail(_pipes(separate_cluster.address), command=[ENV_REPORT])
    cls_name, message = _step_error(result)
    assert cls_name == "PipesDaskLaunchError"
    assert f"command is not executable on the worker: {ENV_REPORT!r}" in message
    _assert_clean(separate_cluster.address, result.run_id, ENV_REPORT)


def test_missing_cwd_is_a_launch_error(separate_cluster: DaskProcesses, tmp_path: Path) -> None:
    """A working directory that does not exist on the worker fails with a clear launch error."""
    missing = str(tmp_path / "no-such-dir")
    result, _ = _fail(_pipes(separate_cluster.address), command=["python", ENV_REPORT], cwd=missing)
    cls_name, message = _step_error(result)
    assert cls_name == "PipesDaskLaunchError"
    assert f"working directory {missing!r} does not exist on the worker" in message
    _assert_clean(separate_cluster.address, result.run_id, ENV_REPORT)


# -- the cluster cannot run it ----------------------------------------------------------------


def test_unreachable_scheduler_fails_fast() -> None:
    """A scheduler address nobody listens on fails within seconds, naming the address."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    result, elapsed = _fail(_pipes(address), command=["python", ENV_REPORT])
    cls_name, message = _step_error(result)
    assert cls_name == "PipesDaskSchedulerUnreachableError"
    assert f"Could not connect to the Dask scheduler at {address!r} within 2s" in message
    assert elapsed < FAST_FAILURE_SECONDS
    assert not _running(ENV_REPORT)


def test_unsatisfiable_resources_fail_with_no_worker_error(
    separate_cluster: DaskProcesses,
) -> None:
    """No worker offers `GPU`: PipesDaskNoWorkerError within seconds, naming the resources."""
    result, elapsed = _fail(
        _pipes(separate_cluster.address), command=["python", ENV_REPORT], resources={"GPU": 1}
    )
    cls_name, message = _step_error(result)
    assert cls_name == "PipesDaskNoWorkerError"
    assert "resources={'GPU': 1}" in message
    assert "'SLOTS': 4" in message  # what the connected worker does offer
    assert "within 3s" in message
    assert elapsed < FAST_FAILURE_SECONDS
    _assert_clean(separate_cluster.address, result.run_id, ENV_REPORT)


def test_unknown_worker_restriction_fails_with_no_worker_error(
    separate_cluster: DaskProcesses,
) -> None:
    """`workers=["tcp://127.0.0.1:1"]` (no such worker) fails with PipesDaskNoWorkerError."""
    result, elapsed = _fail(
        _pipes(separate_cluster.address),
        command=["python", ENV_REPORT],
        workers=["tcp://127.0.0.1:1"],
    )
    cls_name, message = _step_error(result)
    assert cls_name == "PipesDaskNoWorkerError"
    assert "workers=['tcp://127.0.0.1:1']" in message
    assert elapsed < FAST_FAILURE_SECONDS
    _assert_clean(separate_cluster.address, result.run_id, ENV_REPORT)


def test_scheduler_without_workers_fails_with_no_worker_error(empty_scheduler: str) -> None:
    """A scheduler with no worker connected fails with PipesDaskNoWorkerError saying so."""
    result, elapsed = _fail(_pipes(empty_scheduler), command=["python", ENV_REPORT])
    cls_name, message = _step_error(result)
    assert cls_name == "PipesDaskNoWorkerError"
    assert "No Dask worker connected to the scheduler within 3s" in message
    assert elapsed < FAST_FAILURE_SECONDS
    _assert_clean(empty_scheduler, result.run_id, ENV_REPORT)


def test_a_launch_spec_that_never_reached_the_scheduler_fails_the_launch_quickly(
    tmp_path: Path,
) -> None:
    """The launcher takes the session's spec from the scheduler with its claim; if it is not
    there (lost), the step fails with a clear launch error within the launcher's 10 s wait, not
    after the reader's drain timeout."""
    import threading

    from dagster_pipes_ext.remote.scheduler_ops import SPECS_ATTRIBUTE

    cluster = start_cluster(n_workers=1)
    outcome: dict[str, Any] = {}
    try:
        pipes = _pipes(cluster.address, worker_wait_timeout_seconds=60)

        def step() -> None:
            # Needs a worker that is not there yet: the spec waits on the scheduler meanwhile.
            run_kwargs = {"command": ["python", ENV_REPORT], "resources": {"GATE": 1}}
            outcome["result"] = materialize(
                [_probe(run_kwargs)], resources={"dask_pipes": pipes}, raise_on_error=False
            )

        runner = threading.Thread(target=step, daemon=True)
        runner.start()

        def drop_specs(dask_scheduler=None) -> int:
            specs = getattr(dask_scheduler, SPECS_ATTRIBUTE, None) or {}
            count = len(specs)
            specs.clear()
            return count

        with Client(cluster.address, timeout=10, set_as_default=False) as observer:
            wait_for(
                lambda: observer.run_on_scheduler(drop_specs) == 1,
                timeout=30,
                what="the session's spec stashed on the scheduler",
            )
            cluster.workers.append(
                start_worker(
                    cluster.address, Path(cluster.worker_dir), name="gate", resources="GATE=1"
                )
            )
            gate_at = time.monotonic()
            runner.join(timeout=SANITY_SECONDS)
        assert not runner.is_alive()
        assert time.monotonic() - gate_at < 20  # the 10 s wait, not the 60 s drain timeout
        cls_name, message = _step_error(outcome["result"])
        assert cls_name == "PipesDaskLaunchError"
        assert "launch specification never reached the Dask scheduler" in message
    finally:
        cluster.stop()
