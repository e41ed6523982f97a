"""Concurrent sessions under load: every message delivered once, in order, and no false failure."""

import multiprocessing.forkserver
import multiprocessing.resource_tracker
import threading
from pathlib import Path

import pytest
from dagster import DagsterInstance, execute_job, materialize, reconstructable

from dagster_pipes_ext import PipesDaskClient
from dagster_pipes_ext_tests.conftest import script_asset
from dagster_pipes_ext_tests.support import load_job
from dagster_pipes_ext_tests.support.processes import DaskProcesses

pytestmark = pytest.mark.slow


def _flood_lines(instance: DagsterInstance, run_id: str) -> dict[str, list[str]]:
    by_step: dict[str, list[str]] = {}
    for entry in instance.all_logs(run_id):
        if entry.message.startswith("flood line "):
            by_step.setdefault(entry.step_key or "", []).append(entry.message)
    return by_step


def test_concurrent_sessions_from_threads(separate_cluster: DaskProcesses):
    """16 sessions at once from threads, 500 messages each: all succeed, nothing lost or doubled.

    The worker runs 4 commands at a time, so most sessions wait while the others stream; the
    client's own copy of the scheduler's worker list is refreshed by many threads meanwhile.
    """
    sessions, count = 16, 500
    client = PipesDaskClient(scheduler_address=separate_cluster.address)
    results: dict[int, tuple[bool, list[str]]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with DagsterInstance.ephemeral() as instance:
                flood = script_asset(f"flood_t{i}", "log_flood.py", env={"COUNT": str(count)})
                result = materialize(
                    [flood], instance=instance, resources={"dask_pipes": client},
                    raise_on_error=False,
                )  # fmt: skip
                lines = _flood_lines(instance, result.run_id).get(f"flood_t{i}", [])
                results[i] = (result.success, lines)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors
    assert len(results) == sessions
    expected = [f"flood line {n}" for n in range(count)]
    for i, (success, lines) in sorted(results.items()):
        assert success, f"session {i} failed"
        assert lines == expected, (
            f"session {i}: {len(lines)} lines, in order: {lines == sorted(lines)}"
        )


def test_concurrent_steps_multiprocess(separate_cluster: DaskProcesses, tmp_path: Path):
    """8 steps at once in their own processes, 1,000 messages each, 2 s drain timeout: all arrive.

    With the old reader, messages queued behind Dagster's (SQLite, concurrent) event-log writes
    were cut off by the drain timeout while every step reported success.
    """
    count = 1000
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        try:
            result = execute_job(
                reconstructable(load_job.load_job),
                instance=instance,
                run_config=load_job.run_config(count, separate_cluster.address, drain_timeout=2.0),
                raise_on_error=False,
            )
        finally:
            # The executor's fork server and multiprocessing's resource tracker outlive the run.
            multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]
            multiprocessing.resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]
        by_step = _flood_lines(instance, result.run_id)
        failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert failed == []
        assert result.success
    expected = [f"flood line {n}" for n in range(count)]
    assert sorted(by_step) == [a.op.name for a in load_job.ASSETS]
    for step, lines in by_step.items():
        assert lines == expected, f"{step}: {len(lines)} of {count} lines"
