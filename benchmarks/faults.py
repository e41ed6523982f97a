"""Fault matrix: what a step, the command's processes and its messages go through per fault.

Run: ``.venv/bin/python benchmarks/faults.py [--only NAME,...] [--out PATH]``. Each row: a fresh
cluster (``dask scheduler`` + one ``dask worker --nthreads 2``), a driver process
(``external/fault_driver.py``) materializing ``external/fault_stream.py`` into an on-disk
instance, one fault once the command has ticked ~1 s, then the instance is read. Prints a table,
writes ``benchmarks/results/faults.json``; see "Fault matrix" in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from dagster_pipes_ext_tests.support.cluster_procs import free_port
from dagster_pipes_ext_tests.support.processes import (
    DaskProcesses,
    kill_survivors,
    start_cluster,
    start_scheduler,
    start_worker,
    stop_pid,
    wait_for,
)

DRIVER = common.EXTERNAL_DIR / "fault_driver.py"
DEFAULT_OUT = common.BENCH_DIR / "results" / "faults.json"
LOGS = common.BENCH_DIR / "results" / "faults-logs"  # per row: driver, scheduler, worker logs
SURVIVOR_CHECK_S = 15.0  # survivors: family PIDs alive this long after the fault
GONE_LIMIT_S = 30.0  # wait at most this long for the whole family to be gone
TICK = re.compile(r"^tick (\d+)$")

# A strike gets the cluster, the driver and the family, and returns an undo (or None).
Strike = Callable[[DaskProcesses, subprocess.Popen, list[Any]], Callable[[], None] | None]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _family(run_dir: Path) -> list[psutil.Process]:
    """The command's family from its PIDS_FILE, as processes (those already gone left out)."""
    procs = []
    for pid in (run_dir / "pids").read_text().split() if (run_dir / "pids").exists() else []:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(int(pid)))
    return procs


def _watch(procs: list[psutil.Process], since: float) -> tuple[list[int], float | None]:
    """PIDs alive SURVIVOR_CHECK_S after ``since``, and when all were gone (None: not by then)."""
    survivors: list[int] | None = None
    while True:
        alive = [p.pid for p in procs if _alive(p)]
        elapsed = time.time() - since
        if survivors is None and elapsed >= SURVIVOR_CHECK_S:
            survivors = alive
        if not alive:
            return survivors or [], round(max(elapsed, 0.0), 2)
        if elapsed >= GONE_LIMIT_S:
            return survivors or alive, None
        time.sleep(0.05)


def _read_int(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text())
    return None


def _start_driver(tmp: Path, logs: Path, address: str, n_runs: int, ticks: int | None = None):
    runs = [tmp / f"run{i}" for i in range(n_runs)]
    for run_dir in runs:
        run_dir.mkdir()
        if ticks:
            (run_dir / "ticks").write_text(str(ticks))
    (tmp / "home").mkdir()
    config = {"address": address, "home": str(tmp / "home"), "runs": [str(r) for r in runs]}
    with open(logs / "driver.log", "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, str(DRIVER), json.dumps(config)], stdout=log, stderr=log
        )
    return driver, runs


def _wait_until(driver: subprocess.Popen, predicate: Callable[[], Any], what: str) -> None:
    def ready() -> Any:
        if driver.poll() is not None:
            raise RuntimeError(f"the driver ended (exit {driver.returncode}) before {what}")
        return predicate()

    wait_for(ready, 90, what)


def _step(instance: Any, run: Any, fault: float) -> dict[str, Any]:
    """The step's outcome and the tick logs that reached the run's event log."""
    ticks: list[int] = []
    notes: list[str] = []  # the client's and the launcher's own "[pipes] ..." lines
    end = None
    for entry in instance.all_logs(run.run_id):
        event, message = entry.dagster_event, entry.user_message or ""
        if event is not None and event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            end = entry
        elif event is None and (match := TICK.match(message)):
            ticks.append(int(match[1]))
        elif event is None and message.startswith("[pipes]"):
            notes.append(message[:300])
    out: dict[str, Any] = {"run_status": run.status.value, "received": len(set(ticks))}
    out["pipes_notes"] = notes[:30]
    out["duplicates"] = len(ticks) - len(set(ticks))
    out["gaps"] = (max(ticks) + 1 - len(set(ticks))) if ticks else 0  # missing below the last
    if end is None:
        out["outcome"] = f"NO STEP END (run {run.status.value})"
        return out
    if end.dagster_event.event_type_value == "STEP_SUCCESS":
        return {**out, "outcome": "SUCCESS"}
    out["failed_after_s"] = round(end.timestamp - fault, 2)
    chain, error = [], end.dagster_event.step_failure_data.error
    while error is not None:
        chain.append(error)
        error = error.cause
    error = next((e for e in chain if e.cls_name.startswith("PipesDask")), chain[0])
    out["outcome"] = f"FAILURE {error.cls_name}"
    out["error"] = error.message.strip()[:500]
    return out


