"""Concurrent sessions at full size: every message delivered once, in order, and no false failure.

Run: ``.venv/bin/python benchmarks/load.py [--sessions 64] [--steps 32] [--messages 2000]``.
On a separate ``dask scheduler`` + one ``dask worker --nthreads 4`` (127.0.0.1):

- ``threads``: that many sessions at once, each ``materialize()`` in its own thread with its
  own in-memory instance;
- ``multiprocess``: one run of a job with that many one-step assets, all at once on Dagster's
  multiprocess executor (forkserver), into an on-disk instance.

Each session logs ``messages`` numbered ``context.log`` lines. Prints, per mode: sessions that
succeeded, lines delivered in order out of those written, wall time. The same checks at smaller
counts are ``dagster_pipes_ext_tests/test_load.py``.
"""

from __future__ import annotations

import argparse
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dagster import DagsterInstance, execute_job, materialize, reconstructable

from benchmarks import common
from dagster_pipes_ext import PipesDaskClient, close_cached_clients
from dagster_pipes_ext_tests.conftest import script_asset
from dagster_pipes_ext_tests.support.processes import start_cluster


def _lines(instance: DagsterInstance, run_id: str) -> dict[str, list[str]]:
    by_step: dict[str, list[str]] = {}
    for entry in instance.all_logs(run_id):
        if entry.message.startswith("flood line "):
            by_step.setdefault(entry.step_key or "", []).append(entry.message)
    return by_step


def threads(address: str, sessions: int, messages: int) -> dict:
    """``sessions`` concurrent materializations from threads."""
    client = PipesDaskClient(scheduler_address=address)
    expected = [f"flood line {n}" for n in range(messages)]
    outcome: dict[int, tuple[bool, bool, int]] = {}

    def one(i: int) -> None:
        with DagsterInstance.ephemeral() as instance:
            name = f"flood_t{i}"
            asset = script_asset(name, "log_flood.py", env={"COUNT": str(messages)})
            result = materialize(
                [asset], instance=instance, resources={"dask_pipes": client}, raise_on_error=False
            )
            lines = _lines(instance, result.run_id).get(name, [])
            outcome[i] = (result.success, lines == expected, len(lines))

    started = time.monotonic()
    workers = [threading.Thread(target=one, args=(i,)) for i in range(sessions)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=1800)
    return _summary(outcome, sessions, messages, time.monotonic() - started)


def multiprocess(address: str, steps: int, messages: int) -> dict:
    """One run of ``steps`` concurrent steps, each in its own process."""
    os.environ["PIPES_LOAD_STEPS"] = str(steps)  # read by the job module, here and in each step
    from dagster_pipes_ext_tests.support import load_job

    expected = [f"flood line {n}" for n in range(messages)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as home, DagsterInstance.local_temp(home) as instance:
        try:
            result = execute_job(
                reconstructable(load_job.load_job),
                instance=instance,
                run_config=load_job.run_config(messages, address, drain_timeout=60.0),
                raise_on_error=False,
            )
        finally:
            multiprocess_stop()
        by_step = _lines(instance, result.run_id)
        failed = {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
    outcome = {}
    for i, asset in enumerate(load_job.ASSETS):
        lines = by_step.get(asset.op.name, [])
        outcome[i] = (asset.op.name not in failed, lines == expected, len(lines))
    return _summary(outcome, steps, messages, time.monotonic() - started)


def multiprocess_stop() -> None:
    """The executor's fork server and multiprocessing's resource tracker outlive the run."""
    multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]
    multiprocessing.resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]


def _summary(outcome: dict, sessions: int, messages: int, seconds: float) -> dict:
    return {
        "sessions": sessions,
        "succeeded": sum(ok for ok, _, _ in outcome.values()),
        "in_order_and_complete": sum(whole for _, whole, _ in outcome.values()),
        "lines_delivered": sum(n for _, _, n in outcome.values()),
        "lines_written": sessions * messages,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    """Run both modes and print what each delivered."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    common.prepare_environment()
    cluster = start_cluster(1, nthreads=4)
    try:
        for name, run in (
            ("threads", lambda: threads(cluster.address, args.sessions, args.messages)),
            ("multiprocess", lambda: multiprocess(cluster.address, args.steps, args.messages)),
        ):
            print(f"{name}: {run()}", flush=True)
    finally:
        close_cached_clients()
        cluster.stop()


if __name__ == "__main__":
    main()
