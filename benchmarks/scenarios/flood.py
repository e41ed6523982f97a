"""Flood: memory stays bounded under 1 GiB of stdout, millions of log lines, one huge message.

A fresh separate ``dask scheduler`` + ``dask worker`` (``PlainCluster``) serves only this
scenario, so the scheduler, the worker (where the launcher runs; the command is its grandchild,
not counted) and this process (the orchestrator: it runs ``materialize`` and the reader) are
three distinct processes. Three workloads, each a whole ``materialize()`` of one asset:

* ``stdout``: ``external/flood_stdout.py`` writes 1 GiB of 128-byte lines to stdout;
* ``logs``: ``external/flood_logs.py`` sends N ``context.log.info`` lines (2,000,000 by default,
  ``--flood-log-lines``);
* ``message``: ``external/flood_big.py`` reports one materialization carrying 48 MiB of text
  metadata, a single Pipes message line (under ``max_message_bytes``, 64 MiB by default).

``PipesSubprocessClient`` runs the same workloads on the same instance, as the reference. Each
variant gets one small untimed warm-up run of each workload first.

Memory: before each run ``gc.collect()`` and ``malloc_trim(0)`` run here, on the scheduler and
on the worker, then the RSS of each process is read (base; trimmed, so that a run cannot reuse
unseen the free but resident pages an earlier run left); during the run a thread reads it
every 50 ms (psutil; peak), and the kernel's high-water mark (``VmHWM``, reset through
``/proc/<pid>/clear_refs`` before the run) is read after it; after the run the RSS is read
after ``gc.collect()`` (after) and again after ``malloc_trim(0)`` (after trim).
Growth = peak - base.

Delivery is counted, not assumed: stdout by the size and newline count of the step's captured
stdout file (a compute-log manager that writes the step's stdout to a file without mirroring
it to the terminal: Dagster's own would copy every byte back to this process's stdout through
a ``tail`` process), logs by counting the run's ``flood-log`` entries in the event log (SQL,
so 2,000,000 entries are not loaded into memory), the message by the length of the metadata
value Dagster recorded.

Instance: SQLite (``DagsterInstance.local_temp``; an ephemeral instance would keep every log
entry in memory), its storage under ``/dev/shm`` where there is one: Dagster writes each log
entry through a new SQLite engine, ~100 entries/s on this machine's disk and ~200-500/s on
tmpfs, whatever the client. Those pages are in no process's RSS. Dagster's console logger
stays at the benchmark's level (``WARNING``: nothing is printed per log line).

Two more variants separate the transport's memory from Dagster's:

* ``reader-only`` (logs, message): the real launcher and the real ``PipesDaskMessageReader``
  (JSON parse included) on the same cluster, Dagster's handler replaced by a counter, fed the
  very lines the Pipes scripts write (``external/flood_writer.py``);
* ``dagster-only`` (message): a plain asset returns the same materialization, no Pipes at all:
  what Dagster itself costs to record 48 MiB of metadata (it serializes the event three times
  and SQLite copies each).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from benchmarks.assets import pipes_asset
from benchmarks.bench import Bench, materialization_metadata
from benchmarks.common import DASK_SEPARATE, SUBPROCESS, command
from benchmarks.flood_instance import count_lines, count_logs, flood_instance
from benchmarks.flood_memory import Probe
from benchmarks.flood_printing import print_part
from benchmarks.flood_variants import (
    DAGSTER_ONLY,
    READER_ONLY,
    Workload,
    materialize_variant,
    pipes_variants,
    reader_variant,
    run_workload,
)
from benchmarks.printing import say
from dagster_pipes_ext_tests.support.cluster_procs import PlainCluster

TITLE = "Flood (1 GiB of stdout, 2,000,000 context.log lines, one 48 MiB message: memory)"

LINE_BYTES = 128
FULL_STDOUT_BYTES = 1 << 30
QUICK_STDOUT_BYTES = 64 << 20
# Dagster's own event-log writes run at ~200-480 lines/s here: 2,000,000 lines (the issue's
# count, `--flood-log-lines 2000000`) take 1-3 hours per client, so `make bench` runs 200,000.
FULL_LOG_LINES = 200_000
QUICK_LOG_LINES = 5_000
FULL_MESSAGE_BYTES = 48 << 20
QUICK_MESSAGE_BYTES = 16 << 20
# The untimed warm-up run of each workload, per client.
WARM_STDOUT_BYTES = 4 << 20
WARM_LOG_LINES = 500
WARM_MESSAGE_BYTES = 1 << 20
MESSAGE_ASSET = "flood_message"
METHOD = (
    "Fresh dask scheduler + dask worker; per workload and variant one untimed small "
    "warm-up run, then whole runs; RSS of scheduler, worker and this process: base after "
    "gc.collect() + malloc_trim(0) in each, peak sampled every 50 ms (psutil) and VmHWM "
    "after a reset, after (gc.collect()) and after trim (+ malloc_trim(0)); delivery "
    "counted in the captured stdout file, the event log (SQL) and the recorded metadata. "
    "'reader-only': the same lines through the launcher and the real reader (JSON parse "
    "included) without Dagster's handler; 'dagster-only': a plain asset returns the same "
    "materialization, without Pipes."
)

# Set from the command line by ``configure`` (``run.py`` calls it before ``run``).
_options: dict[str, Any] = {"log_lines": None, "workloads": None, "variants": None}
WORKLOADS = ("stdout", "message", "logs")
VARIANTS = (SUBPROCESS, DASK_SEPARATE, READER_ONLY, DAGSTER_ONLY)


def _names(value: str | None, known: Sequence[str], option: str) -> set[str] | None:
    if not value:
        return None
    names = {n.strip() for n in value.split(",") if n.strip()}
    unknown = sorted(names - set(known))
    if unknown:
        raise SystemExit(f"{option}: unknown {unknown}; choose from {','.join(known)}")
    return names


def configure(args: Any) -> None:
    """Take this scenario's options: ``--flood-log-lines``, ``--flood-workloads``, ``-variants``."""
    _options["log_lines"] = getattr(args, "flood_log_lines", None)
    _options["workloads"] = _names(
        getattr(args, "flood_workloads", None), WORKLOADS, "--flood-workloads"
    )
    _options["variants"] = _names(
        getattr(args, "flood_variants", None), VARIANTS, "--flood-variants"
    )


