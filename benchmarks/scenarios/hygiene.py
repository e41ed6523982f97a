"""Scenario 5 — scheduler hygiene: many runs against one long-lived scheduler.

A fresh separate ``dask scheduler`` + ``dask worker`` serves only this scenario.

* Phase A (the target): after 10 warm-up runs of the trivial asset, the scheduler's RSS
  (psutil on its PID, after a ``gc.collect()`` on the scheduler) and the topics it holds are
  recorded; then 200 more trivial runs in this process (one cached scheduler connection, as
  consecutive runs in one Dagster process share it), recorded again, with a checkpoint every
  50 runs. A last reading after ``malloc_trim(0)`` tells allocator slack from memory still
  referenced.
* Phase B (extra): 30 runs that each open and close their own scheduler connection, as runs in
  separate Dagster run/step processes do.

Topics are the keys of the scheduler's event broker (``scheduler._broker._topics``): the Pipes
sessions' own start with ``dagster-pipes/``; the others are Dask's (``all``, ``scheduler``,
the worker's address, and one ``Client-<id>`` per client that ever connected: Dask empties a
departed client's topic after ``distributed.scheduler.events-cleanup-delay`` but never removes
it).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.assets import trivial_asset
from benchmarks.bench import Bench, dagster_instance
from benchmarks.common import STOP
from benchmarks.printing import fmt_seconds, print_table, say
from benchmarks.scheduler_probe import read_scheduler
from benchmarks.stats import percentile
from dagster_pipes_ext_tests.support.cluster_procs import PlainCluster

TITLE = "5. Scheduler hygiene (runs against one long-lived scheduler)"
WARMUP_RUNS = 10


def _print_readings(readings: list[dict[str, Any]], start: dict[str, Any]) -> None:
    rows = [
        [
            r["label"],
            str(r["runs"]),
            f"{r['rss_bytes'] / 2**20:.1f} MiB",
            f"{(r['rss_bytes'] - start['rss_bytes']) / 1e6:+.2f} MB",
            str(r["topics_pipes"]),
            str(r["topics_total"]),
            str(r["retained_events_total"]),
            str(r["events_extension_pipes"]),
            str(r["tasks"]),
            f"{r['batched_log_to_workers']}/{r['batched_log_to_clients']}",
            str(r["transition_log"]),
            str(r["spans"]),
        ]
        for r in readings
    ]
    print_table(
        [
            "reading",
            "runs",
            "scheduler RSS",
            "growth",
            "pipes topics",
            "all topics",
            "retained events",
            "pipes named events",
            "tasks",
            "batched log w/c",
            "transitions",
            "spans",
        ],
        rows,
    )


def run(bench: Bench) -> dict[str, Any]:
    """Run the trivial asset many times on a fresh scheduler; report RSS and topics."""
    from dagster_pipes_ext import PipesDaskClient

    runs = bench.reps(default=200, quick=20)
    reconnect_runs = 5 if bench.quick else 30
    checkpoint_every = max(1, runs // 4)
    trivial = trivial_asset()
    say(
        f"  fresh scheduler + 1 worker; phase A: {WARMUP_RUNS} warm-up runs, then {runs} runs "
        f"on one cached connection; phase B: {reconnect_runs} runs with a new connection each"
    )
    cluster = PlainCluster.start(nthreads=4, name="bench-hygiene")
    readings: list[dict[str, Any]] = []
    reconnect_readings: list[dict[str, Any]] = []
    durations: list[float] = []
    pid = cluster.scheduler.pid
    try:
        client = PipesDaskClient(scheduler_address=cluster.address)
        dask_client = client.get_dask_client()
        with dagster_instance(bench.instance_kind) as instance:
            for _ in range(WARMUP_RUNS):
                STOP.check()
                bench.materialize([trivial], client, instance)
            readings.append(read_scheduler(dask_client, pid, "A: start", 0))
            for i in range(1, runs + 1):
                STOP.check()
                started = time.perf_counter()
                bench.materialize([trivial], client, instance)
                durations.append(time.perf_counter() - started)
                if i % checkpoint_every == 0 or i == runs:
                    readings.append(read_scheduler(dask_client, pid, f"A: after {i}", i))
                    last = readings[-1]
                    say(
                        f"    {i}/{runs} runs: scheduler RSS {last['rss_bytes'] / 2**20:.1f} MiB, "
                        f"pipes topics {last['topics_pipes']}, all topics {last['topics_total']}"
                    )
            readings.append(read_scheduler(dask_client, pid, "A: end, trimmed", runs, trim=True))

            # Phase B: every run on its own connection, closed afterwards.
            reconnect_readings.append(read_scheduler(dask_client, pid, "B: start", 0))
            for _ in range(reconnect_runs):
                STOP.check()
                client.get_dask_client().close()  # the next run connects anew
                bench.materialize([trivial], client, instance)
            reconnect_readings.append(
                read_scheduler(
                    client.get_dask_client(), pid, f"B: after {reconnect_runs}", reconnect_runs
                )
            )
        client.get_dask_client().close()  # before the scheduler goes: no reconnection attempts
    finally:
        cluster.stop()
    start, end, trimmed = readings[0], readings[-2], readings[-1]
    growth = end["rss_bytes"] - start["rss_bytes"]
    _print_readings(readings, start)
    retained = end["retained_events_non_pipes"]
    say(
        "  Dask's own topics at the end of A (retained events; each topic is capped at "
        "distributed.admin.low-level-log-length events): "
        + (", ".join(f"{k} ({v})" for k, v in sorted(retained.items())) or "-")
    )
    say(
        "  batched log w/c = payloads Dask keeps of what the scheduler sent to workers/clients "
        "(BatchedSend.recent_message_log, up to distributed.admin.low-level-log-length = "
        "1000 per connection; compute-task payloads hold each task's spec and launcher); "
        "transitions = scheduler.transition_log (bounded); spans = Dask's spans extension "
        "(one per submitted computation, never pruned)"
    )
    say(
        f"  phase A run time: median {fmt_seconds(percentile(durations, 50))}, "
        f"total {sum(durations):.1f} s"
    )
    b_start, b_end = reconnect_readings
    b_growth = (b_end["rss_bytes"] - b_start["rss_bytes"]) / 1e6
    say(
        f"  phase B ({reconnect_runs} runs, new connection each): pipes topics "
        f"{b_start['topics_pipes']} -> {b_end['topics_pipes']}, all topics "
        f"{b_start['topics_total']} -> {b_end['topics_total']} (Dask keeps one Client-<id> "
        f"topic per connection), scheduler RSS {b_growth:+.2f} MB"
    )
    return {
        "title": TITLE,
        "method": (
            f"Fresh scheduler + 1 worker; {WARMUP_RUNS} warm-up trivial runs, then {runs} "
            "trivial runs on one cached connection (phase A), then "
            f"{reconnect_runs} runs each on a new connection (phase B); scheduler RSS via psutil "
            "after gc.collect() on the scheduler; topics = keys of scheduler._broker._topics; "
            "the last phase-A reading also after malloc_trim(0)."
        ),
        "params": {
            "runs": runs,
            "warmup_runs": WARMUP_RUNS,
            "reconnect_runs": reconnect_runs,
            "instance": bench.instance_kind,
        },
        "readings": readings,
        "reconnect_readings": reconnect_readings,
        "rss_start_bytes": start["rss_bytes"],
        "rss_end_bytes": end["rss_bytes"],
        "rss_growth_bytes": growth,
        "rss_growth_after_trim_bytes": trimmed["rss_bytes"] - start["rss_bytes"],
        "pipes_topics_start": start["topics_pipes"],
        "pipes_topics_end": end["topics_pipes"],
        "topics_total_start": start["topics_total"],
        "topics_total_end": end["topics_total"],
        "reconnect_pipes_topics_end": b_end["topics_pipes"],
        "reconnect_topics_total_growth": b_end["topics_total"] - b_start["topics_total"],
        "reconnect_rss_growth_bytes": b_end["rss_bytes"] - b_start["rss_bytes"],
        "run_seconds": durations,
    }