def _report(tmp: Path, runs: list[Path], fault: float) -> list[dict[str, Any]]:
    from dagster import DagsterInstance

    with DagsterInstance.local_temp(str(tmp / "home")) as instance:
        records = list(reversed(instance.get_runs()))  # oldest first: the driver's order
        out = []
        for i, run_dir in enumerate(runs):
            entry = {"written": _read_int(run_dir / "count") or 0, "received": 0, "gaps": 0}
            entry.update(_step(instance, records[i], fault) if i < len(records) else {})
            entry.setdefault("outcome", "NOT RUN")
            entry["lost"] = entry["written"] - entry["received"]
            out.append(entry)
        return out


def _ended(driver: subprocess.Popen, timeout: float) -> bool:
    with contextlib.suppress(subprocess.TimeoutExpired):
        driver.wait(timeout=timeout)
    return driver.poll() is not None


def _fault_row(strike: Strike, logs: Path) -> dict[str, Any]:
    """One run on a fresh cluster, struck once the command has ticked ~1 s."""
    tmp = Path(tempfile.mkdtemp(prefix="pipes-faults-"))
    cluster = start_cluster(1, nthreads=2)
    driver, undo, family = None, None, []
    try:
        driver, runs = _start_driver(tmp, logs, cluster.address, 1)
        count = runs[0] / "count"
        _wait_until(driver, lambda: (_read_int(count) or 0) >= 100, "~1 s of ticks")
        family = _family(runs[0])
        written_at_fault = _read_int(count)
        fault = time.time()
        undo = strike(cluster, driver, family)
        survivors, gone = _watch(family, fault)
        # A stopped worker resumes only once the step has ended (or clearly hangs).
        hung = not _ended(driver, 60)
        if undo is not None:
            undo()
        if hung and not _ended(driver, 60):
            raise RuntimeError("the driver did not end within 60 s of the fault, nor of the undo")
        run = _report(tmp, runs, fault)[0]
        pids = [p.pid for p in family]
        row = {**run, "written_at_fault": written_at_fault, "family": pids, "hung_60s": hung}
        return {**row, "survivors": survivors, "gone_after_s": gone, "driver_exit": driver.poll()}
    finally:
        if undo is not None:
            undo()
        _cleanup(tmp, logs, cluster, driver, family)


def _cleanup(tmp: Path, logs: Path, cluster: DaskProcesses, driver: Any, family: list[Any]):
    """Stop, by PID, what the row started and what is left of the family; keep the logs."""
    kill_survivors(family)  # the daemon ignores SIGTERM
    if driver is not None:
        stop_pid(driver.pid)
    cluster.stop()
    for log in Path(cluster.worker_dir).glob("*.log"):
        shutil.copy(log, logs / log.name)
    for path in (tmp, cluster.worker_dir, cluster.worker_tmp):
        if path:
            shutil.rmtree(path, ignore_errors=True)


def _worker_of(command: psutil.Process, cluster: DaskProcesses) -> int:
    workers = {w.pid for w in cluster.workers}
    return next(a.pid for a in command.parents() if a.pid in workers)


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _kill_worker(cluster: DaskProcesses, _driver: Any, family: list[Any]) -> None:
    _kill(_worker_of(family[0], cluster), signal.SIGKILL)


def _stop_worker(cluster: DaskProcesses, _driver: Any, family: list[Any]) -> Callable[[], None]:
    worker = _worker_of(family[0], cluster)
    _kill(worker, signal.SIGSTOP)
    return partial(_kill, worker, signal.SIGCONT)


def _kill_scheduler(cluster: DaskProcesses, _driver: Any, _family: list[Any]) -> None:
    _kill(cluster.scheduler.pid, signal.SIGKILL)


def _signal(sig: signal.Signals) -> Strike:
    """Send ``sig`` to the driver (the orchestrator's step process)."""
    return lambda _cluster, driver, _family: _kill(driver.pid, sig)


def _connected_workers(address: str) -> int:
    from distributed import Client

    with Client(address, timeout=10, set_as_default=False) as client:
        return len(client.scheduler_info()["workers"])


