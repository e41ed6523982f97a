"""A supervisor between the launcher on a Dask worker and the user's command.

The launcher starts it as ``python -I -S -c SOURCE CONFIG_JSON`` (`supervisor_argv`), so it
imports only the standard library, and as little of it as it can: it is on the launch path of
every run. It runs the command in its own session and, as a child subreaper, it also adopts
whatever the command orphans (a double-forked ``setsid`` daemon included). On every ending —
the command exits, a stop request, the launcher dies (EOF on the control pipe, or ``PDEATHSIG``),
or the launcher hangs (no heartbeat) — it SIGKILLs every descendant left, reaps them all, and
reports on the status pipe. The protocol:

* config (argv[1]): ``{"argv", "cwd", "parent_pid", "control_fd", "status_fd",
  "heartbeat_timeout", "termination_timeout"}``; the environment is the command's. Its stdout and
  stderr are the command's; the command's stdin is /dev/null.
* control_fd, lines in: ``hb`` (any line counts as a heartbeat); ``stop``: SIGINT to the
  command's group, SIGKILL to everything ``termination_timeout`` seconds later; no line for
  ``heartbeat_timeout`` seconds (<= 0: never): like ``stop``; EOF: SIGKILL to everything at once.
  SIGTERM or SIGHUP: like EOF if the parent is gone (PDEATHSIG), else like ``stop``.
* status_fd, JSON lines out: ``{"started": pid}`` or ``{"error", "errno", "kind"}`` (then exit),
  any number of ``{"note": text}``, then ``{"returncode", "maxrss_kib", "utime", "stime",
  "killed_descendants", "reason"}``, written once no descendant is left and the supervisor's
  own stdout and stderr are closed (the launcher then has all of the command's output), and exit
  0. ``reason``
  is what made the supervisor act first: ``exited`` (nothing), ``stopped``, ``hung``, or
  ``parent_gone`` (which overrides the others); ``killed_descendants`` counts the processes it
  SIGKILLed, the command included.
"""

from __future__ import annotations

import errno
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    import signal
    from typing import Any
else:
    # Start-up time: under -S, `import os` costs ~2 ms and `import signal` ~7 ms (it builds
    # enums), of a ~13 ms interpreter start-up; `posix` and `_signal`, which they wrap, are built
    # in. The names used here are the same.
    try:
        import posix as os
    except ImportError:  # not POSIX: SOURCE can still be read from this module
        import os
    try:
        import _signal as signal
    except ImportError:  # not CPython
        import signal

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
KILL_PHASE_SECONDS = 5.0  # give up on descendants that SIGKILL cannot end (uninterruptible sleep)
BACKSTOP_SECONDS = 1.0  # longest sleep: re-check the parent even without PDEATHSIG

# The source the launcher runs with -c; read once, here, so that it travels with this module when
# the module is pickled by value. Under -c there is no __file__ (and no need for it).
if __name__ == "__main__":
    SOURCE = ""
else:
    with open(__file__, encoding="utf-8") as _f:
        SOURCE = _f.read()


def supervisor_argv(config: dict[str, Any]) -> list[str]:
    """The argv that starts the supervisor with this interpreter, from this module's source.

    Args:
        config: The supervisor's configuration (see the module docstring).

    Returns:
        ``[sys.executable, "-I", "-S", "-c", SOURCE, CONFIG_JSON]``.
    """
    import json

    return [sys.executable, "-I", "-S", "-c", SOURCE, json.dumps(config)]


class _JSONContext:
    """What `_json.make_scanner` reads from a `json.JSONDecoder`."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


def _loads(text: str) -> Any:
    """`json.loads` from json's C half: `import json` would import re and enum, ~15 ms."""
    try:
        from _json import make_scanner
    except ImportError:  # not CPython
        import json

        return json.loads(text)
    return make_scanner(_JSONContext())(text, 0)[0]  # pyright: ignore[reportArgumentType]


def _json_line(fields: dict[str, int | float | str]) -> bytes:
    """One JSON object (str, int and finite float values) as an ASCII line."""
    try:
        from _json import encode_basestring_ascii as quote
    except ImportError:  # not CPython
        from json import dumps as quote
    items = (
        f"{quote(k)}: {quote(v) if isinstance(v, str) else repr(v)}" for k, v in fields.items()
    )
    return ("{" + ", ".join(items) + "}\n").encode("ascii")


