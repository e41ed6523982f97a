"""A real single-node Slurm (Debian's ``slurmctld slurmd slurm-client munge``) on 127.0.0.1.

Everything lives in one temporary directory: ``slurm.conf``, the munge key and socket, Slurm's
state and spool directories, the daemons' logs. ``/etc/slurm`` and ``/etc/munge`` are not read.
The three daemons run in the foreground as children of the test process (``munged -F`` as the
``munge`` user, ``slurmctld -D`` and ``slurmd -D`` as root), so their PIDs are ours and
:meth:`SingleNodeSlurm.stop` stops each one by PID.

Clients (``sbatch``, ``squeue``, ``scancel``, ``sinfo``; dask-jobqueue runs them with the test
process's environment) find the cluster through ``SLURM_CONF`` alone: the munge socket is named in
``slurm.conf`` (``AuthInfo=socket=...``), Slurm has no environment variable for it. Use
:meth:`SingleNodeSlurm.activate` to put :attr:`SingleNodeSlurm.env` into ``os.environ``
(dask-jobqueue has no ``env=`` argument).

Jobs run the submitting process's environment (``sbatch`` exports everything by default). A
dask-jobqueue job script runs ``<python> -m distributed.cli.dask_worker ...``, where ``<python>`` is
``SLURMCluster(python=...)``, by default ``sys.executable``: pass ``python=sys.executable`` (the
venv's interpreter) explicitly.

Process bookkeeping: ``slurmstepd`` (the parent of every job's processes) calls ``setsid`` and is
re-parented to PID 1, so it is not a descendant of the test process; it clears its environment but
keeps slurmd's working directory (:attr:`SingleNodeSlurm.root`). A job's processes carry
``SLURM_JOB_ID`` and, submitted with :attr:`SingleNodeSlurm.env`, this cluster's ``SLURM_CONF``.
:meth:`SingleNodeSlurm.processes` finds them all (also a job's double-forked daemon, which
``proctrack/linuxproc`` loses and ``scancel`` does not kill). On stop, jobs are cancelled, the
daemons stopped by PID, and anything of this cluster still alive is killed and reported in
:attr:`SingleNodeSlurm.leaked`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from dagster_pipes_ext_tests.support.processes import stop_pid, wait_for

SERVERS_REQUIRED_ENV = "DAGSTER_PIPES_EXT_SERVERS_REQUIRED"
"""Set to ``1`` (CI does) to turn a missing server package into a failure, not a skip."""

INSTALL_HINT = "apt-get install -y slurmctld slurmd slurm-client munge"

NODE = "localhost"
PARTITION = "debug"
CPUS = 2
REAL_MEMORY_MB = 4096
"""What ``slurm.conf`` declares for the node: jobs may ask ``--mem`` up to this."""

_DAEMONS = ("munged", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")


def missing_requirements() -> list[str]:
    """The Slurm/munge programs not found, empty when everything is installed."""
    missing = [name for name in _DAEMONS if shutil.which(name, path=_sbin_path()) is None]
    missing += [name for name in _CLIENTS if shutil.which(name) is None]
    try:
        pwd.getpwnam("munge")
    except KeyError:
        missing.append("the munge user")
    if os.geteuid() != 0:
        missing.append("root (slurmd runs jobs as any user; munged must start as `munge`)")
    return missing


def skip_or_fail_reason() -> str | None:
    """Why a real Slurm cannot start here (with how to install it), or ``None`` if it can."""
    missing = missing_requirements()
    if not missing:
        return None
    return f"single-node Slurm unavailable (missing: {', '.join(missing)}); {INSTALL_HINT}"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail when ``DAGSTER_PIPES_EXT_SERVERS_REQUIRED=1`` (CI)."""
    if os.environ.get(SERVERS_REQUIRED_ENV) == "1":
        pytest.fail(f"{reason} ({SERVERS_REQUIRED_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def require_slurm() -> None:
    """Skip (or fail on CI) when the Debian Slurm packages are missing."""
    reason = skip_or_fail_reason()
    if reason:
        skip_or_fail(reason)


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SingleNodeSlurm:
    """One ``slurmctld`` + one ``slurmd`` (node ``localhost``, 2 CPUs) + ``munged``, all ours."""

    root: Path
    conf: Path
    munge_socket: Path
    ctld_port: int
    slurmd_port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    leaked: list[str] = field(default_factory=list)
    """Processes :meth:`stop` had to kill after the daemons were gone (should stay empty)."""
    startup_seconds: float = 0.0

    partition: str = PARTITION
    node: str = NODE

    @property
    def env(self) -> dict[str, str]:
        """What a client process (and through ``sbatch``, each job) needs in its environment."""
        return {"SLURM_CONF": str(self.conf)}

    # --- starting -------------------------------------------------------------------------

    @classmethod
    def start(cls, timeout: float = 30.0) -> SingleNodeSlurm:
        """Write the configuration, start the three daemons, wait until the node is idle."""
        started = time.monotonic()
        root = Path(tempfile.mkdtemp(prefix="pipes-slurm-"))
        # munged checks every directory on its paths: the socket's directory must be
        # searchable by all, and nothing on the way writable by others (except sticky /tmp).
        root.chmod(0o755)
        munge_dir = root / "munge"
        munge_dir.mkdir(mode=0o755)
        for sub in ("state", "spool", "log"):
            (root / sub).mkdir(mode=0o755)
        munge = pwd.getpwnam("munge")
        os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
        key = munge_dir / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)

        slurm = cls(
            root=root,
            conf=root / "slurm.conf",
            munge_socket=munge_dir / "munge.socket",
            ctld_port=free_port(),
            slurmd_port=free_port(),
        )
        (root / "plugstack.conf").write_text("")
        slurm.conf.write_text(slurm._slurm_conf())
        try:
            slurm._start_munged(munge)
            slurm._start_daemon("slurmctld", ["slurmctld", "-D", "-f", str(slurm.conf)])
            slurm._start_daemon("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(slurm.conf)])
            remaining = max(1.0, timeout - (time.monotonic() - started))
            wait_for(
                slurm._node_idle, timeout=remaining, what="the Slurm node to be idle", interval=0.1
            )
        except BaseException as exc:
            logs = slurm.logs()
            slurm.stop()
            if isinstance(exc, Exception):
                raise RuntimeError(f"single-node Slurm did not start: {exc}\n{logs}") from exc
            raise
        slurm.startup_seconds = time.monotonic() - started
        return slurm

    def _slurm_conf(self) -> str:
        r = self.root
        return f"""\
# Generated by dagster_pipes_ext_tests/support/slurm.py: one node, loopback only, all in {r}.
ClusterName=pipes-test
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
# Bind to the configured address (127.0.0.1), never to INADDR_ANY.
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
PlugStackConfig={r}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
# A cancelled job's processes get SIGTERM, then SIGKILL this many seconds later.
KillWait=5
SlurmdTimeout=30
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={REAL_MEMORY_MB} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""

    def _daemon_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env["PATH"] = _sbin_path()
        return env

    def _start_munged(self, munge: pwd.struct_passwd) -> None:
        d = self.munge_socket.parent
        args = [
            "munged",
            "-F",
            f"--socket={self.munge_socket}",
            f"--key-file={d / 'munge.key'}",
            f"--pid-file={d / 'munged.pid'}",
            f"--log-file={d / 'munged.log'}",
            f"--seed-file={d / 'munged.seed'}",
        ]
        with open(self.root / "log" / "munged.out", "wb") as log:
            self.procs["munged"] = subprocess.Popen(
                [shutil.which("munged", path=_sbin_path()) or "munged", *args[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=d,
                env=self._daemon_env(),
                user=munge.pw_uid,
                group=munge.pw_gid,
                extra_groups=[],
            )
        wait_for(
            lambda: self.munge_socket.exists() or self._died("munged"),
            timeout=10,
            what="munged's socket",
        )
        self._raise_if_died("munged")

    def _start_daemon(self, name: str, args: list[str]) -> None:
        exe = shutil.which(args[0], path=_sbin_path()) or args[0]
        with open(self.root / "log" / f"{name}.out", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [exe, *args[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                env=self._daemon_env(),
            )

    def _died(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is not None

    def _raise_if_died(self, name: str) -> None:
        if self._died(name):
            raise RuntimeError(f"{name} exited with code {self.procs[name].returncode}")

    def _node_idle(self) -> bool:
        for name in ("slurmctld", "slurmd"):
            self._raise_if_died(name)
        out = self.run(["sinfo", "-h", "-n", NODE, "-o", "%T"], check=False)
        return out.returncode == 0 and out.stdout.strip() == "idle"

    # --- using ----------------------------------------------------------------------------

    def run(self, args: list[str], check: bool = True, timeout: float = 30.0):
        """Run a Slurm client command against this cluster; return the CompletedProcess."""
        return subprocess.run(
            args,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    @contextmanager
    def activate(self) -> Iterator[dict[str, str]]:
        """Put :attr:`env` into ``os.environ`` (for dask-jobqueue), restoring it afterwards."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield self.env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def job_ids(self) -> list[str]:
        """Every job slurmctld still knows as pending, running or completing."""
        out = self.run(["squeue", "-h", "-o", "%i"], check=False)
        return out.stdout.split() if out.returncode == 0 else []

    def cancel_all(self, timeout: float = 20.0, settle: float = 10.0) -> list[psutil.Process]:
        """``scancel`` every job; wait until none is listed and their processes are gone.

        First until slurmctld lists no job and no ``slurmstepd`` of this cluster is left (up to
        ``timeout``), then up to ``settle`` seconds more for the jobs' processes: a process
        that got SIGTERM can outlive its ``slurmstepd`` briefly (a dask nanny closing its
        worker), and one that escaped it (double fork) is not killed by ``scancel`` at all.
        Returns the job processes still alive (``stop`` kills them and lists them in
        :attr:`leaked`).
        """
        ids = self.job_ids()
        if ids:
            self.run(["scancel", *ids], check=False)
        for predicate, seconds in (
            (lambda: not self.job_ids() and not self._stepds(), timeout),
            (lambda: not self.job_processes(), settle),
        ):
            try:
                wait_for(predicate, timeout=seconds, what="cancelled Slurm jobs", interval=0.1)
            except TimeoutError:
                break
        return self.job_processes()

    def _stepds(self) -> list[psutil.Process]:
        return [p for p in self.job_processes() if _name(p).startswith("slurmstepd")]

    def processes(self) -> list[psutil.Process]:
        """Live processes of this cluster: daemons, ``slurmstepd``-s, jobs' processes."""
        found: dict[int, psutil.Process] = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    found[proc.pid] = psutil.Process(proc.pid)
                except psutil.NoSuchProcess:
                    continue
                for c in _children(proc.pid):
                    found.setdefault(c.pid, c)
        found.update({p.pid: p for p in self.job_processes()})
        return [p for p in found.values() if _alive(p)]

    def job_processes(self) -> list[psutil.Process]:
        """Each ``slurmstepd`` of this cluster, its descendants, and any process of its jobs.

        A ``slurmstepd`` is ours when it works in :attr:`root`; a job's process is ours when
        its environment has ``SLURM_JOB_ID`` and this cluster's ``SLURM_CONF``.
        """
        found: dict[int, psutil.Process] = {}
        me = os.getpid()
        root, conf = str(self.root), str(self.conf)
        daemons = {p.pid for p in self.procs.values()}
        for p in psutil.process_iter():
            if p.pid == me or p.pid in daemons:
                continue
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                if p.name().startswith("slurmstepd"):
                    ours = p.cwd() == root
                else:
                    env = p.environ()
                    ours = "SLURM_JOB_ID" in env and env.get("SLURM_CONF") == conf
                if ours:
                    found[p.pid] = p
                    for c in p.children(recursive=True):
                        found.setdefault(c.pid, c)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return [p for p in found.values() if _alive(p)]

    def logs(self) -> str:
        """The tail of each daemon's log, for failure messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            parts.append(f"--- {path.name}\n{text[-3000:]}")
        return "\n".join(parts)

    # --- stopping -------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged by PID, kill any leftover."""
        if self.procs.get("slurmctld") and not self._died("slurmctld"):
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None:
                continue
            stop_pid(proc.pid)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        survivors = self.processes()
        for p in survivors:
            try:
                self.leaked.append(f"{p.pid}: {' '.join(p.cmdline())[:200]}")
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(survivors, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SingleNodeSlurm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _sbin_path() -> str:
    """PATH with the sbin directories, where Debian puts the daemons."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    for extra in ("/usr/sbin", "/sbin", "/usr/bin"):
        if extra not in parts:
            parts.append(extra)
    return os.pathsep.join(parts)
