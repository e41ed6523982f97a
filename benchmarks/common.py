"""Shared pieces of the benchmark suite: timing, statistics, processes, assets, printing.

Everything here runs in the benchmark's own process. Processes the benchmark starts (a separate
``dask scheduler`` + ``dask worker``, a Ray head) are tracked by PID and stopped by PID.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from dagster_pipes_ext_tests.support.processes import wait_for

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
EXTERNAL_DIR = BENCH_DIR / "external"
VENV_BIN = str(Path(sys.executable).parent)

SUBPROCESS = "subprocess"
DASK_EMBEDDED = "dask-embedded"
DASK_SEPARATE = "dask-separate"
RAY = "ray-job"

CLIENT_LABELS = {
    SUBPROCESS: "PipesSubprocessClient",
    DASK_EMBEDDED: "PipesDaskClient (embedded LocalCluster)",
    DASK_SEPARATE: "PipesDaskClient (separate dask scheduler + worker)",
    RAY: "dagster-ray PipesRayJobClient (local Ray head)",
}


PYCACHE_DIR = BENCH_DIR / "results" / "pycache"


def prepare_environment(bytecode_cache: bool = True) -> dict[str, Any]:
    """Make ``python`` in external commands this interpreter, here and in child processes.

    The repository root also goes on ``PYTHONPATH`` so that processes spawned by Dagster's
    multiprocess executor can import the fan-out job module. Python warnings are silenced in
    child processes (Dagster prints a preview warning per Pipes session).

    With ``bytecode_cache`` and ``PYTHONDONTWRITEBYTECODE`` set (and the environment holding no
    ``.pyc`` files, as a default ``uv sync`` leaves it), every new Python process would compile
    Dagster from source (``import dagster``: ~2.2 s of CPU instead of ~1.0 s). Bytecode is then
    cached under ``benchmarks/results/pycache`` (``PYTHONPYCACHEPREFIX``), for this process and
    its children, as an installed deployment would have it. Returns what was changed.
    """
    changed: dict[str, Any] = {}
    if bytecode_cache and (os.environ.get("PYTHONDONTWRITEBYTECODE") or sys.dont_write_bytecode):
        PYCACHE_DIR.mkdir(parents=True, exist_ok=True)
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR)
        sys.dont_write_bytecode = False
        sys.pycache_prefix = str(PYCACHE_DIR)
        changed["bytecode_cache"] = str(PYCACHE_DIR)
    os.environ["PYTHONWARNINGS"] = "ignore"
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != VENV_BIN:
        os.environ["PATH"] = VENV_BIN + os.pathsep + path
    pythonpath = os.environ.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in pythonpath.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), pythonpath) if p)
    # The benchmark picks its clusters explicitly.
    os.environ.pop("DASK_SCHEDULER_ADDRESS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return changed


def command(script_name: str, *args: object) -> list[str]:
    """The argv of an external script, started as ``python <abs path> args...``."""
    return ["python", str(EXTERNAL_DIR / script_name), *(str(a) for a in args)]


# -- interruption -------------------------------------------------------------------------------


class StopRequests:
    """Notices SIGINT/SIGTERM even when Dagster swallows them.

    During ``materialize()`` Dagster replaces the signal handlers and drops an interrupt that
    arrives outside its interruptible sections (afterwards it maps SIGTERM to SIGINT's
    handler). The C-level handler still writes every handled signal's number to the wakeup fd
    (``signal.set_wakeup_fd``), which a thread watches here; the benchmark loops call
    :meth:`check` between runs and stop with ``KeyboardInterrupt``.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._installed = False

    def install(self) -> None:
        """Install (from the main thread) the wakeup fd, its reader and a SIGTERM handler."""
        if self._installed:
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        # SIGTERM needs a Python-level handler, or it would end the process without clean-up.
        signal.signal(signal.SIGTERM, self._on_sigterm)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True).start()
        self._installed = True

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    def _watch(self, read_fd: int) -> None:
        wanted = {int(signal.SIGINT): "SIGINT", int(signal.SIGTERM): "SIGTERM"}
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for byte in data:
                if byte in wanted and self.received is None:
                    self.received = wanted[byte]

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if SIGINT/SIGTERM arrived; re-arm the SIGTERM handler.

        After each run Dagster points SIGTERM at whatever SIGINT's handler is, which is
        ``SIG_IGN`` when the benchmark was started in the background: SIGTERM would then be
        ignored. Call from the main thread.
        """
        if self._installed and signal.getsignal(signal.SIGTERM) != self._on_sigterm:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.received is not None:
            raise KeyboardInterrupt(self.received)


STOP = StopRequests()


# -- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, min, median, p90, max and mean of a sample."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "median": percentile(values, 50),
        "p90": percentile(values, 90),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or ``None`` when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0 or math.isnan(baseline):
        return None
    return value / baseline


def interleave(reps: int, names: Sequence[str]) -> Iterator[tuple[int, str]]:
    """Yield ``(rep, name)`` for every rep, rotating the order each rep to spread order effects."""
    n = len(names)
    for rep in range(reps):
        for i in range(n):
            yield rep, names[(rep + i) % n]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` after a garbage collection (not timed); return (seconds, its result)."""
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# -- printing -----------------------------------------------------------------------------------


