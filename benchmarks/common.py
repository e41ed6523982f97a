"""The benchmark's environment: paths, client names, child-process settings, signals, machine.

Everything here runs in the benchmark's own process. The other shared pieces: :mod:`.bench`
(the session, Dagster runs, interleaved measurement), :mod:`.stats`, :mod:`.printing`; the
processes the benchmark starts come from ``dagster_pipes_ext_tests/support``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

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
# The Pipes clients most scenarios compare, the baseline first.
PIPES_CLIENTS = (SUBPROCESS, DASK_EMBEDDED, DASK_SEPARATE)


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
