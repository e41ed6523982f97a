"""The process supervisor: real processes, started as the launcher starts them."""

from __future__ import annotations

import ast
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

from dagster_pipes_ext.remote import supervisor
from dagster_pipes_ext.remote.supervisor import SOURCE, supervisor_argv
from dagster_pipes_ext_tests.conftest import script
from dagster_pipes_ext_tests.support.processes import pid_alive, wait_for

SUPERVISOR_PY = supervisor.__file__
PYTHON = sys.executable


class Status:
    """The read end of a status pipe, read line by line with timeouts."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.lines: list[dict[str, Any]] = []
        self.eof = False

    def _read(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
        *lines, self.buffer = (self.buffer + chunk).split(b"\n")
        self.lines += [json.loads(line) for line in lines]
        return True

    def wait_for(self, key: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first line with ``key``, reading until it comes."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if key in line:
                    return line
            if self.eof or not self._read(deadline):
                raise TimeoutError(f"no {key!r} status line; got {self.lines}")

    def until_eof(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every line, once the supervisor closed the pipe."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._read(deadline):
                raise TimeoutError(f"status pipe still open; got {self.lines}")
        return self.lines

    def notes(self) -> list[str]:
        return [line["note"] for line in self.lines if "note" in line]


class Processes:
    """What a test started: every pid is SIGCONTed and SIGKILLed, every fd closed, at the end."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen] = []
        self.pids: set[int] = set()
        self.fds: list[int] = []

    def pipe(self) -> tuple[int, int]:
        read_end, write_end = os.pipe()
        self.fds += [read_end, write_end]
        return read_end, write_end

    def close(self, fd: int) -> None:
        if fd in self.fds:
            self.fds.remove(fd)
            os.close(fd)

    def track(self, *pids: int) -> None:
        self.pids.update(pids)

    def cleanup(self) -> None:
        for pid in self.pids | {p.pid for p in self.popens}:
            if pid_alive(pid):
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        for popen in self.popens:
            popen.communicate(timeout=10)
        for fd in list(self.fds):
            self.close(fd)


@pytest.fixture
def procs() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        started.cleanup()


def _config(argv: list[str], **overrides: Any) -> dict[str, Any]:
    return {
        "argv": argv,
        "cwd": None,
        "heartbeat_timeout": 30.0,
        "termination_timeout": 5.0,
        **overrides,
    }


class Supervised:
    """A supervisor started by the test itself, exactly as the launcher starts it."""

    def __init__(
        self, procs: Processes, argv: list[str], stdin: int = subprocess.DEVNULL, **overrides: Any
    ) -> None:
        self.procs = procs
        control_r, self.control = procs.pipe()
        status_r, status_w = procs.pipe()
        config = _config(argv, **overrides)
        config.update(parent_pid=os.getpid(), control_fd=control_r, status_fd=status_w)
        self.proc = subprocess.Popen(
            supervisor_argv(config),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(control_r, status_w),
            close_fds=True,
        )
        procs.popens.append(self.proc)
        procs.close(control_r)
        procs.close(status_w)
        self.status = Status(status_r)

    def send(self, line: bytes) -> None:
        os.write(self.control, line)

    def finish(self, timeout: float = 10.0) -> tuple[dict[str, Any], bytes, bytes]:
        """The final status line, stdout and stderr, once the supervisor exited (with 0)."""
        self.status.until_eof(timeout)
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        final = self.status.lines[-1]
        return final, out, err