# -- workloads ----------------------------------------------------------------------------------


def _stdout_delivered(_result: Any, total: int, instance: Any) -> dict[str, Any]:
    """Bytes and lines in the run's captured stdout file (removed afterwards)."""
    expected = math.ceil(total / LINE_BYTES)
    path = instance.compute_log_manager.last_stdout_path
    size, lines = count_lines(path) if path and os.path.exists(path) else (0, 0)
    if path:
        with contextlib.suppress(OSError):
            os.remove(path)
    return {
        "expected": expected,
        "delivered": lines,
        "lost": expected - lines,
        "expected_bytes": total,
        "delivered_bytes": size,
        "lost_bytes": total - size,
    }


def _stdout_workload(
    bench: Bench, instance: Any, clients: Mapping[str, Any], total: int
) -> Workload:
    assets = {
        n: pipes_asset("flood_stdout", command("flood_stdout.py", n, LINE_BYTES))
        for n in (total, WARM_STDOUT_BYTES)
    }
    lines = math.ceil(total / LINE_BYTES)
    return Workload(
        key="stdout",
        description=f"{total:,} bytes of {LINE_BYTES}-byte lines on stdout ({lines:,} lines)",
        amount=total,
        warm_amount=WARM_STDOUT_BYTES,
        units=lines,
        unit_name="lines",
        variants=pipes_variants(
            bench,
            instance,
            clients,
            assets,
            lambda result, amount: _stdout_delivered(result, amount, instance),
        ),
    )


def _logs_workload(
    bench: Bench, instance: Any, clients: Mapping[str, Any], probe: Probe, count: int
) -> Workload:
    def delivered(result: Any, amount: int) -> dict[str, Any]:
        got = count_logs(instance, result.run_id, "flood-log ")
        return {"expected": amount, "delivered": got, "lost": amount - got}

    assets = {
        n: pipes_asset("flood_logs", command("flood_logs.py", n)) for n in (count, WARM_LOG_LINES)
    }
    return Workload(
        key="logs",
        description=f"{count:,} context.log.info lines",
        amount=count,
        warm_amount=WARM_LOG_LINES,
        units=count,
        unit_name="lines",
        variants=[
            *pipes_variants(bench, instance, clients, assets, delivered),
            reader_variant(probe, "logs", clients[DASK_SEPARATE].max_batch_bytes),
        ],
    )


def _message_asset(size: int) -> Any:
    """The same materialization as ``flood_big.py``'s, from a plain asset (no Pipes)."""
    from dagster import MaterializeResult, MetadataValue, asset

    @asset(name=MESSAGE_ASSET)
    def _asset():  # no annotations: Dagster would read them as the output type
        return MaterializeResult(
            metadata={"flood/blob": MetadataValue.text("x" * size), "flood/blob_bytes": size}
        )

    return _asset


