"""Interrupting a step stops the external process and its children on the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client

from dagster_pipes_ext_tests.conftest import script
from dagster_pipes_ext_tests.support.processes import (
    DaskProcesses,
    pid_alive,
    stop_pid,
    wait_for,
)

pytestmark = pytest.mark.slow


def _leftovers(dask_scheduler=None) -> tuple[list, list]:
    topics = [t for t in dask_scheduler._broker._topics if t.startswith("dagster-pipes/")]
    events = [e for e in dask_scheduler.extensions["events"]._events if "dagster-pipes" in e]
    return topics, events


def _interrupt_run(
    tmp_path: Path,
    address: str,
    *,
    ignore_sigint: bool,
    timeout: float,
    sig: signal.Signals = signal.SIGINT,
    extra_env: dict[str, str] | None = None,
):
    pids_file = tmp_path / "pids"
    env = {
        **os.environ,
        "PIDS_FILE": str(pids_file),
        "IGNORE_SIGINT": "1" if ignore_sigint else "0",
        **(extra_env or {}),
    }
    driver = subprocess.Popen(
        [sys.executable, script("term_driver.py"), address, str(timeout)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def started() -> str | None:
            if driver.poll() is not None:
                raise AssertionError(f"driver ended early:\n{driver.stdout.read()[-3000:]}")  # type: ignore[union-attr]
            return (pids_file.exists() and pids_file.read_text()) or None

        text = wait_for(started, 60, "the external process")
        pid, grandchild = (int(x) for x in text.split())
        assert pid_alive(pid) and pid_alive(grandchild)
        driver.send_signal(sig)  # SIGINT: what Dagster's run termination delivers to a step
        out, _ = driver.communicate(timeout=timeout + 60)
    finally:
        stop_pid(driver.pid)
    return pid, grandchild, out


@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["graceful", "stubborn"])
def test_interrupt_stops_process_group(
    cluster_kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    ignore_sigint: bool,
) -> None:
    """SIGINT reaches the process group; one that ignores it is SIGKILLed after the timeout."""
    address = "embedded"
    if cluster_kind == "separate":
        cluster: DaskProcesses = request.getfixturevalue("separate_cluster")
        address = cluster.address
    pid, grandchild, out = _interrupt_run(tmp_path, address, ignore_sigint=ignore_sigint, timeout=3)

    wait_for(lambda: not pid_alive(pid), 15, f"external process {pid} to end")
    wait_for(lambda: not pid_alive(grandchild), 15, f"grandchild {grandchild} to end")
    assert "sleeper started" in out
    assert "[pipes] execution interrupted" in out
    assert "RUN_STATUS FAILURE" in out or "RUN_STATUS CANCELED" in out, out[-3000:]
    if ignore_sigint:
        assert "sent SIGKILL to the process group" in out
    else:
        assert "sent SIGKILL" not in out


def test_orchestrator_crash_stops_the_command(
    cluster_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """If the Dagster step process is SIGKILLed, the command and its children stop too."""
    address = "embedded"
    if cluster_kind == "separate":
        cluster: DaskProcesses = request.getfixturevalue("separate_cluster")
        address = cluster.address
    pid, grandchild, _ = _interrupt_run(
        tmp_path, address, ignore_sigint=False, timeout=3, sig=signal.SIGKILL
    )
    try:
        wait_for(lambda: not pid_alive(pid), 30, f"external process {pid} to end")
        if cluster_kind == "separate":
            # The launcher saw its task released, stopped the whole process group and cleaned up
            # what the orchestrator would have on the scheduler.
            wait_for(lambda: not pid_alive(grandchild), 30, f"grandchild {grandchild} to end")
            with Client(cluster.address, timeout=10, set_as_default=False) as observer:
                wait_for(
                    lambda: observer.run_on_scheduler(_leftovers) == ([], []),
                    30,
                    "the scheduler to hold nothing of the session",
                )
    finally:
        # Embedded: the worker died with the step, and PDEATHSIG reaches the command only.
        stop_pid(grandchild)
