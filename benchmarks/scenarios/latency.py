"""Scenario 3 — latency from a message written by the external process to its handling.

The external script (``external/latency.py``) sends N ``context.log.info`` messages on a fixed
10 ms schedule (paced, so the figure is not queueing behind a flood); each message carries
``time.time()`` taken just before it is written. Dagster's Pipes handler turns each into a
Python log record whose ``created`` time becomes the event-log entry's ``timestamp``: that is
the moment the Dagster process handled the message (before the event is stored). Latency =
``entry.timestamp - sent``; same host, same clock.
"""

from __future__ import annotations

from typing import Any

from benchmarks.assets import pipes_asset, trivial_asset
from benchmarks.bench import Bench, dagster_instance, measure_interleaved, user_logs
from benchmarks.common import CLIENT_LABELS, PIPES_CLIENTS, SUBPROCESS, command
from benchmarks.printing import fmt_ratio, print_table, say
from benchmarks.stats import percentile, ratio, summarize

TITLE = "3. Latency (external write -> handled in the Dagster process)"
PREFIX = "bench-latency "


def latencies_of(instance: Any, run_id: str) -> list[float]:
    """Handling time minus send time of every ``bench-latency`` message of a run, in order."""
    out: list[tuple[int, float]] = []
    for entry in user_logs(instance, run_id, PREFIX):
        _, index, sent = entry.user_message.split(" ", 2)
        out.append((int(index), entry.timestamp - float(sent)))
    return [lat for _, lat in sorted(out)]


def run(bench: Bench) -> dict[str, Any]:
    """Measure per-message latency per client; report p50/p90/max over all runs' messages."""
    count = 50 if bench.quick else 300
    interval = 0.01
    reps = bench.reps(default=2, quick=1)
    latency = pipes_asset("bench_latency", command("latency.py", count, interval))
    warm = trivial_asset()
    clients = bench.clients(PIPES_CLIENTS)
    say(
        f"  {count} messages every {interval * 1000:g} ms per run, {reps} runs per client, "
        "interleaved; 1 untimed warm-up run per client first"
    )
    with dagster_instance(bench.instance_kind) as instance:

        def check(name: str, result: Any) -> dict[str, Any]:
            lats = latencies_of(instance, result.run_id)
            if len(lats) != count:
                raise RuntimeError(f"{name}: run {result.run_id} has {len(lats)} of {count}")
            return {"run_id": result.run_id, "latencies_seconds": lats}

        measured = measure_interleaved(
            clients,
            reps,
            lambda _n, c: bench.materialize([latency], c, instance),
            check=check,
            warmup=lambda _n, c: bench.materialize([warm], c, instance),
        )
    results: dict[str, Any] = {}
    rows = []
    base_lats = [x for f in measured[SUBPROCESS]["facts"] for x in f["latencies_seconds"]]
    base_p50 = percentile(base_lats, 50)
    for name, data in measured.items():
        lats = [x for facts in data["facts"] for x in facts["latencies_seconds"]]
        summary = summarize(lats)
        p50_ratio = ratio(summary["median"], base_p50)
        results[name] = {
            "client": CLIENT_LABELS[name],
            "latencies_seconds": lats,
            "summary_seconds": summary,
            "per_run_p50_seconds": [percentile(f["latencies_seconds"], 50) for f in data["facts"]],
            "run_seconds": data["samples_seconds"],
            "ratio_p50_to_subprocess": p50_ratio,
        }
        rows.append(
            [
                name,
                str(summary["n"]),
                f"{summary['min'] * 1000:.2f} ms",
                f"{summary['median'] * 1000:.2f} ms",
                f"{summary['p90'] * 1000:.2f} ms",
                f"{summary['max'] * 1000:.2f} ms",
                fmt_ratio(p50_ratio),
            ]
        )
    print_table(["client", "messages", "min", "p50", "p90", "max", "p50 vs subprocess"], rows)
    return {
        "title": TITLE,
        "method": (
            "External process logs N messages on a fixed 10 ms schedule, each carrying "
            "time.time() just before the write; latency = EventLogEntry.timestamp (the log "
            "record's creation in Dagster's Pipes handler) - sent time. Percentiles over all "
            "messages of all runs of a client."
        ),
        "params": {
            "messages_per_run": count,
            "interval_seconds": interval,
            "reps": reps,
            "instance": bench.instance_kind,
        },
        "clients": results,
    }