def _prctl_address() -> int | None:
    """The address of libc's ``prctl``, or None without one (not Linux, or no ctypes)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import _ctypes  # `import ctypes` would cost ~5 ms more, for one function call

        return _ctypes.dlsym(_ctypes.dlopen(None), "prctl")  # pyright: ignore[reportArgumentType]
    except (ImportError, AttributeError, OSError):
        return None


def _prctl(address: int | None, option: int, arg: int) -> bool:
    """Call ``prctl(option, arg)``; return whether it succeeded."""
    if address is None:
        return False
    import _ctypes

    return _ctypes.call_function(address, (option, arg)) == 0


def _ignore_signal(signum: int, frame: object) -> None:
    """A no-op handler: the signal's number reaches the main loop through the wakeup fd."""


def _send(pid: int, signum: int, group: bool = False) -> bool:
    """Send a signal to a process (or a process group); return whether it was sent."""
    try:
        (os.killpg if group else os.kill)(pid, signum)
    except OSError:
        return False
    return True


def _error_kind(code: int) -> str:
    if code in (errno.ENOENT, errno.ENOTDIR):
        return "not_found"
    if code in (errno.EACCES, errno.EPERM):
        return "permission"
    return "other"


class _Supervisor:
    """One command's supervision, from its start to its report."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.configure(config)
        self.parent_pid: int = int(config.get("parent_pid") or 0)
        self.control_fd: int = int(config["control_fd"])
        self.status_fd: int = int(config["status_fd"])
        self.prctl = _prctl_address()
        self.subreaper = False
        self.wakeup_fd = -1
        self.pid = 0  # the command
        self.wait_status: int | None = None
        self.rusage: Any = None
        self.reason: str | None = None
        self.kill_at: float | None = None
        self.control_buffer = b""
        self.killed: set[int] = set()

    def configure(self, config: dict[str, Any]) -> None:
        """The session: the command, its cwd and environment, the timeouts."""
        self.argv: list[str] = list(config.get("argv") or [])
        self.cwd: str | None = config.get("cwd")
        # A spare supervisor started ahead of its session gets the command's environment here;
        # otherwise its own environment is the command's.
        self.env: Any = (
            {k.encode(): v.encode() for k, v in config["env"].items()}
            if config.get("env") is not None
            else os.environ
        )
        self.heartbeat_timeout = float(config.get("heartbeat_timeout") or 0)
        self.termination_timeout = float(config.get("termination_timeout") or 0)
        self.last_heard = time.monotonic()

    def await_session(self) -> bool:
        """A spare, set up already, waits for its session on the control pipe.

        Returns False when none comes: the control pipe's EOF, or the launcher's process gone.
        """
        poller = select.poll()
        poller.register(self.control_fd, select.POLLIN)
        poller.register(self.wakeup_fd, select.POLLIN)
        data = b""
        while not data.endswith(b"\n"):
            poller.poll(int(BACKSTOP_SECONDS * 1000))
            self.drain_signals()
            if self.parent_gone():
                return False
            try:
                chunk = os.read(self.control_fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return False
            data += chunk
        self.configure(_loads(data.decode("utf-8")))
        return True

    # -- reporting ------------------------------------------------------------------

    def write(self, fields: dict[str, int | float | str]) -> None:
        """Write a status line; never block, and stop writing once nobody reads."""
        if self.status_fd < 0:
            return
        try:
            os.write(self.status_fd, _json_line(fields))
        except BlockingIOError:  # the launcher does not read (hung): drop the line
            pass
        except OSError:
            self.status_fd = -1

    def note(self, text: str) -> None:
        """Tell the launcher what the supervisor did."""
        self.write({"note": text})

    def error(self, code: int, path: str, kind: str | None = None) -> None:
        """Report that the command could not be started."""
        message = f"{os.strerror(code)}: {path!r}"
        self.write({"error": message, "errno": code, "kind": kind or _error_kind(code)})

    # -- starting -------------------------------------------------------------------

    def setup(self) -> bool:
        """Signals, file descriptors and prctl; return whether the parent is still there."""
        read_end, write_end = os.pipe()  # non-inheritable, like every fd opened here
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self.wakeup_fd = read_end
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _ignore_signal)
        # Ctrl-C in the worker's terminal reaches the worker's group, this process included: the
        # launcher decides what a stop is.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for fd in (self.control_fd, self.status_fd):
            os.set_inheritable(fd, False)  # not the command's
            os.set_blocking(fd, False)
        self.subreaper = _prctl(self.prctl, PR_SET_CHILD_SUBREAPER, 1)
        _prctl(self.prctl, PR_SET_PDEATHSIG, signal.SIGTERM)
        return not self.parent_gone()

    def parent_gone(self) -> bool:
        """Whether the launcher's process is gone (this process was re-parented)."""
        return self.parent_pid > 0 and os.getppid() != self.parent_pid

    def program(self) -> str:
        """The command's program, found on the command's own PATH (as ``execvpe`` would)."""
        name = self.argv[0]
        if "/" in name:
            return name
        path = self.env.get(b"PATH", b"/usr/local/bin:/usr/bin:/bin").decode()
        for directory in path.split(":"):
            candidate = f"{directory or '.'}/{name}"
            if os.access(candidate, os.X_OK) and not _is_dir(candidate):
                return candidate
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", name)

    def start(self) -> bool:
        """Start the command; report ``started`` or ``error`` and return whether it started."""
        if not self.argv:
            self.write({"error": "empty command", "errno": errno.EINVAL, "kind": "other"})
            return False
        if self.cwd is not None:
            try:
                os.chdir(self.cwd)  # relative programs resolve from cwd, as with Popen(cwd=)
            except OSError as exc:
                self.error(exc.errno or errno.ENOENT, self.cwd, "cwd")
                return False
        try:
            # vfork-fast, with exec errors reported here. Signals ignored here (SIGINT) or by
            # Python (SIGPIPE, SIGXFSZ) get their defaults back; handled ones reset themselves.
            pid = os.posix_spawn(
                self.program(),
                self.argv,
                self.env,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)],
                setsid=True,
                setsigdef=(signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ),
                setsigmask=(),
            )
        except OSError as exc:
            self.error(exc.errno or errno.EINVAL, self.argv[0])
            return False
        self.pid = pid
        self.write({"started": pid})
        return True

    # -- supervising ----------------------------------------------------------------

    def supervise(self) -> None:
        """Wait for the command's exit, acting on the control pipe, signals and timeouts."""
        poller = select.poll()
        poller.register(self.wakeup_fd, select.POLLIN)
        poller.register(self.control_fd, select.POLLIN)
        while True:
            self.reap()
            if self.wait_status is not None:
                return
            now = time.monotonic()
            if self.kill_at is not None and now >= self.kill_at:
                self.kill_at = None
                self.kill_all("termination timeout: ")
                continue
            waits = [BACKSTOP_SECONDS]
            if self.reason is None and self.heartbeat_timeout > 0:
                if now - self.last_heard >= self.heartbeat_timeout:
                    self.note(f"no heartbeat from the launcher for {self.heartbeat_timeout:g} s")
                    self.request_stop("hung")
                    continue
                waits.append(self.last_heard + self.heartbeat_timeout - now)
            if self.kill_at is not None:
                waits.append(self.kill_at - now)
            wait = max(0.0, min(waits))
            events = poller.poll(int(wait * 1000) + 1)
            if time.monotonic() - now > wait + 1.0:
                # This process was stopped itself (the worker's whole group, say): give the
                # launcher a fresh heartbeat period rather than call it hung at once.
                self.last_heard = time.monotonic()
            for fd, _ in events:
                if fd == self.wakeup_fd:
                    self.read_signals()
                elif not self.read_control():
                    poller.unregister(fd)
                    self.launcher_gone()
            if self.parent_gone():
                self.launcher_gone()

    def drain_signals(self) -> bytes:
        """The numbers of the signals received since the last call, from the wakeup fd."""
        data = b""
        while True:
            try:
                data += os.read(self.wakeup_fd, 256)
            except BlockingIOError:
                return data

    def read_signals(self) -> None:
        """Act on SIGTERM and SIGHUP (SIGCHLD only wakes the loop up)."""
        data = self.drain_signals()
        if signal.SIGTERM in data or signal.SIGHUP in data:
            # PDEATHSIG, or a terminate request while the launcher lives
            if self.parent_gone():
                self.launcher_gone()
            else:
                self.request_stop("stopped")

    def read_control(self) -> bool:
        """Read the control pipe; return False at its EOF."""
        try:
            data = os.read(self.control_fd, 4096)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False
        self.last_heard = time.monotonic()
        *lines, rest = (self.control_buffer + data).split(b"\n")
        self.control_buffer = rest[-64:]
        if any(line.strip() == b"stop" for line in lines):
            self.request_stop("stopped")
        return True

    def request_stop(self, reason: str) -> None:
        """SIGINT to the command's group now, SIGKILL to everything after the timeout."""
        if self.reason is not None or not self.pid:
            return
        self.reason = reason
        if _send(self.pid, signal.SIGINT, group=True):
            self.note("sent SIGINT to the process group")
        self.kill_at = time.monotonic() + self.termination_timeout

    def launcher_gone(self) -> None:
        """The launcher died: SIGKILL everything at once (once)."""
        if self.reason == "parent_gone":
            return
        self.reason = "parent_gone"
        self.kill_at = None
        self.kill_all()

    # -- ending ---------------------------------------------------------------------

    def reap(self) -> bool:
        """Reap every exited child, keeping the command's status; return whether any is left."""
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.pid:
                self.wait_status, self.rusage = status, rusage

    def live_descendants(self) -> list[int]:
        """The pids of this process's descendants that are not zombies, from /proc."""
        children: dict[int, list[int]] = {}
        live: set[int] = set()
        try:
            names = os.listdir("/proc")
        except OSError:
            return []
        for name in names:
            if not name.isdigit():
                continue
            try:
                fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
                try:
                    stat = os.read(fd, 4096)
                finally:
                    os.close(fd)
            except OSError:  # gone meanwhile
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            state, ppid = stat[stat.rfind(b")") + 2 :].split(b" ", 2)[:2]
            children.setdefault(int(ppid), []).append(int(name))
            if state not in (b"Z", b"X"):
                live.add(int(name))
        found: list[int] = []
        todo = [os.getpid()]
        while todo:
            for pid in children.get(todo.pop(), ()):
                todo.append(pid)
                if pid in live:
                    found.append(pid)
        return found

    def kill_all(self, why: str = "") -> None:
        """SIGKILL every descendant and reap them, until no child is left (bounded in time).

        ``why`` prefixes the note (the grace period ran out, as opposed to clearing up what an
        exited command left behind).

        Each round kills every live descendant found; a killed process cannot fork any more, and
        the children of dying ones are re-parented here, so the rounds end quickly.
        """
        if self.pid and not self.subreaper:  # orphans went elsewhere: the group is all we know
            _send(self.pid, signal.SIGKILL, group=True)
        # While the command is unreaped its pgid cannot be reused: strike its group at once too.
        strike_group = self.pid > 0 and self.wait_status is None
        deadline = time.monotonic() + KILL_PHASE_SECONDS
        fresh = 0
        poller = select.poll()
        poller.register(self.wakeup_fd, select.POLLIN)
        while self.reap() and time.monotonic() < deadline:
            found = self.live_descendants()
            if strike_group:
                _send(self.pid, signal.SIGKILL, group=True)
                strike_group = False
            for pid in found:
                if _send(pid, signal.SIGKILL) and pid not in self.killed:
                    self.killed.add(pid)
                    fresh += 1
            if poller.poll(50):  # a SIGCHLD; any other signal changes nothing now
                self.drain_signals()
        if fresh:
            self.note(f"{why}sent SIGKILL to {fresh} processes")

    def report(self) -> None:
        """Write the command's outcome."""
        assert self.wait_status is not None
        self.write(
            {
                "returncode": os.waitstatus_to_exitcode(self.wait_status),
                "maxrss_kib": self.rusage.ru_maxrss,
                "utime": self.rusage.ru_utime,
                "stime": self.rusage.ru_stime,
                "killed_descendants": len(self.killed),
                "reason": self.reason or "exited",
            }
        )


