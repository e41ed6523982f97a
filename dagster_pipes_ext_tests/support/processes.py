"""Start and stop real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import dask
import psutil

SUPPORT = Path(__file__).parent


def kill_survivors(procs: list[psutil.Process]) -> list[str]:
    """SIGKILL each process still running; return a description of each one killed."""
    killed = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                killed.append(f"{p.pid}: {' '.join(p.cmdline())[:200]}")
                p.kill()
        except psutil.NoSuchProcess:
            pass
    return killed


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """Stop a process (and its children) we started: SIGTERM, then SIGKILL."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = [proc, *proc.children(recursive=True)]
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class DaskProcesses:
    """A separate scheduler and its workers, each a process started by the tests."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)
    worker_dir: str = ""
    worker_tmp: str = ""
    dashboard_port: int | None = None

    def stop(self) -> None:
        for w in self.workers:
            stop_pid(w.pid)
        stop_pid(self.scheduler.pid)
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def start_scheduler(
    workdir: Path,
    dashboard: bool = False,
    env_overrides: dict[str, str] | None = None,
    *,
    extra_args: list[str] | None = None,
) -> tuple[subprocess.Popen, str, int | None]:
    """Start ``dask scheduler`` on a free loopback port; return (process, address, dash port).

    ``extra_args`` go after the defaults (e.g. ``--protocol tls --tls-ca-file ...``); the
    scheduler file is ``workdir / "scheduler.json"``.
    """
    sched_file = workdir / "scheduler.json"
    dash_port = None
    args = [
        sys.executable,
        "-m",
        "distributed.cli.dask_scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--scheduler-file",
        str(sched_file),
    ]
    # Even without a dashboard the scheduler serves HTTP (health, metrics): loopback, free port.
    args += ["--dashboard-address", "127.0.0.1:0"]
    if not dashboard:
        args += ["--no-dashboard"]
    args += extra_args or []
    with open(workdir / "scheduler.log", "wb") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, **(env_overrides or {})},
        )
    info = wait_for(
        lambda: _read_json(sched_file), timeout=30, what="the dask scheduler to write its file"
    )
    if dashboard:
        dash_port = info.get("services", {}).get("dashboard")
    return proc, info["address"], dash_port


def start_worker(
    address: str,
    workdir: Path,
    *,
    name: str,
    nthreads: int = 4,
    resources: str | None = None,
    blocked: bool = True,
    tmpdir: str | None = None,
    env_overrides: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> subprocess.Popen:
    """Start a ``dask worker`` process (by default one that cannot import dagster).

    ``extra_args`` go after the defaults (e.g. ``--tls-ca-file ...``).
    """
    entry = (
        [str(SUPPORT / "blocked_worker.py")] if blocked else ["-m", "distributed.cli.dask_worker"]
    )
    args = [
        sys.executable,
        *entry,
        address,
        "--no-nanny",
        "--nthreads",
        str(nthreads),
        "--name",
        name,
        "--host",
        "127.0.0.1",
        "--no-dashboard",
        # Even without a dashboard the worker serves HTTP (health, metrics): loopback, free port.
        "--dashboard-address",
        "127.0.0.1:0",
        "--local-directory",
        str(workdir / f"{name}-space"),
    ]
    if resources:
        args += ["--resources", resources]
    args += extra_args or []
    env = dict(os.environ)
    # The environment Dask's nanny gives every worker it spawns (the worker runs without one, so
    # that the PID held is the worker's): MALLOC_TRIM_THRESHOLD_ above all, without which glibc
    # keeps the worker's freed memory resident (63 MB of 164 MB, 1,150,000 lines into a flood).
    nanny_environ = dask.config.get("distributed.nanny.pre-spawn-environ")
    env.update({k: str(v) for k, v in nanny_environ.items()})
    # The worker must not find the project on its import path either.
    env.pop("PYTHONPATH", None)
    if tmpdir:
        env["TMPDIR"] = tmpdir
    env.update(env_overrides or {})
    with open(workdir / f"{name}.log", "wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)


def start_cluster(
    n_workers: int = 1,
    *,
    resources: str | None = None,
    dashboard: bool = False,
    nthreads: int = 4,
    worker_env: dict[str, str] | None = None,
    scheduler_env: dict[str, str] | None = None,
) -> DaskProcesses:
    """Start a scheduler and ``n_workers`` import-blocked workers with their own cwd and TMPDIR."""
    from distributed import Client

    workdir = Path(tempfile.mkdtemp(prefix="pipes-dask-cluster-"))
    worker_tmp = Path(tempfile.mkdtemp(prefix="pipes-dask-worker-tmp-"))
    proc, address, dash = start_scheduler(workdir, dashboard=dashboard, env_overrides=scheduler_env)
    cluster = DaskProcesses(
        address=address,
        scheduler=proc,
        worker_dir=str(workdir),
        worker_tmp=str(worker_tmp),
        dashboard_port=dash,
    )
    try:
        for i in range(n_workers):
            cluster.workers.append(
                start_worker(
                    address,
                    workdir,
                    name=f"w{i}",
                    resources=resources,
                    tmpdir=str(worker_tmp),
                    nthreads=nthreads,
                    env_overrides=worker_env,
                )
            )
        with Client(address, timeout=30, set_as_default=False) as c:
            c.wait_for_workers(n_workers, timeout=60)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
