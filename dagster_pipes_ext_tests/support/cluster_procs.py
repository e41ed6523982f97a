"""Process helpers on top of :mod:`processes`: free ports, stopping processes, a plain cluster.

The benchmarks take their processes from here and from :mod:`processes`.

:func:`processes.start_cluster` starts import-blocked workers in a cluster the caller keeps the
directories of; :class:`PlainCluster` starts plain ``dask worker`` processes with this process's
whole environment (``PYTHONPATH`` included) and removes its directory when stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from dagster_pipes_ext_tests.support.processes import (
    DaskProcesses,
    kill_survivors,
    start_scheduler,
    start_worker,
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_processes(procs: Sequence[psutil.Process], timeout: float = 10.0) -> None:
    """SIGTERM each process, SIGKILL those still alive after ``timeout``; each by its PID.

    :func:`processes.stop_pid` does the same for one process and its descendants.
    """
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    kill_survivors(alive)
    psutil.wait_procs(alive, timeout=timeout)


@dataclass
class PlainCluster(DaskProcesses):
    """A ``dask scheduler`` and plain (not import-blocked) ``dask worker`` processes, 127.0.0.1.

    Each worker runs without a nanny (one process: the PID held is the worker's), with
    ``nthreads`` task threads, this process's environment and its HTTP server on loopback.
    ``worker_dir`` is the temporary directory of the logs and worker spaces.
    """

    @classmethod
    def start(cls, *, name: str, nthreads: int = 4, n_workers: int = 1) -> PlainCluster:
        """Start the scheduler (free loopback port) and the workers; wait until all connected."""
        from distributed import Client

        workdir = Path(tempfile.mkdtemp(prefix=f"pipes-{name}-"))
        try:
            proc, address, _ = start_scheduler(workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        cluster = cls(address=address, scheduler=proc, worker_dir=str(workdir))
        # start_worker drops PYTHONPATH (its workers must not import the project): restore it.
        pythonpath = os.environ.get("PYTHONPATH")
        try:
            for i in range(n_workers):
                cluster.workers.append(
                    start_worker(
                        address,
                        workdir,
                        name=f"{name}-w{i}",
                        nthreads=nthreads,
                        blocked=False,
                        env_overrides={"PYTHONPATH": pythonpath} if pythonpath else None,
                        # Even without the dashboard a worker serves HTTP: loopback only.
                        extra_args=["--dashboard-address", "127.0.0.1:0"],
                    )
                )
            with Client(address, timeout=30, set_as_default=False) as client:
                client.wait_for_workers(n_workers, timeout=60)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        """Stop the workers, then the scheduler, each by PID; remove the directory."""
        try:
            super().stop()
        finally:
            shutil.rmtree(self.worker_dir, ignore_errors=True)
