"""Scenario 1 — launch overhead of a trivial Pipes asset.

The external script opens Pipes and reports one materialization (``external/trivial.py``). The
same asset is materialized with ``PipesSubprocessClient``, ``PipesDaskClient`` on the embedded
``LocalCluster`` and ``PipesDaskClient`` on the shared separate ``dask scheduler`` + ``dask
worker``; each sample is the wall time of one whole ``materialize()`` call.
"""

from __future__ import annotations

from typing import Any

from benchmarks.assets import check_trivial, trivial_asset
from benchmarks.bench import Bench, client_results, dagster_instance, measure_interleaved
from benchmarks.common import PIPES_CLIENTS, SUBPROCESS
from benchmarks.printing import print_client_table, say
from benchmarks.stats import paired_ratio

TITLE = "1. Launch overhead (trivial Pipes asset, one materialize() per sample)"


def run(bench: Bench) -> dict[str, Any]:
    """Time the trivial asset per client, interleaved; return samples and summaries."""
    reps = bench.reps(default=20, quick=3)
    trivial = trivial_asset()
    clients = bench.clients(PIPES_CLIENTS)
    say(f"  {reps} reps per client, interleaved; 1 untimed warm-up run per client first")
    with dagster_instance(bench.instance_kind) as instance:

        def once(_name: str, client: Any) -> Any:
            return bench.materialize([trivial], client, instance)

        measured = measure_interleaved(clients, reps, once, check=check_trivial, warmup=once)
    results = client_results(measured)
    print_client_table(results)
    base = results.get(SUBPROCESS, {}).get("samples_seconds", [])
    for name, entry in results.items():
        if name != SUBPROCESS and base:
            entry["paired_ratio_to_subprocess"] = paired_ratio(entry["samples_seconds"], base)
    paired = ", ".join(
        f"{name} {entry['paired_ratio_to_subprocess']:.2f}x"
        for name, entry in results.items()
        if entry.get("paired_ratio_to_subprocess") is not None
    )
    if paired:
        say(f"  median of the per-rep ratios to subprocess (same rep, same machine): {paired}")
    return {
        "title": TITLE,
        "method": (
            "materialize([asset]) of one asset whose external script opens Pipes and reports "
            "one materialization; wall time of the whole call (time.perf_counter); clients "
            "interleaved with rotating order; 1 untimed warm-up per client; gc.collect() "
            "before each sample (untimed). paired_ratio_to_subprocess: the median of the "
            "per-rep ratios (sample i of a client over sample i of subprocess)."
        ),
        "params": {"reps": reps, "instance": bench.instance_kind},
        "clients": results,
    }
