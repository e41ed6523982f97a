"""Scenario 4 — fan-out: 16 parallel Pipes steps in one run with the multiprocess executor.

See :mod:`benchmarks.fanout_job` for the job: 16 one-step assets (standing in for 16
partitions of one asset), each a Pipes session whose external process sleeps 0.5 s and
reports; the multiprocess executor (``forkserver`` start method, job and storage modules
preloaded) runs at most 4 steps at a time. The Dask job points every step at the one shared
separate cluster (worker with 4 task threads). Each sample is the wall time of one whole
``execute_job`` on a persistent ``local_temp`` instance.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from dagster import execute_job, reconstructable

from benchmarks import fanout_job
from benchmarks.bench import Bench, client_results, dagster_instance, measure_interleaved
from benchmarks.common import DASK_SEPARATE, SUBPROCESS
from benchmarks.printing import fmt_seconds, print_client_table, say
from benchmarks.stats import percentile

TITLE = "4. Fan-out (16 Pipes steps, multiprocess executor, one run)"


def warm_forkserver() -> float:
    """Start this process's forkserver with the preload Dagster will ask for; return seconds.

    The forkserver is started once per process and reused by every later run, so without this
    the first timed run alone would pay for starting it and importing Dagster into it.
    """
    started = time.perf_counter()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["dagster._core.executor.multiprocess", *fanout_job.PRELOAD])
    proc = ctx.Process(target=time.sleep, args=(0,))
    proc.start()
    proc.join(timeout=120)
    return time.perf_counter() - started


def run(bench: Bench) -> dict[str, Any]:
    """Time the 16-step run per client, interleaved."""
    reps = bench.reps(default=2, quick=1)
    seconds = 0.2 if bench.quick else 0.5
    address = bench.shared_cluster().address
    jobs = {
        SUBPROCESS: (
            reconstructable(fanout_job.subprocess_fanout_job),
            fanout_job.run_config(seconds, log_level=bench.console_log_level),
        ),
        DASK_SEPARATE: (
            reconstructable(fanout_job.dask_fanout_job),
            fanout_job.run_config(
                seconds, scheduler_address=address, log_level=bench.console_log_level
            ),
        ),
    }
    ideal = fanout_job.PARTITIONS * seconds / fanout_job.MAX_CONCURRENT
    say(
        f"  {fanout_job.PARTITIONS} one-step Pipes assets from one factory (standing in for "
        f"{fanout_job.PARTITIONS} partitions of one asset: Dagster runs one partition per run), "
        "multiprocess executor (forkserver; job + Dagster storage modules preloaded, not "
        "distributed), persistent local_temp instance"
    )
    say(
        f"  {fanout_job.PARTITIONS} steps x {seconds:g} s sleep, max_concurrent="
        f"{fanout_job.MAX_CONCURRENT} (sleep-only lower bound {fmt_seconds(ideal)}); {reps} reps "
        "per client, interleaved"
    )
    say(
        f"  warm-up (untimed): forkserver started with the job module preloaded in "
        f"{warm_forkserver():.1f} s"
    )
    with dagster_instance("local_temp") as instance:

        def once(name: str, _client: Any) -> Any:
            job, config = jobs[name]
            with execute_job(job, instance=instance, run_config=config) as result:
                if not result.success:
                    raise RuntimeError(f"fan-out run {result.run_id} ({name}) failed")
                mats = [
                    e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
                ]
                return {"run_id": result.run_id, "materializations": len(mats)}

        def step_breakdown(run_id: str) -> dict[str, list[float]]:
            """Per step: worker start-up (STEP_WORKER_STARTING -> STEP_START) and body time."""
            marks: dict[str, dict[str, float]] = {}
            for entry in instance.all_logs(run_id):
                event = entry.dagster_event
                if event is None or entry.step_key is None:
                    continue
                marks.setdefault(entry.step_key, {})[event.event_type_value] = entry.timestamp
            startup, body = [], []
            for m in marks.values():
                if "STEP_WORKER_STARTING" in m and "STEP_START" in m:
                    startup.append(m["STEP_START"] - m["STEP_WORKER_STARTING"])
                if "STEP_START" in m and "STEP_SUCCESS" in m:
                    body.append(m["STEP_SUCCESS"] - m["STEP_START"])
            return {"step_startup_seconds": startup, "step_body_seconds": body}

        def check(name: str, value: dict[str, Any]) -> dict[str, Any]:
            if value["materializations"] != fanout_job.PARTITIONS:
                raise RuntimeError(f"{name}: {value['materializations']} materializations")
            return {**value, **step_breakdown(value["run_id"])}

        measured = measure_interleaved(dict.fromkeys(jobs), reps, once, check=check)
    results = client_results(measured)
    print_client_table(results)
    for name, data in measured.items():
        startup = [x for f in data["facts"] for x in f.get("step_startup_seconds", [])]
        body = [x for f in data["facts"] for x in f.get("step_body_seconds", [])]
        results[name]["step_startup_median_seconds"] = percentile(startup, 50)
        results[name]["step_body_median_seconds"] = percentile(body, 50)
        say(
            f"  {name}: per step, median worker start-up {fmt_seconds(percentile(startup, 50))} "
            f"(STEP_WORKER_STARTING -> STEP_START), median step body "
            f"{fmt_seconds(percentile(body, 50))} (STEP_START -> STEP_SUCCESS, incl. the "
            f"{seconds:g} s sleep)"
        )
    return {
        "title": TITLE,
        "method": (
            "execute_job(reconstructable(job)) of 16 one-step assets from one factory (Dagster "
            "runs one partition per run, so these stand in for 16 partitions of one asset); "
            "each step is one Pipes session whose external process sleeps and reports a "
            "materialization; multiprocess executor, forkserver start method preloading the job "
            "module (with dagster_pipes_ext and distributed) and Dagster's storage modules, "
            "max_concurrent=4; persistent local_temp instance; wall time of the whole run. "
            "Dask: all steps on the shared separate cluster (one worker, 4 threads)."
        ),
        "params": {
            "steps": fanout_job.PARTITIONS,
            "max_concurrent": fanout_job.MAX_CONCURRENT,
            "sleep_seconds": seconds,
            "sleep_only_lower_bound_seconds": ideal,
            "reps": reps,
            "instance": "local_temp",
        },
        "clients": results,
    }