def _message_workload(
    bench: Bench, instance: Any, clients: Mapping[str, Any], probe: Probe, size: int
) -> Workload:
    def delivered(result: Any, amount: int) -> dict[str, Any]:
        try:
            blob = materialization_metadata(result, MESSAGE_ASSET).get("flood/blob")
        except RuntimeError:
            blob = None
        got = int(isinstance(blob, str) and len(blob) == amount)
        return {"expected": 1, "delivered": got, "lost": 1 - got}

    sizes = (size, WARM_MESSAGE_BYTES)
    assets = {n: pipes_asset(MESSAGE_ASSET, command("flood_big.py", n)) for n in sizes}
    plain = {n: _message_asset(n) for n in sizes}
    return Workload(
        key="message",
        description=f"one report_asset_materialization with {size:,} bytes of text metadata",
        amount=size,
        warm_amount=WARM_MESSAGE_BYTES,
        units=size,
        unit_name="bytes",
        variants=[
            *pipes_variants(bench, instance, clients, assets, delivered),
            reader_variant(probe, "message", clients[DASK_SEPARATE].max_batch_bytes),
            materialize_variant(
                DAGSTER_ONLY, bench, instance, clients[SUBPROCESS], plain, delivered
            ),
        ],
    )


# -- the scenario -------------------------------------------------------------------------------


def run(bench: Bench) -> dict[str, Any]:
    """Run the three floods per client on a fresh cluster; report memory, time and delivery."""
    from dagster import PipesSubprocessClient

    from dagster_pipes_ext import PipesDaskClient

    reps = bench.reps(default=1, quick=1)
    stdout_bytes = QUICK_STDOUT_BYTES if bench.quick else FULL_STDOUT_BYTES
    message_bytes = QUICK_MESSAGE_BYTES if bench.quick else FULL_MESSAGE_BYTES
    log_lines = _options["log_lines"] or (QUICK_LOG_LINES if bench.quick else FULL_LOG_LINES)
    say(
        f"  fresh scheduler + 1 worker; stdout {stdout_bytes:,} bytes, message "
        f"{message_bytes:,} bytes, logs {log_lines:,} lines; 1 small untimed warm-up run of "
        "each workload per client; RSS sampled every 50 ms"
    )
    cluster = PlainCluster.start(nthreads=4, name="bench-flood")
    results: dict[str, Any] = {"title": TITLE}
    try:
        dask = PipesDaskClient(scheduler_address=cluster.address)
        clients = {SUBPROCESS: PipesSubprocessClient(), DASK_SEPARATE: dask}
        dask_client = dask.get_dask_client()
        probe = Probe.of_cluster(cluster, dask_client)
        with flood_instance() as (instance, home):
            say(f"  (instance storage in {home})")
            builders: dict[str, Callable[[], Workload]] = {
                "stdout": lambda: _stdout_workload(bench, instance, clients, stdout_bytes),
                "message": lambda: _message_workload(
                    bench, instance, clients, probe, message_bytes
                ),
                "logs": lambda: _logs_workload(bench, instance, clients, probe, log_lines),
            }
            _run_workloads(builders, probe, reps, results)
        dask_client.close()  # before the scheduler goes: no reconnection attempts
    finally:
        cluster.stop()
    results.update(
        stdout_bytes=stdout_bytes,
        line_bytes=LINE_BYTES,
        message_bytes=message_bytes,
        log_lines=log_lines,
        reps=reps,
        method=METHOD,
        params={"instance": "local_temp (SQLite; storage on /dev/shm where available)"},
    )
    return results


def _run_workloads(
    builders: Mapping[str, Callable[[], Workload]],
    probe: Probe,
    reps: int,
    results: dict[str, Any],
) -> None:
    """Build and run the chosen workloads (and variants), printing and keeping each's part."""
    chosen = _options["workloads"] or set(WORKLOADS)
    for key, build in builders.items():
        if key not in chosen:
            continue
        work = build()
        if _options["variants"] is not None:
            work.variants = [v for v in work.variants if v.name in _options["variants"]]
        try:
            part = run_workload(work, probe, reps)
        except Exception as exc:  # keep the other workloads
            say(f"  {work.key} FAILED: {type(exc).__name__}: {exc}")
            results[work.key] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        print_part(part, work.unit_name)
        results[work.key] = part