class ViaParent:
    """A supervisor started by a stand-in launcher process (scripts/sup_parent.py)."""

    def __init__(
        self,
        procs: Processes,
        tmp_path: Path,
        argv: list[str],
        hb_interval: float = 0.2,
        leak_control: bool = False,
        **overrides: Any,
    ) -> None:
        status_r, status_w = procs.pipe()
        extra = [str(tmp_path / "holder")] if leak_control else []
        self.log = open(tmp_path / "parent.log", "wb")
        self.parent = subprocess.Popen(
            [
                *(PYTHON, script("sup_parent.py"), SUPERVISOR_PY, str(status_w)),
                *(json.dumps(_config(argv, **overrides)), str(hb_interval), *extra),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            pass_fds=(status_w,),
        )
        procs.popens.append(self.parent)
        procs.close(status_w)
        self.status = Status(status_r)
        self.status.wait_for("started")
        holders = [int((tmp_path / "holder").read_text())] if leak_control else []
        procs.track(*holders)
        [sup] = [p for p in psutil.Process(self.parent.pid).children() if p.pid not in holders]
        self.supervisor = sup.pid
        procs.track(self.supervisor)

    def kill_parent(self) -> None:
        os.kill(self.parent.pid, signal.SIGKILL)
        self.parent.wait(timeout=10)
        self.log.close()


def _pids(path: Path, count: int, timeout: float = 10.0) -> list[int]:
    def read() -> list[int] | None:
        try:
            pids = [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return None
        return pids if len(pids) == count else None

    return wait_for(read, timeout, f"pids in {path}")


def _tracked(procs: Processes, pids: list[int]) -> list[int]:
    procs.track(*pids)
    return pids


def _family(pid: int) -> list[int]:
    return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]


def _all_gone(pids: list[int], timeout: float, what: str) -> float:
    """Wait until no pid names a live process; return how long it took."""
    start = time.monotonic()
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout, what, interval=0.01)
    return time.monotonic() - start


def _sh(command: str) -> list[str]:
    return ["sh", "-c", command]


# -- the command's own ending ------------------------------------------------------------


def test_exit_zero_reports_rusage_kills_background_child_and_passes_stdio(
    procs: Processes, tmp_path: Path
) -> None:
    pid_file = tmp_path / "bg"
    sup = Supervised(
        procs, _sh(f"echo out; echo err >&2; sleep 300 & echo $! > {pid_file}; exit 0")
    )
    started = sup.status.wait_for("started")
    final = sup.status.wait_for("returncode")
    [background] = _tracked(procs, _pids(pid_file, 1))
    # reported after every descendant was killed and reaped
    assert not pid_alive(background)
    if pid_alive(sup.proc.pid):
        assert psutil.Process(sup.proc.pid).children() == []
    final, out, err = sup.finish()
    assert started["started"] > 0
    assert final["returncode"] == 0
    assert final["reason"] == "exited"
    assert final["killed_descendants"] == 1
    assert final["maxrss_kib"] > 0
    assert isinstance(final["utime"], float) and isinstance(final["stime"], float)
    assert sup.status.notes() == ["sent SIGKILL to 1 processes"]
    assert (out, err) == (b"out\n", b"err\n")


@pytest.mark.parametrize(
    ("command", "returncode"), [("exit 3", 3), ("kill -TERM $$", -signal.SIGTERM)]
)
def test_exit_code_and_death_by_signal(procs: Processes, command: str, returncode: int) -> None:
    sup = Supervised(procs, _sh(command))
    final, _, _ = sup.finish()
    assert final["returncode"] == returncode
    assert final["killed_descendants"] == 0
    assert [next(iter(line)) for line in sup.status.lines] == ["started", "returncode"]


def test_command_exit_is_reported_at_once(procs: Processes, tmp_path: Path) -> None:
    """The exit wakes the supervisor (SIGCHLD), not a poll: reported within a few ms."""
    ready = tmp_path / "ready"
    command = (
        "import os, sys, time\n"
        "open(sys.argv[1], 'w').close()\n"
        "time.sleep(0.3)\n"  # the test is waiting on the status pipe by then
        "sys.stdout.write(repr(time.monotonic())); sys.stdout.flush()\n"
        "os._exit(0)\n"
    )
    sup = Supervised(procs, [PYTHON, "-c", command, str(ready)])
    wait_for(ready.exists, 10, "the command")
    sup.status.wait_for("returncode")
    arrived = time.monotonic()
    _, out, _ = sup.finish()
    latency = arrived - float(out)
    assert latency < 0.2, f"exit reported {latency * 1000:.1f} ms after it happened"


