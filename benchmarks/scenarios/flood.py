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
import ctypes
import gc
import logging
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
from dagster import DagsterInstance, materialize
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._utils import ensure_file, touch_file

from benchmarks.assets import pipes_asset
from benchmarks.bench import Bench, client_results, materialization_metadata
from benchmarks.common import CLIENT_LABELS, DASK_SEPARATE, STOP, SUBPROCESS, command
from benchmarks.printing import fmt_rate, fmt_ratio, fmt_seconds, print_table, say
from benchmarks.scheduler_probe import scheduler_state
from benchmarks.stats import interleave
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
SAMPLE_SECONDS = 0.05
READER_ONLY = "reader-only"
DAGSTER_ONLY = "dagster-only"
READER_ONLY_TIMEOUT_SECONDS = 600.0
MESSAGE_ASSET = "flood_message"

ORCHESTRATOR, SCHEDULER, WORKER = "orchestrator", "scheduler", "worker"
PROCESSES = (ORCHESTRATOR, SCHEDULER, WORKER)
LABELS = {
    **CLIENT_LABELS,
    READER_ONLY: "launcher -> PipesDaskMessageReader, Dagster's handler replaced by a counter",
    DAGSTER_ONLY: "Dagster alone: a plain asset returns the same materialization (no Pipes)",
}

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
    """Take this scenario's options (``--flood-log-lines``, ``--flood-workloads``, ``-variants``)."""
    _options["log_lines"] = getattr(args, "flood_log_lines", None)
    _options["workloads"] = _names(
        getattr(args, "flood_workloads", None), WORKLOADS, "--flood-workloads"
    )
    _options["variants"] = _names(
        getattr(args, "flood_variants", None), VARIANTS, "--flood-variants"
    )


# -- the step's captured stdout -----------------------------------------------------------------


class StdoutFileComputeLogManager(LocalComputeLogManager):
    """Captures the step's stdout to a file, as ``LocalComputeLogManager`` does, without a mirror.

    Dagster's manager also starts a ``tail`` process that copies the file back to this
    process's stdout (1 GiB on the terminal, and a third party reading the file); this one only
    redirects file descriptor 1 to the file for the step, so what reached the step's stdout,
    through ``sys.stdout`` (``PipesDaskMessageReader``) or the inherited descriptor
    (``PipesSubprocessClient``'s child), can be counted afterwards. Stderr is not captured.
    """

    last_stdout_path: str | None = None

    @classmethod
    def from_config_value(
        cls, inst_data: Any, config_value: Mapping[str, Any]
    ) -> StdoutFileComputeLogManager:
        """Build it from the instance's ``compute_logs`` config."""
        return cls(inst_data=inst_data, **config_value)

    @contextlib.contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Iterator[CapturedLogContext]:
        """Redirect stdout to the step's ``.out`` file while the step runs."""
        path = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        ensure_file(path)
        self.last_stdout_path = path
        with redirect_to_file(sys.stdout, path):
            yield CapturedLogContext(log_key)
        touch_file(self.complete_artifact_path(log_key))


@contextlib.contextmanager
def flood_instance() -> Iterator[tuple[Any, str]]:
    """A ``local_temp`` instance (storage on tmpfs where there is one) capturing stdout to files.

    Yields the instance and the directory of its storage.
    """
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with (
        tempfile.TemporaryDirectory(prefix="pipes-bench-flood-home-", dir=shm) as home,
        tempfile.TemporaryDirectory(prefix="pipes-bench-flood-stdout-") as captured,
    ):
        overrides = {
            "compute_logs": {
                "module": __name__,
                "class": StdoutFileComputeLogManager.__name__,
                "config": {"base_dir": captured},
            }
        }
        with DagsterInstance.local_temp(home, overrides=overrides) as instance:
            yield instance, home


def _count_lines(path: str) -> tuple[int, int]:
    """Bytes and newlines in a file, read in 8 MiB pieces."""
    size = lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            size += len(chunk)
            lines += chunk.count(b"\n")
    return size, lines


def _count_logs(instance: Any, run_id: str, prefix: str) -> int:
    """The run's plain log entries whose message starts with ``prefix``, counted in SQL."""
    import sqlalchemy as db

    query = db.text(
        "SELECT COUNT(*) FROM event_logs WHERE run_id = :run_id "
        "AND dagster_event_type IS NULL AND event LIKE :pattern"
    )
    pattern = f'%"user_message": "{prefix}%'
    with instance.event_log_storage.run_connection(run_id) as conn:
        return int(conn.execute(query, {"run_id": run_id, "pattern": pattern}).scalar() or 0)