def _is_dir(path: str) -> bool:
    try:
        return (os.stat(path).st_mode & 0o170000) == 0o040000
    except OSError:
        return False


def main() -> None:
    """Supervise the command that ``sys.argv[1]`` (the JSON config) describes, then exit.

    The exit, right after the last status line, skips the interpreter's finalization (~5 ms):
    the supervisor's stdout and stderr, the command's pipes, close as it reports.
    """
    config = _loads(sys.argv[1])
    supervisor = _Supervisor(config)
    # A spare sets up before its session comes: the launch waits only for the command's start.
    if not supervisor.setup():
        message = "the launcher exited before the command started"
        supervisor.write({"error": message, "errno": errno.ESRCH, "kind": "other"})
    elif config.get("spare") and not supervisor.await_session():
        pass  # the launcher's process ended before a session needed this one
    elif supervisor.start():
        try:
            supervisor.supervise()
            supervisor.kill_all()
        except BaseException:
            supervisor.kill_all()  # the last resort: leave nothing; the traceback goes to stderr
            raise
        # No descendant holds the command's stdout and stderr any more: closing this process's
        # copies ends them now, so the launcher has all of the output when the report comes.
        for fd in (1, 2):
            try:
                os.close(fd)
            except OSError:  # not open (no contextlib here: start-up time)
                continue
        supervisor.report()
    os._exit(0)


if __name__ == "__main__":
    main()