def test_command_gets_devnull_stdin_the_environment_and_no_other_fd(procs: Processes) -> None:
    os.environ["SUP_TEST_VALUE"] = "a value"
    try:
        # The supervisor's stdin stays open: `cat` would wait if the command inherited it. The
        # control and status pipes are not the command's: its shell has fds 0, 1 and 2 only.
        sup = Supervised(
            procs, _sh('cat; echo "$SUP_TEST_VALUE"; ls /proc/$$/fd'), stdin=subprocess.PIPE
        )
    finally:
        del os.environ["SUP_TEST_VALUE"]
    final, out, _ = sup.finish()
    assert final["returncode"] == 0
    assert out == b"a value\n0\n1\n2\n"


# -- a double-forked setsid daemon ------------------------------------------------------


def test_setsid_daemon_killed_when_the_command_exits(procs: Processes, tmp_path: Path) -> None:
    sup = Supervised(procs, [PYTHON, script("sup_daemon.py"), str(tmp_path / "pids"), "exit"])
    command, daemon = _tracked(procs, _pids(tmp_path / "pids", 2))
    final, _, _ = sup.finish()
    assert final["returncode"] == 0
    assert final["killed_descendants"] == 1
    assert not pid_alive(daemon) and not pid_alive(command)


def test_setsid_daemon_killed_when_the_parent_is_sigkilled(
    procs: Processes, tmp_path: Path
) -> None:
    run = ViaParent(
        procs, tmp_path, [PYTHON, script("sup_daemon.py"), str(tmp_path / "pids"), "wait"]
    )
    pids = _tracked(procs, _pids(tmp_path / "pids", 2))
    family = _family(run.supervisor)
    assert set(pids) <= set(family)
    run.kill_parent()
    _all_gone(family, 5, "the supervisor and the command's processes")
    final = run.status.until_eof()[-1]
    assert final["reason"] == "parent_gone"
    assert final["returncode"] == -signal.SIGKILL


def test_pdeathsig_alone_when_another_process_holds_the_control_pipe(
    procs: Processes, tmp_path: Path
) -> None:
    run = ViaParent(
        procs,
        tmp_path,
        [PYTHON, script("sup_daemon.py"), str(tmp_path / "pids"), "wait"],
        leak_control=True,
        hb_interval=5.0,
    )
    _tracked(procs, _pids(tmp_path / "pids", 2))
    family = _family(run.supervisor)
    run.kill_parent()
    # PDEATHSIG acts at once; the once-a-second check of the parent pid would take longer
    assert _all_gone(family, 5, "the supervisor and the command's processes") < 0.5
    assert run.status.until_eof()[-1]["reason"] == "parent_gone"


def test_setsid_daemon_killed_on_stop(procs: Processes, tmp_path: Path) -> None:
    sup = Supervised(procs, [PYTHON, script("sup_daemon.py"), str(tmp_path / "pids"), "wait"])
    command, daemon = _tracked(procs, _pids(tmp_path / "pids", 2))
    sup.send(b"stop\n")
    final, _, _ = sup.finish()
    assert (final["reason"], final["returncode"]) == ("stopped", 0)
    assert final["killed_descendants"] == 1
    assert sup.status.notes() == ["sent SIGINT to the process group", "sent SIGKILL to 1 processes"]
    assert not pid_alive(daemon) and not pid_alive(command)


# -- stop --------------------------------------------------------------------------------


def _sigint_command(tmp_path: Path, mode: str) -> list[str]:
    return [PYTHON, script("sup_sigint.py"), str(tmp_path / "ready"), mode]


def _wait_ready(tmp_path: Path) -> None:
    wait_for((tmp_path / "ready").exists, 10, "the command's SIGINT disposition")