# -- memory -------------------------------------------------------------------------------------


def _hwm_bytes(pid: int) -> int | None:
    """The kernel's peak RSS (``VmHWM``) of ``pid``, or ``None`` where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (``5`` to ``/proc/<pid>/clear_refs``); whether it did."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Reads the RSS of some processes every :data:`SAMPLE_SECONDS` in a thread; keeps the peak.

    Entering resets each process's kernel high-water mark and takes a first sample; leaving
    takes a last one and reads the high-water marks.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.hwm: dict[str, int | None] = dict.fromkeys(pids)
        self.samples = 0
        self._hwm_reset = {name: False for name in pids}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="flood-rss")

    def __enter__(self) -> RssSampler:
        for name, proc in self._procs.items():
            self._hwm_reset[name] = _reset_hwm(proc.pid)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self._sample()
        for name, proc in self._procs.items():
            self.hwm[name] = _hwm_bytes(proc.pid) if self._hwm_reset[name] else None

    def _run(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            self._sample()

    def _sample(self) -> None:
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                rss = proc.memory_info().rss
                if rss > self.peak[name]:
                    self.peak[name] = rss
        self.samples += 1


@dataclass
class Probe:
    """The flood cluster's processes and the connection that collects garbage on them."""

    dask_client: Any
    pids: dict[str, int]
    worker_address: str

    def settle(self, names: Sequence[str], *, trim: bool) -> dict[str, int]:
        """``gc.collect()`` (and ``malloc_trim(0)``) in each named process, then each one's RSS.

        Trimming hands the allocator's free pages back to the kernel, so that a run's peak is
        measured from what is really in use: otherwise a run reuses, unseen, the free but
        resident memory an earlier run left (a measurement would depend on the order).
        ``scheduler_probe.scheduler_state`` travels by value; on the worker it only collects
        and trims.
        """
        gc.collect()
        if trim:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
        if SCHEDULER in names:
            self.dask_client.run_on_scheduler(scheduler_state, collect=True, trim=trim)
        if WORKER in names:
            self.dask_client.run(
                scheduler_state, collect=True, trim=trim, workers=[self.worker_address]
            )
        return {name: psutil.Process(self.pids[name]).memory_info().rss for name in names}


