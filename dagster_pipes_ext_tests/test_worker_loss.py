"""A lost worker fails the step; the command is never re-run silently on another worker."""

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from dagster import materialize

from dagster_pipes_ext import PipesDaskClient, PipesDaskWorkerLostError, close_cached_clients
from dagster_pipes_ext_tests.conftest import script_asset
from dagster_pipes_ext_tests.support.processes import (
    DaskProcesses,
    pid_alive,
    start_cluster,
    stop_pid,
    wait_for,
)

pytestmark = pytest.mark.slow


# The worker's own PATH decides how the launcher sets PDEATHSIG: through `setpriv` when it is on
# it, else through a preexec function. The command's PATH (passed with the call) has both.
BIN = os.path.dirname(sys.executable)
COMMAND_PATH = os.pathsep.join([BIN, "/usr/local/bin", "/usr/bin", "/bin"])


@pytest.fixture(
    params=[(1, None), (2, None), (1, {"PATH": BIN})],
    ids=["one-worker", "two-workers", "one-worker-without-setpriv"],
)
def doomed_cluster(request: pytest.FixtureRequest) -> Iterator[DaskProcesses]:
    """A separate cluster of its own, since the test kills one of its workers."""
    n_workers, worker_env = request.param
    cluster = start_cluster(n_workers, nthreads=2, worker_env=worker_env)
    try:
        yield cluster
    finally:
        close_cached_clients()
        cluster.stop()


def test_killed_worker_fails_step_without_rerun(doomed_cluster: DaskProcesses, tmp_path: Path):
    """Killing the worker mid-run fails the step with a clear error and starts nothing again."""
    pids_file = tmp_path / "pids"
    starts_file = tmp_path / "starts"

    fragile = script_asset(
        "fragile",
        "term_sleeper.py",
        env={"PIDS_FILE": str(pids_file), "STARTS_FILE": str(starts_file), "PATH": COMMAND_PATH},
    )

    killed: dict[str, int] = {}

    def kill_worker() -> None:
        text = wait_for(lambda: pids_file.exists() and pids_file.read_text(), 60, "the command")
        pid, grandchild = (int(x) for x in text.split())
        supervisor = psutil.Process(pid).parent()
        assert supervisor is not None
        worker_pid = supervisor.ppid()
        assert worker_pid in {w.pid for w in doomed_cluster.workers}
        killed.update(pid=pid, grandchild=grandchild, worker=worker_pid)
        psutil.Process(worker_pid).send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_worker, daemon=True)
    killer.start()
    client = PipesDaskClient(scheduler_address=doomed_cluster.address)
    result = materialize([fragile], resources={"dask_pipes": client}, raise_on_error=False)
    killer.join(timeout=60)

    assert not result.success
    failure = result.failure_data_for_node("fragile")
    assert failure is not None and failure.error is not None
    error = failure.error
    while error.cause is not None and PipesDaskWorkerLostError.__name__ not in error.cls_name:
        error = error.cause
    assert error.cls_name == PipesDaskWorkerLostError.__name__, failure.error.to_string()
    assert "was lost" in error.message and "RetryPolicy" in error.message
    # The command started exactly once, and nothing it started outlived its worker.
    assert starts_file.read_text().split() == [str(killed["pid"])]
    try:
        wait_for(lambda: not pid_alive(killed["pid"]), 15, "the orphaned command to end")
        wait_for(lambda: not pid_alive(killed["grandchild"]), 15, "its child to end")
    finally:
        stop_pid(killed["grandchild"])


