"""Scenario 6 — peer: the trivial asset through dagster-ray's ``PipesRayJobClient``.

A local Ray head is started for this scenario as a child process (``ray start --head --block``,
bound to 127.0.0.1, its own short temp dir, usage stats off, 2 CPUs, dashboard on — the Ray Job
API is served by the dashboard). The trivial external script is submitted as a Ray job
(``submit_job_params={"entrypoint": "python .../trivial.py"}``); dagster-ray injects the Pipes
context through the job's environment and reads messages from the job's logs. The subprocess
and both Dask clients run the same trivial script in the same interleaved loop.

``PipesRayJobClient`` polls the job status every ``poll_interval`` seconds (default 1 s); the
benchmark uses 0.1 s, which favours Ray. Its message reader keeps per-session state, so a fresh
``PipesRayJobClient`` is made for every run (as a new Dagster run process would).

Stopping: SIGTERM to the ``ray start`` process, then every process still alive that carries
this scenario's marker in its environment (set on ``ray start``, inherited by everything Ray
spawns) is stopped by PID. ``ray stop --force`` is not used: it kills Ray processes by name,
machine-wide.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil

from benchmarks.assets import TRIVIAL, check_trivial, ray_job_asset, trivial_asset
from benchmarks.bench import Bench, client_results, dagster_instance, measure_interleaved
from benchmarks.common import PIPES_CLIENTS, RAY, VENV_BIN, command
from benchmarks.printing import print_client_table, say
from dagster_pipes_ext_tests.support.cluster_procs import free_port, stop_processes
from dagster_pipes_ext_tests.support.processes import kill_survivors, wait_for

TITLE = "6. Peer: dagster-ray PipesRayJobClient on a local Ray head (trivial asset)"
POLL_INTERVAL = 0.1
MARKER = "PIPES_BENCH_RAY_MARKER"


def _skip(reason: str) -> dict[str, Any]:
    say(f"  skipped: {reason}")
    return {"title": TITLE, "skipped": reason}


class RayHead:
    """A local Ray head started with ``ray start --head --block`` (a child of this process)."""

    def __init__(self) -> None:
        # Ray puts unix sockets under its temp dir: keep the path short.
        self.temp_dir = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
        self.token = uuid.uuid4().hex
        self.dashboard_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(self.temp_dir) / "ray-start.log"

    @property
    def dashboard_url(self) -> str:
        """The Ray dashboard (and Job API) address."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 180.0) -> None:
        """Start the head and wait until its Job API answers."""
        ports = {
            "--port": free_port(),
            "--dashboard-port": self.dashboard_port,
            "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
        }
        args = [
            str(Path(VENV_BIN) / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--num-cpus=2",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            *(f"{flag}={port}" for flag, port in ports.items()),
        ]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", MARKER: self.token}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(self._api_ready, timeout=timeout, what="the Ray Job API", interval=0.5)

    def _api_ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_jobs_ready(self, timeout: float = 120.0) -> float:
        """Submit ``python -c pass`` until a job succeeds (the job agent is up); return seconds."""
        from ray.job_submission import JobStatus, JobSubmissionClient

        started = time.monotonic()
        client = JobSubmissionClient(self.dashboard_url)
        deadline = started + timeout
        while True:
            try:
                job = client.submit_job(entrypoint="python -c pass")
                status = client.get_job_status(job)
                while not status.is_terminal() and time.monotonic() < deadline:
                    time.sleep(0.1)
                    status = client.get_job_status(job)
                if status == JobStatus.SUCCEEDED:
                    return time.monotonic() - started
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Ray job succeeded within {timeout}s")

    def ours(self) -> list[psutil.Process]:
        """Live processes of this head: the ``ray start`` process, its descendants, marked ones."""
        found: dict[int, psutil.Process] = {}
        if self.proc is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(self.proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    found[p.pid] = p
        for p in psutil.process_iter():
            if p.pid in found or p.pid == os.getpid():
                continue
            with contextlib.suppress(psutil.Error):
                if p.environ().get(MARKER) == self.token:
                    found[p.pid] = p
        return [p for p in found.values() if p.is_running()]

    def stop(self) -> list[str]:
        """Stop everything this head started, each by PID; kill and return what was left."""
        family = self.ours()
        if self.proc is not None and self.proc.poll() is None:
            # `ray start --block` shuts the node down on SIGTERM; give it a moment to do so.
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        stop_processes([*family, *self.ours()], timeout=10)
        leftovers = kill_survivors(self.ours())
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return leftovers


def run(bench: Bench) -> dict[str, Any]:
    """Start a Ray head, time the trivial asset on Ray and the other clients, stop Ray."""
    try:
        import ray
        import ray.job_submission  # noqa: F401 (sets its log level on import)
        from dagster_ray import PipesRayJobClient
    except Exception as exc:
        return _skip(
            f"dagster-ray / ray cannot be imported ({type(exc).__name__}: {exc}); install the "
            "optional group with `uv sync --group ray` (make bench tries to)"
        )
    reps = bench.reps(default=5, quick=1)
    for name in ("ray", "ray.dashboard.modules.job.sdk"):  # "WebSocket closed for job ..."
        logging.getLogger(name).setLevel(logging.WARNING)
    head = RayHead()
    leftovers: list[str] = []
    try:
        say("  starting a local Ray head (127.0.0.1, 2 CPUs, dashboard/Job API on)")
        started = time.monotonic()
        try:
            head.start()
            ready = head.wait_jobs_ready()
        except Exception as exc:
            return _skip(f"the local Ray head did not start ({type(exc).__name__}: {exc})")
        say(
            f"  Ray head up in {time.monotonic() - started:.1f} s (Job API at "
            f"{head.dashboard_url}, first job {ready:.1f} s)"
        )
        trivial = trivial_asset()
        on_ray = ray_job_asset(TRIVIAL, shlex.join(command("trivial.py")))
        clients: dict[str, Any] = bench.clients(PIPES_CLIENTS)
        clients[RAY] = None  # made fresh per run (its message reader holds session state)
        say(
            f"  {reps} reps per client, interleaved; 1 untimed warm-up run per client first; "
            f"PipesRayJobClient(poll_interval={POLL_INTERVAL}) made fresh per run"
        )
        with dagster_instance(bench.instance_kind) as instance:

            def once(name: str, client: Any) -> Any:
                if name == RAY:
                    ray_client = PipesRayJobClient(
                        address=head.dashboard_url, poll_interval=POLL_INTERVAL
                    )
                    # The reader forwards the job's non-Pipes log lines (Ray's own "Running
                    # entrypoint ..." notices) to sys.stdout: keep them out of the report.
                    with contextlib.redirect_stdout(io.StringIO()):
                        return bench.materialize([on_ray], ray_client, instance)
                return bench.materialize([trivial], client, instance)

            measured = measure_interleaved(clients, reps, once, check=check_trivial, warmup=once)
    finally:
        leftovers = head.stop()
        if leftovers:
            say(
                "  WARNING: Ray processes still alive after stopping (now killed):\n    "
                + "\n    ".join(leftovers)
            )
        else:
            say("  Ray head stopped (no Ray process left)")
    results = client_results(measured)
    print_client_table(results)
    return {
        "title": TITLE,
        "method": (
            "Same trivial external script; Ray: PipesRayJobClient(address=<local head's Job "
            f"API>, poll_interval={POLL_INTERVAL}) made fresh per run, job entrypoint "
            "'python trivial.py'; other clients as in scenario 1; interleaved with rotating "
            "order; 1 untimed warm-up per client; wall time of materialize()."
        ),
        "params": {"reps": reps, "poll_interval": POLL_INTERVAL, "instance": bench.instance_kind},
        "clients": results,
        "ray_leftover_processes": leftovers,
    }