def _readings(
    names: Sequence[str],
    base: Mapping[str, int],
    sampler: RssSampler,
    after: Mapping[str, int],
    trimmed: Mapping[str, int],
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        hwm = sampler.hwm.get(name)
        peak = max(sampler.peak[name], base[name])
        out[name] = {
            "base_bytes": base[name],
            "peak_bytes": peak,
            "after_bytes": after[name],
            "growth_bytes": peak - base[name],
            "hwm_growth_bytes": None if hwm is None else hwm - base[name],
            "after_growth_bytes": after[name] - base[name],
            "after_trim_growth_bytes": trimmed[name] - base[name],
        }
    return out


# -- variants and workloads ---------------------------------------------------------------------


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


def _materialize_variant(
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


def _reader_variant(probe: Probe, mode: str, max_batch_bytes: int) -> Variant:
    return Variant(
        name=READER_ONLY,
        processes=PROCESSES,
        run=lambda amount: _reader_session(probe.dask_client, mode, amount, max_batch_bytes),
        check=lambda facts, _amount: dict(facts),
    )


def _pipes_variants(
    bench: Bench,
    instance: Any,
    clients: Mapping[str, Any],
    assets: Mapping[int, Any],
    delivered: Callable[[Any, int], dict[str, Any]],
) -> list[Variant]:
    return [
        _materialize_variant(name, bench, instance, client, assets, delivered)
        for name, client in clients.items()
    ]


def _stdout_delivered(_result: Any, total: int, instance: Any) -> dict[str, Any]:
    """Bytes and lines in the run's captured stdout file (removed afterwards)."""
    expected = math.ceil(total / LINE_BYTES)
    path = instance.compute_log_manager.last_stdout_path
    size, lines = _count_lines(path) if path and os.path.exists(path) else (0, 0)
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
        variants=_pipes_variants(
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
        got = _count_logs(instance, result.run_id, "flood-log ")
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
            *_pipes_variants(bench, instance, clients, assets, delivered),
            _reader_variant(probe, "logs", clients[DASK_SEPARATE].max_batch_bytes),
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
            *_pipes_variants(bench, instance, clients, assets, delivered),
            _reader_variant(probe, "message", clients[DASK_SEPARATE].max_batch_bytes),
            _materialize_variant(
                DAGSTER_ONLY, bench, instance, clients[SUBPROCESS], plain, delivered
            ),
        ],
    )


def _run_workload(work: Workload, probe: Probe, reps: int) -> dict[str, Any]:
    """Warm up, then run every variant ``reps`` times (interleaved), measuring memory."""
    if _options["variants"] is not None:
        work.variants = [v for v in work.variants if v.name in _options["variants"]]
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
        variant = by_name[name]
        base = probe.settle(variant.processes, trim=True)
        with RssSampler({n: probe.pids[n] for n in variant.processes}) as sampler:
            started = time.perf_counter()
            value = variant.run(work.amount)
            seconds = time.perf_counter() - started
        STOP.check()
        facts = variant.check(value, work.amount)
        del value
        after = probe.settle(variant.processes, trim=False)
        trimmed = probe.settle(variant.processes, trim=True)
        facts["rss"] = _readings(variant.processes, base, sampler, after, trimmed)
        facts["samples"] = sampler.samples
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
        entry["rss"] = _worst(runs)
        entry["lost"] = max(r["lost"] for r in runs)
        entry["failed_runs"] = sum(1 for r in runs if not r["success"])
    return {"description": work.description, "units": work.units, "clients": results}


def _worst(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per process, the reading of the run with the largest growth; the largest after-growth."""
    out: dict[str, dict[str, Any]] = {}
    for name in runs[0]["rss"]:
        worst = max(runs, key=lambda r: r["rss"][name]["growth_bytes"])["rss"][name]
        out[name] = {
            **worst,
            "after_growth_bytes": max(r["rss"][name]["after_growth_bytes"] for r in runs),
        }
    return out


# -- the reader alone ---------------------------------------------------------------------------


class _CountingHandler:
    """Stands in for Dagster's Pipes message handler: counts messages, measures the blob."""

    def __init__(self) -> None:
        self.count = 0
        self.blob_bytes: int | None = None

    def handle_message(self, message: Any) -> None:
        self.count += 1
        if message.get("method") == "report_asset_materialization":
            self.blob_bytes = len(message["params"]["metadata"]["flood/blob"]["raw_value"])

    def report_pipes_framework_exception(self, origin: str, exc_info: Any) -> None:
        raise RuntimeError(f"{origin}: {exc_info[1]}")


def _reader_session(
    dask_client: Any, mode: str, amount: int, max_batch_bytes: int
) -> dict[str, Any]:
    """``flood_writer.py mode amount`` through the real launcher and reader, to a counter."""
    from dagster_pipes_ext.cluster import connection_state
    from dagster_pipes_ext.message_reader import PipesDaskMessageReader
    from dagster_pipes_ext.remote.wire import LaunchSpec, session_names
    from dagster_pipes_ext.task import LaunchTask

    names = session_names("bench-flood", uuid.uuid4().hex)
    task = LaunchTask(
        dask_client,
        connection_state(dask_client),
        key=f"bench-flood-{names.topic.rsplit('/', 1)[-1]}",
        names=names,
        forward_termination=True,
        termination_timeout_seconds=5.0,
        worker_wait_timeout_seconds=READER_ONLY_TIMEOUT_SECONDS,
        heartbeat_timeout_seconds=READER_ONLY_TIMEOUT_SECONDS,
        restrictions={},
    )
    reader = PipesDaskMessageReader(
        dask_client=dask_client,
        topic=names.topic,
        queue=names.queue,
        forward_stdio=False,
        on_end=task.notify_end,
    )
    handler = _CountingHandler()
    spec: LaunchSpec = {
        "topic": names.topic,
        "queue": names.queue,
        "claim_event": names.claim_event,
        "stop_event": names.stop_event,
        "command": command("flood_writer.py", mode, amount),
        "env": {},
        "cwd": None,
        "context_data": {},
        "forward_stdio": False,
        "stop_when_abandoned": True,
        "termination_timeout_seconds": 5.0,
        "max_batch_bytes": max_batch_bytes,
        "max_message_bytes": 64 << 20,
        "poll_interval_seconds": 0.005,
        "heartbeat_interval_seconds": 1.0,
        "heartbeat_timeout_seconds": READER_ONLY_TIMEOUT_SECONDS,
    }
    try:
        with reader.read_messages(handler):  # type: ignore[arg-type]
            outcome = task.run(spec, reader, logging.getLogger(__name__))
            reader.wait_for_end()
    finally:
        task.forget(stop=True)
    error = reader.delivery_error()
    if mode == "message":
        expected, got = 1, int(handler.count == 1 and handler.blob_bytes == amount)
    else:
        expected, got = amount, handler.count
    return {
        "expected": expected,
        "delivered": got,
        "lost": expected - got,
        "success": outcome.get("returncode") == 0 and error is None,
        "error": None if error is None else str(error),
    }


# -- printing -----------------------------------------------------------------------------------


def _mb(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:+.1f} MB" if signed else f"{value / 1e6:.1f} MB"


def _print_part(part: Mapping[str, Any], unit_name: str) -> None:
    rate_header = "MB/s" if unit_name == "bytes" else "lines/s"
    rows = []
    for name, entry in part["clients"].items():
        rate = entry.get("messages_per_second_median")
        if rate is None:
            shown_rate = "-"
        else:
            shown_rate = f"{rate / 1e6:.1f}" if unit_name == "bytes" else fmt_rate(rate)
        facts = entry.get("facts") or [{}]
        delivered = facts[-1].get("delivered")
        expected = facts[-1].get("expected")
        rows.append(
            [
                name,
                str(entry["summary_seconds"].get("n", 0)),
                fmt_seconds(entry["summary_seconds"].get("median")),
                shown_rate,
                fmt_ratio(entry.get("ratio_median_to_subprocess")),
                "-" if delivered is None else f"{delivered:,}/{expected:,}",
                str(entry.get("failed_runs", 0)),
            ]
        )
    print_table(
        [
            "client",
            "n",
            "wall (median)",
            rate_header,
            "ratio vs subprocess",
            "delivered (last run)",
            "failed runs",
        ],
        rows,
    )
    per_size = unit_name == "bytes"  # the message: growth as a multiple of its size
    rows = []
    for name, entry in part["clients"].items():
        for process, r in entry["rss"].items():
            row = [
                f"{name} / {process}",
                _mb(r["base_bytes"]),
                _mb(r["peak_bytes"]),
                _mb(r["growth_bytes"], signed=True),
                _mb(r["hwm_growth_bytes"], signed=True),
                _mb(r["after_growth_bytes"], signed=True),
                _mb(r.get("after_trim_growth_bytes"), signed=True),
            ]
            if per_size:
                row.append(f"{r['growth_bytes'] / part['units']:.2f}x")
            rows.append(row)
    headers = [
        "client / process",
        "base RSS",
        "peak (50 ms)",
        "growth",
        "growth (VmHWM)",
        "after - base",
        "after trim",
    ]
    print_table([*headers, "growth / size"] if per_size else headers, rows)


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
        workers = list(dask_client.scheduler_info()["workers"])
        probe = Probe(
            dask_client=dask_client,
            pids={
                ORCHESTRATOR: os.getpid(),
                SCHEDULER: cluster.scheduler.pid,
                WORKER: cluster.workers[0].pid,
            },
            worker_address=workers[0],
        )
        with flood_instance() as (instance, home):
            say(f"  (instance storage in {home})")
            builders: dict[str, Callable[[], Workload]] = {
                "stdout": lambda: _stdout_workload(bench, instance, clients, stdout_bytes),
                "message": lambda: _message_workload(bench, instance, clients, probe, message_bytes),
                "logs": lambda: _logs_workload(bench, instance, clients, probe, log_lines),
            }
            chosen = _options["workloads"] or set(WORKLOADS)
            for key, build in builders.items():
                if key not in chosen:
                    continue
                work = build()
                try:
                    part = _run_workload(work, probe, reps)
                except Exception as exc:  # keep the other workloads
                    say(f"  {work.key} FAILED: {type(exc).__name__}: {exc}")
                    results[work.key] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                _print_part(part, work.unit_name)
                results[work.key] = part
        dask_client.close()  # before the scheduler goes: no reconnection attempts
    finally:
        cluster.stop()
    results.update(
        stdout_bytes=stdout_bytes,
        line_bytes=LINE_BYTES,
        message_bytes=message_bytes,
        log_lines=log_lines,
        reps=reps,
        method=(
            "Fresh dask scheduler + dask worker; per workload and variant one untimed small "
            "warm-up run, then whole runs; RSS of scheduler, worker and this process: base after "
            "gc.collect() + malloc_trim(0) in each, peak sampled every 50 ms (psutil) and VmHWM "
            "after a reset, after (gc.collect()) and after trim (+ malloc_trim(0)); delivery "
            "counted in the captured stdout file, the event log (SQL) and the recorded metadata. "
            "'reader-only': the same lines through the launcher and the real reader (JSON parse "
            "included) without Dagster's handler; 'dagster-only': a plain asset returns the same "
            "materialization, without Pipes."
        ),
        params={"instance": "local_temp (SQLite; storage on /dev/shm where available)"},
    )
    return results