def fmt_seconds(value: float | None) -> str:
    """Seconds as ms below 10 s (``812.4 ms``), else as seconds (``12.31 s``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value < 10:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def fmt_rate(value: float | None) -> str:
    """Messages per second with thousands separators."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f}/s"


def fmt_ratio(value: float | None) -> str:
    """A ratio as ``1.07x``."""
    return "-" if value is None else f"{value:.2f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print an aligned plain-text table (first column left-aligned, the rest right-aligned)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  " + "  ".join(parts)

    print(line(headers))
    print("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    sys.stdout.flush()


def say(text: str = "", width: int = 100) -> None:
    """Print and flush (output interleaves with child processes'); wrap lines over ``width``."""
    lines = []
    for line in text.split("\n"):
        indent = line[: len(line) - len(line.lstrip())]
        if len(line) <= width or " | " in line:  # per-rep lines stay whole
            lines.append(line)
            continue
        lines.append(
            textwrap.fill(
                line.strip(),
                width=width,
                initial_indent=indent,
                subsequent_indent=indent + "  ",
                break_on_hyphens=False,
            )
        )
    print("\n".join(lines), flush=True)


# -- processes ----------------------------------------------------------------------------------


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """Stop a process we started and its descendants: SIGTERM, then SIGKILL after ``timeout``."""
    try:
        proc = psutil.Process(pid)
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    stop_processes(family, timeout)


def stop_processes(procs: Sequence[psutil.Process], timeout: float = 10.0) -> None:
    """SIGTERM each process, SIGKILL those still alive after ``timeout``; each by its PID."""
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class SeparateCluster:
    """A ``dask scheduler`` and one ``dask worker`` started as separate processes on 127.0.0.1.

    Both are started with the ``dask`` CLI of this environment; the worker runs without a nanny
    (one process, so the PID we hold is the worker) and with ``nthreads`` task threads.
    """

    address: str
    workdir: Path
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def scheduler_pid(self) -> int:
        """The scheduler's process id."""
        return self.scheduler.pid

    @classmethod
    def start(cls, nthreads: int = 4, name: str = "bench") -> SeparateCluster:
        """Start the scheduler (free loopback port) and one worker; wait until it is connected."""
        from distributed import Client

        workdir = Path(tempfile.mkdtemp(prefix=f"pipes-bench-{name}-"))
        dask = str(Path(VENV_BIN) / "dask")
        sched_file = workdir / "scheduler.json"
        with open(workdir / "scheduler.log", "wb") as log:
            scheduler = subprocess.Popen(
                [
                    dask,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    # Even without the dashboard it serves HTTP (health, metrics): loopback only.
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--scheduler-file",
                    str(sched_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        cluster = cls(address="", workdir=workdir, scheduler=scheduler)
        try:

            def scheduler_file() -> Any:
                if scheduler.poll() is not None:
                    tail = (workdir / "scheduler.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"dask scheduler exited ({scheduler.returncode}):\n{tail}")
                return _read_json(sched_file)

            info = wait_for(scheduler_file, timeout=60, what="the dask scheduler file")
            cluster.address = info["address"]
            with open(workdir / "worker.log", "wb") as log:
                cluster.workers.append(
                    subprocess.Popen(
                        [
                            dask,
                            "worker",
                            cluster.address,
                            "--no-nanny",
                            "--nthreads",
                            str(nthreads),
                            "--name",
                            f"{name}-w0",
                            "--host",
                            "127.0.0.1",
                            "--no-dashboard",
                            "--dashboard-address",
                            "127.0.0.1:0",
                            "--local-directory",
                            str(workdir / "worker-space"),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=workdir,
                    )
                )
            with Client(cluster.address, timeout=30, set_as_default=False) as client:
                client.wait_for_workers(1, timeout=60)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        """Stop the worker(s), then the scheduler, each by PID (with any children)."""
        for w in self.workers:
            stop_pid(w.pid)
        stop_pid(self.scheduler.pid)
        for p in [*self.workers, self.scheduler]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- Dagster ------------------------------------------------------------------------------------


@contextlib.contextmanager
def dagster_instance(kind: str) -> Iterator[Any]:
    """A Dagster instance for one scenario: ``local_temp`` (SQLite on disk) or ``ephemeral``."""
    from dagster import DagsterInstance

    if kind == "ephemeral":
        with DagsterInstance.ephemeral() as instance:
            yield instance
        return
    with (
        tempfile.TemporaryDirectory(prefix="pipes-bench-home-") as home,
        DagsterInstance.local_temp(home) as instance,
    ):
        yield instance


def materialize_with(
    assets: Sequence[Any],
    client: Any,
    instance: Any,
    *,
    console_log_level: str = "WARNING",
) -> Any:
    """``materialize(assets)`` with ``client`` as the ``pipes`` resource; raise if it failed."""
    from dagster import materialize

    result = materialize(
        list(assets),
        resources={"pipes": client},
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": console_log_level}}}},
    )
    if not result.success:
        raise RuntimeError(f"benchmark run {result.run_id} failed")
    return result


def materialization_metadata(result: Any, node: str) -> Mapping[str, Any]:
    """The metadata values of the (single) materialization of ``node`` in ``result``."""
    mats = result.asset_materializations_for_node(node)
    if len(mats) != 1:
        raise RuntimeError(f"expected one materialization of {node}, got {len(mats)}")
    return {k: getattr(v, "value", v) for k, v in mats[0].metadata.items()}


def user_logs(instance: Any, run_id: str, prefix: str) -> list[Any]:
    """The run's plain log entries (not Dagster events) whose message starts with ``prefix``."""
    return [
        e
        for e in instance.all_logs(run_id)
        if not e.is_dagster_event and (e.user_message or "").startswith(prefix)
    ]


# -- machine ------------------------------------------------------------------------------------


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU count and model, RAM, OS, Python and the versions of the libraries measured."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "ram_bytes": psutil.virtual_memory().total,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "versions": {
            d: _version(d)
            for d in (
                "dagster",
                "dagster-pipes",
                "dagster-pipes-ext",
                "distributed",
                "dask",
                "ray",
                "dagster-ray",
            )
        },
    }


# -- the benchmark session ----------------------------------------------------------------------


@dataclass
class Bench:
    """Options of one benchmark session and the resources its scenarios share.

    ``shared_cluster()`` starts one separate ``dask scheduler`` + ``dask worker`` on first use;
    the launch, throughput, latency, fan-out and Ray scenarios all use it. ``close()`` stops it.
    """

    quick: bool = False
    reps_override: int | None = None
    instance_kind: str = "ephemeral"
    console_log_level: str = "WARNING"
    _shared: SeparateCluster | None = None

    def reps(self, default: int, quick: int) -> int:
        """Repetitions for a scenario: ``--reps`` if given, else its quick or full default."""
        if self.reps_override is not None:
            return self.reps_override
        return quick if self.quick else default

    def shared_cluster(self) -> SeparateCluster:
        """The session's separate cluster (scheduler + one 4-thread worker), started lazily."""
        if self._shared is None:
            say("  (starting the shared separate cluster: dask scheduler + dask worker)")
            self._shared = SeparateCluster.start(nthreads=4, name="shared")
            say(f"  (shared separate cluster at {self._shared.address})")
        return self._shared

    def clients(self, names: Sequence[str]) -> dict[str, Any]:
        """Pipes clients by name (``subprocess``, ``dask-embedded``, ``dask-separate``)."""
        from dagster import PipesSubprocessClient

        from dagster_pipes_ext import PipesDaskClient

        made: dict[str, Any] = {}
        for name in names:
            if name == SUBPROCESS:
                made[name] = PipesSubprocessClient()
            elif name == DASK_EMBEDDED:
                made[name] = PipesDaskClient()
            elif name == DASK_SEPARATE:
                made[name] = PipesDaskClient(scheduler_address=self.shared_cluster().address)
            else:
                raise ValueError(f"unknown client {name!r}")
        return made

    def materialize(self, assets: Sequence[Any], client: Any, instance: Any) -> Any:
        """Materialize ``assets`` with ``client`` as ``pipes`` (see :func:`materialize_with`)."""
        return materialize_with(assets, client, instance, console_log_level=self.console_log_level)

    def close(self) -> None:
        """Close cached Dask clients (and the embedded cluster); stop the shared cluster."""
        from dagster_pipes_ext import close_cached_clients

        try:
            close_cached_clients()
        finally:
            if self._shared is not None:
                self._shared.stop()
                self._shared = None


class InvalidSample(Exception):
    """A run that completed but whose result is wrong (e.g. messages lost): not a valid sample."""


def measure_interleaved(
    bench: Bench,
    clients: Mapping[str, Any],
    reps: int,
    run_once: Callable[[str, Any], Any],
    check: Callable[[str, Any], dict[str, Any] | None] | None = None,
    warmup: Callable[[str, Any], Any] | None = None,
    retries: int = 2,
) -> dict[str, dict[str, Any]]:
    """Time ``run_once(name, client)`` for every client, ``reps`` times, interleaved.

    Each client first gets one untimed ``warmup`` call. ``check(name, value)`` runs after each
    timed call, untimed, to verify the result and may return extra per-sample facts. If it
    raises :class:`InvalidSample`, the run is recorded under ``invalid`` (not as a sample) and
    run again, up to ``retries`` times; any other exception aborts the measurement. Returns
    ``{name: {"samples_seconds": [...], "facts": [...], "invalid": [...]}}``.
    """
    out: dict[str, dict[str, Any]] = {
        n: {"samples_seconds": [], "facts": [], "invalid": []} for n in clients
    }
    if warmup is not None:
        for name, client in clients.items():
            STOP.check()
            warmup(name, client)
    line: list[str] = []
    for rep, name in interleave(reps, list(clients)):
        for _attempt in range(retries + 1):
            STOP.check()
            seconds, value = timed(lambda name=name: run_once(name, clients[name]))
            STOP.check()
            try:
                facts = check(name, value) if check is not None else None
            except InvalidSample as exc:
                out[name]["invalid"].append({"seconds": seconds, "reason": str(exc)})
                say(f"    INVALID {name} run ({fmt_seconds(seconds)}): {exc}")
                continue
            out[name]["samples_seconds"].append(seconds)
            out[name]["facts"].append(facts or {})
            line.append(f"{name} {fmt_seconds(seconds)}")
            break
        else:
            line.append(f"{name} invalid")
        if len(line) == len(clients):
            say(f"    rep {rep + 1}/{reps}: " + " | ".join(line))
            line = []
    return out


def client_results(
    measured: Mapping[str, Mapping[str, Any]],
    *,
    messages: int | None = None,
    baseline: str = SUBPROCESS,
) -> dict[str, dict[str, Any]]:
    """Per-client raw samples, summary, messages/s and ratio of medians to ``baseline``."""
    base = measured.get(baseline)
    base_median = summarize(base["samples_seconds"]).get("median") if base else None
    results: dict[str, dict[str, Any]] = {}
    for name, data in measured.items():
        samples = list(data["samples_seconds"])
        summary = summarize(samples)
        median = summary.get("median")
        entry: dict[str, Any] = {
            "client": CLIENT_LABELS.get(name, name),
            "samples_seconds": samples,
            "summary_seconds": summary,
            "ratio_median_to_subprocess": ratio(median, base_median),
            "delta_median_seconds": (
                None if median is None or base_median is None else median - base_median
            ),
        }
        if messages:
            entry["messages"] = messages
            entry["messages_per_second_samples"] = [messages / s for s in samples]
            entry["messages_per_second_median"] = messages / median if median else None
        if any(data.get("facts") or []):
            entry["facts"] = list(data["facts"])
        if data.get("invalid"):
            entry["invalid_runs"] = list(data["invalid"])
        results[name] = entry
    return results


def print_client_table(results: Mapping[str, Mapping[str, Any]], *, rates: bool = False) -> None:
    """Print client, n, min, median, p90, max, (messages/s), ratio and delta to subprocess."""
    headers = ["client", "n", "min", "median", "p90", "max"]
    if rates:
        headers.append("msg/s (median)")
    headers += ["ratio vs subprocess", "delta median"]
    rows = []
    for name, entry in results.items():
        s = entry["summary_seconds"]
        row = [
            name,
            str(s.get("n", 0)),
            fmt_seconds(s.get("min")),
            fmt_seconds(s.get("median")),
            fmt_seconds(s.get("p90")),
            fmt_seconds(s.get("max")),
        ]
        if rates:
            row.append(fmt_rate(entry.get("messages_per_second_median")))
        delta = entry.get("delta_median_seconds")
        row += [
            fmt_ratio(entry.get("ratio_median_to_subprocess")),
            "-" if delta is None else f"{delta * 1000:+.1f} ms",
        ]
        rows.append(row)
    print_table(headers, rows)
    for name, entry in results.items():
        invalid = entry.get("invalid_runs") or []
        if invalid:
            total = len(invalid) + int(entry["summary_seconds"].get("n", 0))
            say(
                f"  {name}: {len(invalid)} of {total} runs discarded as invalid and re-run "
                "(see the INVALID lines above; their times are in the JSON under invalid_runs)"
            )