def test_stop_lets_a_command_that_handles_sigint_exit(procs: Processes, tmp_path: Path) -> None:
    sup = Supervised(procs, _sigint_command(tmp_path, "graceful"), termination_timeout=10.0)
    _wait_ready(tmp_path)
    stopped_at = time.monotonic()
    sup.send(b"hb\nstop\n")
    final, out, _ = sup.finish()
    assert time.monotonic() - stopped_at < 5
    assert (final["reason"], final["returncode"], final["killed_descendants"]) == ("stopped", 7, 0)
    assert out == b"graceful\n"


def test_stop_sigkills_a_command_ignoring_sigint_after_the_timeout(
    procs: Processes, tmp_path: Path
) -> None:
    sup = Supervised(procs, _sigint_command(tmp_path, "ignore"), termination_timeout=1.0)
    _wait_ready(tmp_path)
    stopped_at = time.monotonic()
    sup.send(b"stop\n")
    sup.status.wait_for("returncode")
    elapsed = time.monotonic() - stopped_at
    final, _, _ = sup.finish()
    assert 1.0 <= elapsed < 1.5
    assert (final["reason"], final["returncode"], final["killed_descendants"]) == (
        "stopped",
        -signal.SIGKILL,
        1,
    )


def test_sigterm_to_the_supervisor_is_a_stop(procs: Processes, tmp_path: Path) -> None:
    sup = Supervised(procs, _sigint_command(tmp_path, "graceful"))
    _wait_ready(tmp_path)
    sup.proc.send_signal(signal.SIGTERM)
    final, _, _ = sup.finish()
    assert (final["reason"], final["returncode"]) == ("stopped", 7)


def test_control_eof_kills_at_once(procs: Processes, tmp_path: Path) -> None:
    sup = Supervised(procs, _sigint_command(tmp_path, "graceful"))
    _wait_ready(tmp_path)
    procs.close(sup.control)
    final, out, _ = sup.finish()
    assert (final["reason"], final["returncode"]) == ("parent_gone", -signal.SIGKILL)
    assert out == b""


# -- a hung launcher ---------------------------------------------------------------------


@pytest.mark.slow
def test_hung_parent_stops_the_command_after_the_heartbeat_timeout(
    procs: Processes, tmp_path: Path
) -> None:
    heartbeat_timeout, termination_timeout = 1.0, 0.5
    run = ViaParent(
        procs,
        tmp_path,
        [PYTHON, script("sup_daemon.py"), str(tmp_path / "pids"), "ignore"],
        hb_interval=0.1,
        heartbeat_timeout=heartbeat_timeout,
        termination_timeout=termination_timeout,
    )
    _tracked(procs, _pids(tmp_path / "pids", 2))
    family = _family(run.supervisor)
    time.sleep(heartbeat_timeout * 1.5)  # heartbeats keep it going
    assert all(pid_alive(p) for p in family)
    os.kill(run.parent.pid, signal.SIGSTOP)
    elapsed = _all_gone(
        family, heartbeat_timeout + termination_timeout + 2, "the command after the timeouts"
    )
    assert elapsed >= heartbeat_timeout + termination_timeout - 0.2
    final = run.status.until_eof()[-1]
    assert (final["reason"], final["returncode"]) == ("hung", -signal.SIGKILL)
    assert run.status.notes()[0] == "no heartbeat from the launcher for 1 s"


# -- a process tree --------------------------------------------------------------------


def test_multiprocessing_pool_tree_killed_on_parent_sigkill(
    procs: Processes, tmp_path: Path
) -> None:
    run = ViaParent(procs, tmp_path, ["bash", script("sup_pool.sh"), str(tmp_path / "pids")])
    pool = _tracked(procs, _pids(tmp_path / "pids", 3))
    family = _family(run.supervisor)
    assert set(pool) <= set(family) and len(family) >= 5  # supervisor, bash, python, 2 workers
    run.kill_parent()
    _all_gone(family, 5, "the pool's process tree")
    assert run.status.until_eof()[-1]["killed_descendants"] == len(family) - 1


