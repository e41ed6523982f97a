"""Raw transport: message lines from the worker launcher to the reader, without Dagster.

A writer process (``external/transport_writer.py``) fills the session's message file with N
``report_custom_message`` lines. The real launcher tails the file on a Dask worker and publishes the
lines as scheduler events; the real ``PipesDaskMessageReader`` orders the batches and splits them
into lines. Dagster's Pipes handler is replaced by a counter, so what is left is the transport.

Two reader modes are timed:

- ``lines``: each line reaches the reader's per-message step (the figure the target refers to);
- ``parsed``: each line is also parsed with ``json.loads`` and handed to a no-op handler, as the
  reader does in a run (the JSON parse, not the transport, then sets the pace).

Time is from the task's submission to the last line handled, writer start-up included, on the
embedded cluster and on a separate ``dask scheduler`` + ``dask worker``.
"""

from __future__ import annotations

from typing import Any

from benchmarks.bench import Bench
from benchmarks.common import DASK_EMBEDDED, DASK_SEPARATE, command
from benchmarks.printing import fmt_rate, fmt_seconds, print_table, say
from benchmarks.reader_session import CountingHandler, run_session
from benchmarks.stats import interleave, summarize
from dagster_pipes_ext import PipesDaskClient
from dagster_pipes_ext.cluster import close_cached_clients, get_dask_client
from dagster_pipes_ext.message_reader import PipesDaskMessageReader
from dagster_pipes_ext_tests.support.cluster_procs import PlainCluster

TITLE = "Raw transport (worker launcher -> reader, without Dagster's handler)"

FULL_MESSAGES = 1_000_000
QUICK_MESSAGES = 200_000
TIMEOUT_SECONDS = 120.0


class _LineCountingReader(PipesDaskMessageReader):
    """The real reader, counting each line where it would parse it."""

    def _handle_line(self, line: str) -> None:
        self.message_count += 1


def _one_session(dask_client: Any, count: int, parse: bool) -> float:
    """Stream ``count`` lines through one session; return the seconds it took."""
    handler = CountingHandler()
    session = run_session(
        dask_client,
        "bench-transport",
        command("transport_writer.py", count),
        handler,
        timeout_seconds=TIMEOUT_SECONDS,
        max_batch_bytes=PipesDaskClient().max_batch_bytes,
        reader_class=PipesDaskMessageReader if parse else _LineCountingReader,
    )
    if session.outcome.get("returncode") != 0:
        raise RuntimeError(f"the writer failed: {session.outcome}")
    reader = session.reader
    got = handler.count if parse else reader.message_count
    if got != count or reader.delivery_error() is not None:
        raise RuntimeError(f"expected {count} messages, got {got} ({reader.delivery_error()})")
    return session.seconds


def run(bench: Bench) -> dict[str, Any]:
    """Time the raw transport on both cluster kinds and both reader modes."""
    reps = bench.reps(default=3, quick=2)
    count = QUICK_MESSAGES if bench.quick else FULL_MESSAGES
    cluster = PlainCluster.start(nthreads=4, name="bench-transport")
    results: dict[str, Any] = {"title": TITLE, "messages": count, "variants": {}}
    try:
        clients = {
            DASK_EMBEDDED: get_dask_client(
                None, connect_timeout_seconds=10, embedded_threads_per_worker=4
            ),
            DASK_SEPARATE: get_dask_client(
                cluster.address, connect_timeout_seconds=10, embedded_threads_per_worker=4
            ),
        }
        variants = [(kind, mode) for kind in clients for mode in ("lines", "parsed")]
        samples: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        for kind, mode in variants:  # warm-up: the launcher reaches each worker once
            _one_session(clients[kind], 1000, mode == "parsed")
        for _rep, (kind, mode) in interleave(reps, variants):
            samples[(kind, mode)].append(_one_session(clients[kind], count, mode == "parsed"))
    finally:
        close_cached_clients()  # before the scheduler goes, or its client tries to reconnect
        cluster.stop()
    rows = []
    for (kind, mode), values in samples.items():
        summary = summarize(values)
        rate = count / summary["median"]
        results["variants"][f"{kind}/{mode}"] = {
            "samples_seconds": values,
            "summary_seconds": summary,
            "messages_per_second_median": rate,
        }
        rows.append(
            [
                f"{kind} / {mode}",
                str(summary["n"]),
                fmt_seconds(summary["min"]),
                fmt_seconds(summary["median"]),
                fmt_rate(rate),
            ]
        )
    print_table(["cluster / reader mode", "n", "min", "median", "msg/s (median)"], rows)
    headline = results["variants"][f"{DASK_EMBEDDED}/lines"]
    results["samples_seconds"] = headline["samples_seconds"]
    results["summary_seconds"] = headline["summary_seconds"]
    results["messages_per_second_median"] = min(
        results["variants"][f"{kind}/lines"]["messages_per_second_median"] for kind in clients
    )
    results["note"] = (
        "messages_per_second_median is the slower cluster kind in 'lines' mode (to the reader's "
        "per-message step); 'parsed' adds json.loads per message and a no-op handler."
    )
    say(
        f"  figure for the target: {fmt_rate(results['messages_per_second_median'])} "
        f"({count:,} messages; {results['note']})"
    )
    return results
