"""The flood scenario's memory readings: each process's RSS before, during and after a run.

Before a run :meth:`Probe.settle` collects garbage and trims the allocator in each process and
reads its RSS (base); :class:`RssSampler` samples the RSS during the run (peak) and reads the
kernel's high-water mark (``VmHWM``); after it ``settle`` reads the RSS again, untrimmed (after)
and trimmed (after trim).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from benchmarks.scheduler_probe import scheduler_state

SAMPLE_SECONDS = 0.05

ORCHESTRATOR, SCHEDULER, WORKER = "orchestrator", "scheduler", "worker"
PROCESSES = (ORCHESTRATOR, SCHEDULER, WORKER)


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

    @classmethod
    def of_cluster(cls, cluster: Any, dask_client: Any) -> Probe:
        """This process, the cluster's scheduler and its one worker, through ``dask_client``."""
        workers = list(dask_client.scheduler_info()["workers"])
        return cls(
            dask_client=dask_client,
            pids={
                ORCHESTRATOR: os.getpid(),
                SCHEDULER: cluster.scheduler.pid,
                WORKER: cluster.workers[0].pid,
            },
            worker_address=workers[0],
        )


def rss_readings(
    names: Sequence[str],
    base: Mapping[str, int],
    sampler: RssSampler,
    after: Mapping[str, int],
    trimmed: Mapping[str, int],
) -> dict[str, dict[str, Any]]:
    """Per named process: the base, peak and after RSS, and how much each grew from base."""
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


def worst_readings(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per process, the reading of the run with the largest growth; the largest after-growth."""
    out: dict[str, dict[str, Any]] = {}
    for name in runs[0]["rss"]:
        worst = max(runs, key=lambda r: r["rss"][name]["growth_bytes"])["rss"][name]
        out[name] = {
            **worst,
            "after_growth_bytes": max(r["rss"][name]["after_growth_bytes"] for r in runs),
        }
    return out