def test_lost_scheduler_fails_step_and_stops_command(tmp_path: Path) -> None:
    """Killing the scheduler mid-run fails the step clearly and the worker stops the command."""
    cluster = start_cluster(1, nthreads=2)
    pids_file = tmp_path / "pids"

    orphaned = script_asset("orphaned", "term_sleeper.py", env={"PIDS_FILE": str(pids_file)})

    killed_at: list[float] = []

    def kill_scheduler() -> None:
        wait_for(lambda: pids_file.exists() and pids_file.read_text(), 60, "the command")
        killed_at.append(time.monotonic())
        cluster.scheduler.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_scheduler, daemon=True)
    killer.start()
    try:
        client = PipesDaskClient(scheduler_address=cluster.address)
        result = materialize([orphaned], resources={"dask_pipes": client}, raise_on_error=False)
        failed_after = time.monotonic() - killed_at[0]
        killer.join(timeout=60)
        assert not result.success
        # Not after the client's 10 s of reconnecting: the reader stops asking a lost scheduler.
        assert failed_after < 8, f"the step failed {failed_after:.1f}s after the scheduler died"
        failure = result.failure_data_for_node("orphaned")
        assert failure is not None and failure.error is not None and failure.error.cause
        assert failure.error.cause.cls_name == "PipesDaskSchedulerUnreachableError"
        assert "connection to the Dask scheduler was lost" in failure.error.cause.message
        pid, grandchild = (int(x) for x in pids_file.read_text().split())
        wait_for(lambda: not pid_alive(pid), 30, "the command to be stopped")
        wait_for(lambda: not pid_alive(grandchild), 30, "the command's child to be stopped")
    finally:
        close_cached_clients()
        cluster.stop()


def _family(pids_file: Path) -> list[int]:
    text = wait_for(lambda: pids_file.exists() and pids_file.read_text(), 60, "the command")
    return [int(p) for p in text.split()]


def _worker_of(pid: int, cluster: DaskProcesses) -> int:
    """The worker process that runs the command ``pid`` (through its supervisor)."""
    workers = {w.pid for w in cluster.workers}
    for ancestor in psutil.Process(pid).parents():
        if ancestor.pid in workers:
            return ancestor.pid
    raise AssertionError(f"no worker among the ancestors of {pid}")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_no_descendant_survives_a_lost_worker(how: str, tmp_path: Path):
    """Worker SIGKILLed (as the kernel's OOM killer does) or hung (SIGSTOP): the step fails with
    PipesDaskWorkerLostError, and the command, its child, grandchild and a double-forked setsid
    daemon are all gone, the stopped worker notwithstanding."""
    cluster = start_cluster(1, nthreads=2)
    pids_file = tmp_path / "pids"
    family_asset = script_asset("family", "fault_family.py", env={"PIDS_FILE": str(pids_file)})
    seen: dict[str, Any] = {}

    def strike() -> None:
        family = _family(pids_file)
        worker = _worker_of(family[0], cluster)
        seen.update(family=family, worker=worker, at=time.monotonic())
        os.kill(worker, signal.SIGKILL if how == "SIGKILL" else signal.SIGSTOP)

    striker = threading.Thread(target=strike, daemon=True)
    striker.start()
    client = PipesDaskClient(
        scheduler_address=cluster.address, heartbeat_timeout_seconds=3,
        termination_timeout_seconds=2,
    )  # fmt: skip
    try:
        result = materialize([family_asset], resources={"dask_pipes": client}, raise_on_error=False)
        failed_after = time.monotonic() - seen["at"]
        striker.join(timeout=60)
        assert not result.success
        failure = result.failure_data_for_node("family")
        assert failure is not None and failure.error is not None and failure.error.cause
        assert failure.error.cause.cls_name == PipesDaskWorkerLostError.__name__
        if how == "SIGSTOP":
            assert "stopped responding" in failure.error.cause.message
        assert failed_after < 20
        # heartbeat 3 s + grace 2 s + a few seconds; the worker is still stopped meanwhile.
        for pid in seen["family"]:
            wait_for(lambda pid=pid: not pid_alive(pid), 10, f"process {pid} to end")
        if how == "SIGSTOP":
            assert pid_alive(seen["worker"])
    finally:
        if "worker" in seen and how == "SIGSTOP":
            with contextlib.suppress(ProcessLookupError):
                os.kill(seen["worker"], signal.SIGCONT)
        for pid in seen.get("family", []):
            stop_pid(pid)
        close_cached_clients()
        cluster.stop()
