"""The flood scenario's variants, and how a workload runs them with its memory measured.

A variant is a Pipes client's ``materialize()``, the reader alone (``reader-only``: the real
launcher and reader, Dagster's handler replaced by a counter) or Dagster alone
(``dagster-only``); :func:`run_workload` warms each up, then runs them interleaved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dagster import materialize

from benchmarks.bench import Bench, client_results
from benchmarks.common import CLIENT_LABELS, DASK_SEPARATE, STOP, command
from benchmarks.flood_memory import (
    ORCHESTRATOR,
    PROCESSES,
    Probe,
    RssSampler,
    rss_readings,
    worst_readings,
)
from benchmarks.printing import fmt_seconds, say
from benchmarks.reader_session import CountingHandler, run_session
from benchmarks.stats import interleave

READER_ONLY = "reader-only"
DAGSTER_ONLY = "dagster-only"
READER_ONLY_TIMEOUT_SECONDS = 600.0
LABELS = {
    **CLIENT_LABELS,
    READER_ONLY: "launcher -> PipesDaskMessageReader, Dagster's handler replaced by a counter",
    DAGSTER_ONLY: "Dagster alone: a plain asset returns the same materialization (no Pipes)",
}


@dataclass
class Variant:
    """One way of running a workload: a Pipes client's ``materialize()``, the reader, Dagster.

    ``run(amount)`` is one timed run at ``amount`` (the workload's size, or its warm-up's);
    ``check(value, amount)`` then says, untimed, what arrived: ``expected``, ``delivered``,
    ``lost``, ``success`` (and more). ``processes`` are those whose memory is measured.
    """

    name: str
    processes: tuple[str, ...]
    run: Callable[[int], Any]
    check: Callable[[Any, int], dict[str, Any]]


@dataclass
class Workload:
    """One flood: its size (and its warm-up's), what the rate counts, its variants."""

    key: str
    description: str
    amount: int
    warm_amount: int
    units: int
    unit_name: str
    variants: list[Variant]


def _materialize(bench: Bench, asset: Any, client: Any, instance: Any) -> Any:
    """``materialize([asset])`` as :meth:`Bench.materialize` does, but a failed run returns."""
    return materialize(
        [asset],
        resources={"pipes": client},
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": bench.console_log_level}}}},
        raise_on_error=False,
    )


def _run_error(result: Any) -> str:
    """The first step failure of a failed run, briefly."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            if error is not None:
                return error.message.strip().splitlines()[0][:200]
    return "the run failed"


def materialize_variant(
    name: str,
    bench: Bench,
    instance: Any,
    client: Any,
    assets: Mapping[int, Any],
    delivered: Callable[[Any, int], dict[str, Any]],
) -> Variant:
    """A variant that materializes ``assets[amount]`` with ``client`` as the ``pipes`` resource."""

    def check(result: Any, amount: int) -> dict[str, Any]:
        facts = delivered(result, amount)
        facts.update(run_id=result.run_id, success=bool(result.success))
        if not result.success:
            facts["error"] = _run_error(result)
        return facts

    return Variant(
        name=name,
        processes=PROCESSES if name == DASK_SEPARATE else (ORCHESTRATOR,),
        run=lambda amount: _materialize(bench, assets[amount], client, instance),
        check=check,
    )


def pipes_variants(
    bench: Bench,
    instance: Any,
    clients: Mapping[str, Any],
    assets: Mapping[int, Any],
    delivered: Callable[[Any, int], dict[str, Any]],
) -> list[Variant]:
    """One :func:`materialize_variant` per Pipes client."""
    return [
        materialize_variant(name, bench, instance, client, assets, delivered)
        for name, client in clients.items()
    ]


# -- the reader alone ---------------------------------------------------------------------------


def reader_variant(probe: Probe, mode: str, max_batch_bytes: int) -> Variant:
    """``reader-only``: ``flood_writer.py mode`` through the real launcher and reader."""
    return Variant(
        name=READER_ONLY,
        processes=PROCESSES,
        run=lambda amount: _reader_session(probe.dask_client, mode, amount, max_batch_bytes),
        check=lambda facts, _amount: dict(facts),
    )


class _BlobCountingHandler(CountingHandler):
    """Stands in for Dagster's Pipes message handler: counts messages, measures the blob."""

    def __init__(self) -> None:
        super().__init__()
        self.blob_bytes: int | None = None

    def handle_message(self, message: Any) -> None:
        self.count += 1
        if message.get("method") == "report_asset_materialization":
            self.blob_bytes = len(message["params"]["metadata"]["flood/blob"]["raw_value"])


def _reader_session(
    dask_client: Any, mode: str, amount: int, max_batch_bytes: int
) -> dict[str, Any]:
    """``flood_writer.py mode amount`` through the real launcher and reader, to a counter."""
    handler = _BlobCountingHandler()
    session = run_session(
        dask_client,
        "bench-flood",
        command("flood_writer.py", mode, amount),
        handler,
        timeout_seconds=READER_ONLY_TIMEOUT_SECONDS,
        max_batch_bytes=max_batch_bytes,
    )
    error = session.reader.delivery_error()
    if mode == "message":
        expected, got = 1, int(handler.count == 1 and handler.blob_bytes == amount)
    else:
        expected, got = amount, handler.count
    return {
        "expected": expected,
        "delivered": got,
        "lost": expected - got,
        "success": session.outcome.get("returncode") == 0 and error is None,
        "error": None if error is None else str(error),
    }


# -- a workload ---------------------------------------------------------------------------------


def run_workload(work: Workload, probe: Probe, reps: int) -> dict[str, Any]:
    """Warm up, then run every variant ``reps`` times (interleaved), measuring memory."""
    say(f"  {work.key}: {work.description}; {reps} run(s) per variant")
    for variant in work.variants:  # untimed, small: one-time costs stay out of the figures
        STOP.check()
        variant.check(variant.run(work.warm_amount), work.warm_amount)
    names = [v.name for v in work.variants]
    by_name = {v.name: v for v in work.variants}
    measured: dict[str, dict[str, Any]] = {
        n: {"samples_seconds": [], "facts": [], "invalid": []} for n in names
    }
    for _rep, name in interleave(reps, names):
        STOP.check()
        seconds, facts = _measured_run(by_name[name], work.amount, probe)
        measured[name]["samples_seconds"].append(seconds)
        measured[name]["facts"].append(facts)
        failed = "" if facts["success"] else f" (run FAILED: {facts.get('error')})"
        say(
            f"    {name}: {fmt_seconds(seconds)}, delivered {facts['delivered']:,} of "
            f"{facts['expected']:,}{failed}"
        )
    results = client_results(measured, messages=work.units)
    for name, entry in results.items():
        runs = measured[name]["facts"]
        entry["client"] = LABELS.get(name, name)
        entry["rss"] = worst_readings(runs)
        entry["lost"] = max(r["lost"] for r in runs)
        entry["failed_runs"] = sum(1 for r in runs if not r["success"])
    return {"description": work.description, "units": work.units, "clients": results}


def _measured_run(variant: Variant, amount: int, probe: Probe) -> tuple[float, dict[str, Any]]:
    """One timed run of ``variant``; its seconds, and what arrived with the RSS readings."""
    base = probe.settle(variant.processes, trim=True)
    with RssSampler({n: probe.pids[n] for n in variant.processes}) as sampler:
        started = time.perf_counter()
        value = variant.run(amount)
        seconds = time.perf_counter() - started
    STOP.check()
    facts = variant.check(value, amount)
    del value
    after = probe.settle(variant.processes, trim=False)
    trimmed = probe.settle(variant.processes, trim=True)
    facts["rss"] = rss_readings(variant.processes, base, sampler, after, trimmed)
    facts["samples"] = sampler.samples
    return seconds, facts