def _restart_row(logs: Path) -> dict[str, Any]:
    """Run 1 (1 s of ticks), scheduler SIGKILL, a new one on the same port, run 2, same process."""
    tmp = Path(tempfile.mkdtemp(prefix="pipes-faults-"))
    workdir = tmp / "cluster"
    workdir.mkdir()
    port_args = ["--port", str(free_port())]
    proc, address, _ = start_scheduler(workdir, extra_args=port_args)
    cluster = DaskProcesses(address=address, scheduler=proc, worker_dir=str(workdir))
    driver, families = None, []
    try:
        cluster.workers.append(start_worker(address, workdir, name="w0", nthreads=2))
        wait_for(lambda: _connected_workers(address) == 1, 60, "the worker")
        driver, runs = _start_driver(tmp, logs, address, 2, ticks=100)
        _wait_until(driver, (runs[0] / "done").exists, "the first run's end")
        families += _family(runs[0])
        fault = time.time()
        cluster.scheduler.send_signal(signal.SIGKILL)
        cluster.scheduler.wait(timeout=10)
        (workdir / "scheduler.json").unlink()
        cluster.scheduler, new_address, _ = start_scheduler(workdir, extra_args=port_args)
        if new_address != address:
            raise RuntimeError(f"the new scheduler is at {new_address}, not {address}")
        old = cluster.workers[0]
        with contextlib.suppress(TimeoutError):
            back = lambda: old.poll() is not None or _connected_workers(address)  # noqa: E731
            wait_for(back, 10, "w0", interval=0.5)
        reconnected = old.poll() is None and _connected_workers(address) == 1
        if not reconnected:
            stop_pid(old.pid)
            cluster.workers.append(start_worker(address, workdir, name="w1", nthreads=2))
            wait_for(lambda: _connected_workers(address) == 1, 60, "the new worker")
        (runs[1] / "go").touch()
        if not _ended(driver, 120):
            raise RuntimeError("the driver did not end within 120 s of the restart")
        ended = time.time()
        families += _family(runs[1])
        survivors, gone = _watch(families, ended)
        first, second = _report(tmp, runs, fault)
        worker = "w0 reconnected" if reconnected else f"w0 gone (exit {old.poll()}), new w1"
        row = {**second, "first_run": first, "worker": worker, "family": [p.pid for p in families]}
        # survivors and gone_after_s: both runs' families, from the driver's end
        return {**row, "survivors": survivors, "gone_after_s": gone, "driver_exit": driver.poll()}
    finally:
        _cleanup(tmp, logs, cluster, driver, families)


ROWS: dict[str, tuple[str, Callable[[Path], dict[str, Any]]]] = {
    "worker-sigkill": ("worker SIGKILL", partial(_fault_row, _kill_worker)),
    "worker-sigstop": ("worker SIGSTOP", partial(_fault_row, _stop_worker)),
    "scheduler-sigkill": ("scheduler SIGKILL", partial(_fault_row, _kill_scheduler)),
    "scheduler-restart": ("scheduler restart between runs", _restart_row),
    "orchestrator-sigkill": ("orchestrator SIGKILL", partial(_fault_row, _signal(signal.SIGKILL))),
    "termination": ("termination (SIGINT)", partial(_fault_row, _signal(signal.SIGINT))),
}


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    if "exception" in r:
        return r["label"], f"ERROR {r['exception']}"
    ticks = f"{r['written']}/{r['received']}/{r['lost']}" + (f" gaps {r['gaps']}" * (r["gaps"] > 0))
    gone = ">30" if r["gone_after_s"] is None else str(r["gone_after_s"])
    survivors = f"{len(r['survivors'])} {r['survivors'] or ''}"
    return r["label"], r["outcome"], str(r.get("failed_after_s", "-")), survivors, ticks, gone


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = ("row", "step outcome", "fail s", "surv@15s", "ticks wrote/log/lost", "gone s")
    widths = (31, 42, 7, 9, 21, 7)
    for cells in (head, *map(_cells, rows)):
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip())


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")  # so that every row's clean-up runs


def main() -> None:
    """Run the chosen rows, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ROWS), help="comma-separated: " + ",".join(ROWS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {sorted(unknown)}")
    common.prepare_environment()
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat()
    rows = []
    for name in names:
        label, run = ROWS[name]
        print(f"-- {label} ...", flush=True)
        t0 = time.monotonic()
        logs = LOGS / name
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        try:
            row = run(logs)
        except Exception as exc:  # one broken row must not hide the others
            row = {"exception": f"{type(exc).__name__}: {exc}"}
        rows.append({"name": name, "label": label, **row})
        print(f"   {row.get('outcome', row.get('exception'))} ({time.monotonic() - t0:.0f} s)")
    print()
    _print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"started": started, "machine": common.machine_info(), "rows": rows}
    args.out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