# -- start failures --------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing program", "not executable", "missing cwd"])
def test_start_failure(procs: Processes, tmp_path: Path, case: str) -> None:
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    argv, cwd, kind, path = {
        "missing program": (["no-such-program-xyz"], None, "not_found", "no-such-program-xyz"),
        "not executable": ([str(plain)], None, "permission", str(plain)),
        "missing cwd": (["true"], str(tmp_path / "nowhere"), "cwd", str(tmp_path / "nowhere")),
    }[case]
    sup = Supervised(procs, argv, cwd=cwd)
    final, out, err = sup.finish()
    assert len(sup.status.lines) == 1
    assert final["kind"] == kind
    assert final["errno"] in (2, 13)
    assert repr(path) in final["error"]
    assert (out, err) == (b"", b"")


def test_relative_program_resolves_from_cwd(procs: Processes, tmp_path: Path) -> None:
    program = tmp_path / "hello.sh"
    program.write_text("#!/bin/sh\necho hello from $(pwd)\n")
    program.chmod(0o755)
    final, out, _ = Supervised(procs, ["./hello.sh"], cwd=str(tmp_path)).finish()
    assert final["returncode"] == 0
    assert out == f"hello from {tmp_path}\n".encode()


# -- the source itself -------------------------------------------------------------------


def test_source_imports_only_the_standard_library() -> None:
    imported = set()
    for node in ast.walk(ast.parse(SOURCE)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            imported.add((node.module or "").split(".")[0])
    assert imported, "no imports found"
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert Path(SUPERVISOR_PY).read_text(encoding="utf-8") == SOURCE


def test_runs_with_nothing_but_the_standard_library(procs: Processes, tmp_path: Path) -> None:
    """-I -S: no site-packages, no PYTHONPATH; and a `dagster` that fails if imported anyway."""
    (tmp_path / "dagster.py").write_text("raise ImportError('dagster imported')\n")
    os.environ["PYTHONPATH"] = str(tmp_path)
    try:
        sup = Supervised(
            procs, [PYTHON, "-c", "import sys; print('site' in sys.modules)"], cwd=str(tmp_path)
        )
    finally:
        del os.environ["PYTHONPATH"]
    assert sup.proc.args[:4] == [PYTHON, "-I", "-S", "-c"]  # type: ignore[index]
    final, out, err = sup.finish()
    # the command itself, a normal Python, does get site (and the environment)
    assert (final["returncode"], out, err) == (0, b"True\n", b"")


def test_supervisor_argv_pickled_by_value(tmp_path: Path) -> None:
    """Unpickled where the package cannot be imported, supervisor_argv still has its source."""
    cloudpickle.register_pickle_by_value(supervisor)
    try:
        payload = cloudpickle.dumps(supervisor_argv)
    finally:
        cloudpickle.unregister_pickle_by_value(supervisor)
    code = (
        "import pickle, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('dagster_pipes_ext'): raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "argv = pickle.loads(sys.stdin.buffer.read())({'argv': ['true']})\n"
        "sys.stdout.write(argv[4])\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", code], input=payload, capture_output=True, timeout=30, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == SOURCE


def test_comm_with_spaces_and_parentheses_is_parsed(procs: Processes, tmp_path: Path) -> None:
    """A descendant whose comm is ``a) (b c`` is found and killed like any other."""
    pid_file = tmp_path / "odd"
    child = (
        "import os, sys, time\n"
        "open('/proc/self/comm', 'w').write('a) (b c')\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "time.sleep(300)\n"
    )
    command = f'"$0" -c "$1" {pid_file} & while [ ! -s {pid_file} ]; do sleep 0.01; done'
    sup = Supervised(procs, ["sh", "-c", command, PYTHON, child])
    final, _, _ = sup.finish()
    [odd] = _tracked(procs, _pids(pid_file, 1))
    assert not pid_alive(odd)
    assert final["killed_descendants"] == 1
