"""The launcher that runs on a Dask worker.

This module is shipped to workers by value (cloudpickle), so a worker needs no copy of
``dagster_pipes_ext``. It may import only the standard library and ``distributed``: never
``dagster`` and never another module of this package.

One call of :func:`launch` is one Pipes session on the worker. It:

1. refuses to run if the session was already claimed by an earlier delivery of the same task
   (Dask silently re-runs tasks whose worker died; external code must not run twice);
2. writes the context data to a worker-local file and starts the command in its own process
   group with the stock ``DAGSTER_PIPES_CONTEXT``/``DAGSTER_PIPES_MESSAGES`` file params;
3. tails the message file (complete lines only) and the process's stdout/stderr, and sends
   them as batched, sequence-numbered scheduler events on the session's topic;
4. obeys the session's stop event (SIGINT to the group, SIGKILL after a timeout);
5. returns a :class:`LaunchOutcome`.

It also holds the small functions the client runs on the scheduler with ``run_on_scheduler``
(subscribe, task state, dashboard check, session clean-up): the scheduler cannot import this
package either, so they travel the same way.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import deque
from typing import Any, Literal, TypedDict

# Keys of the Pipes bootstrap environment variables (the dagster-pipes protocol).
PIPES_CONTEXT_ENV = "DAGSTER_PIPES_CONTEXT"
PIPES_MESSAGES_ENV = "DAGSTER_PIPES_MESSAGES"

# Record kinds inside an event batch.
REC_START = "start"  # launcher facts, once, before the command starts
REC_MESSAGES = "m"  # complete Pipes message lines, "\n"-joined (JSON, parsed by the orchestrator)
REC_STDOUT = "o"
REC_STDERR = "e"
REC_PID = "pid"  # the command's process id, once it started
REC_NOTE = "note"  # a launcher notice for the run's log (e.g. "sent SIGINT")
REC_END = "end"  # the launcher's outcome, alone in the last batch, ahead of the task's result

STDERR_TAIL_BYTES = 4096
# Where a worker process keeps the launchers it unpickled (see ``launcher_entry``), and where the
# scheduler's metadata holds the published ones.
_ENTRY_CACHE_MODULE = "__dagster_pipes_ext_launchers__"
LAUNCHER_METADATA_KEY = ("dagster-pipes-ext", "launcher")
_READ_CHUNK = 1 << 20


class LaunchSpec(TypedDict):
    """What the orchestrator sends to the worker for one session."""

    session_id: str
    topic: str
    claim_event: str
    stop_event: str
    command: list[str]
    env: dict[str, str]
    cwd: str | None
    context_data: dict[str, Any]
    forward_stdio: bool
    stop_when_abandoned: bool
    termination_timeout_seconds: float
    max_batch_bytes: int
    poll_interval_seconds: float


class EventBatch(TypedDict):
    """One scheduler event on the session topic: a sequence number and ordered records."""

    s: int
    r: list[list[Any]]


class LaunchOutcome(TypedDict):
    """What the launcher task returns to the orchestrator."""

    status: Literal["exited", "stopped", "redelivered", "launch_failed", "launcher_missing"]
    returncode: int | None
    last_seq: int
    worker: str
    hostname: str
    pid: int | None
    started_at: float | None
    ended_at: float
    stderr_tail: str
    error: str | None
    max_rss_kib: int | None
    cpu_user_seconds: float | None
    cpu_system_seconds: float | None


def encode_param(value: Any) -> str:
    """Encode a Pipes bootstrap param exactly as ``dagster_pipes.encode_param`` does."""
    return base64.b64encode(zlib.compress(json.dumps(value).encode("utf-8"))).decode("utf-8")


class _Sender:
    """Sends ordered, sequence-numbered batches of records as scheduler events.

    Only the task thread calls it, so events reach the orchestrator before the task result.
    """

    def __init__(self, worker: Any, topic: str, max_batch_bytes: int) -> None:
        self._worker = worker
        self._topic = topic
        self._max_bytes = max_batch_bytes
        self._records: list[list[Any]] = []
        self._size = 0
        self.last_seq = -1

    def add(self, kind: str, data: Any, size: int = 64) -> None:
        self._records.append([kind, data])
        self._size += size
        if self._size >= self._max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._records:
            return
        self.last_seq += 1
        batch: EventBatch = {"s": self.last_seq, "r": self._records}
        self._records = []
        self._size = 0
        self._worker.log_event(self._topic, batch)


class _LineTail:
    """Reads the complete lines appended to a file, as text chunks of whole lines.

    A partial last line waits for its newline. The launcher forwards the chunks as they are: the
    orchestrator splits and parses the lines, so the per-message cost on the worker is nil.
    """

    def __init__(self, path: str, max_chunk_bytes: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._partial = b""
        self._max = max(1, max_chunk_bytes)

    def read_chunks(self) -> list[bytes]:
        """The complete lines appended since the last call, in chunks of about ``max`` bytes."""
        chunks: list[bytes] = []
        while True:
            data = os.read(self._fd, _READ_CHUNK)
            if not data:
                return chunks
            more = len(data) == _READ_CHUNK
            if self._partial:
                data = self._partial + data
            end = data.rfind(b"\n") + 1
            self._partial = data[end:]
            self._split(data, end, chunks)
            if not more:
                return chunks

    def _split(self, data: bytes, end: int, chunks: list[bytes]) -> None:
        start = 0
        while end - start > self._max:
            cut = data.rfind(b"\n", start, start + self._max) + 1
            if cut <= start:  # one line longer than the limit: it goes whole
                cut = data.find(b"\n", start + self._max) + 1
            chunks.append(data[start:cut])
            start = cut
        if end > start:
            chunks.append(data[start:end])

    def read_rest(self) -> list[bytes]:
        """The chunks left at end of stream, including an unterminated last line."""
        chunks = self.read_chunks()
        if self._partial.strip():
            chunks.append(self._partial + b"\n")
        self._partial = b""
        return chunks

    def close(self) -> None:
        os.close(self._fd)


def _pump_stream(fd: int, kind: str, out: queue.Queue[tuple[str, str] | None]) -> None:
    """Forward a pipe's text to ``out`` chunk by chunk until EOF."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                tail = decoder.decode(b"", final=True)
                if tail:
                    out.put((kind, tail))
                return
            text = decoder.decode(chunk)
            if text:
                out.put((kind, text))
    finally:
        out.put(None)
        with contextlib.suppress(OSError):
            os.close(fd)


def _with_deathsig(argv: list[str], env: dict[str, str], cwd: str | None) -> tuple[list[str], Any]:
    """Make the command die with the worker thread that started it (Linux ``PDEATHSIG``).

    Returns the argv to start and a preexec function (or ``None``). util-linux's ``setpriv`` sets
    the signal and then execs the command, keeping the fast ``vfork`` path of ``subprocess``; a
    preexec function forces a full ``fork`` of the (large) worker process instead, measured at
    ~6-13 ms per launch. The program is resolved first so that a missing command still raises
    ``FileNotFoundError`` here rather than failing inside ``setpriv``.
    """
    if not sys.platform.startswith("linux"):
        return argv, None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return argv, _pdeathsig_preexec()
    if cwd is not None and not os.path.isdir(cwd):
        raise FileNotFoundError(2, "No such file or directory", cwd)
    program = argv[0]
    if os.sep in program:
        path = os.path.join(cwd or os.getcwd(), program)
        if not os.path.exists(path):
            raise FileNotFoundError(2, "No such file or directory", program)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise PermissionError(13, "Permission denied", program)
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", program)
        path = found
    return [setpriv, "--pdeathsig", "KILL", "--", path, *argv[1:]], None


def _pdeathsig_preexec() -> Any:
    """A preexec function that kills the child if the launching worker dies (Linux only)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def _preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return _preexec


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _rpc(worker: Any, op: str, **kwargs: Any) -> Any:
    """Call a scheduler handler from the task thread through the worker's own connection pool."""
    from distributed.utils import sync

    return sync(worker.loop, getattr(worker.scheduler, op), **kwargs)


def _claim(worker: Any, name: str) -> bool:
    """Set the session's claim event; return whether an earlier delivery had already set it.

    One scheduler call (``claim_session`` run there); two event calls where the scheduler blocks
    ``run_function``.
    """
    from distributed.protocol.pickle import dumps

    try:
        response = _rpc(
            worker,
            "run_function",
            function=dumps(claim_session),
            args=dumps((name,)),
            kwargs=dumps({}),
            wait=True,
        )
        if response.get("status") == "OK":
            return bool(response["result"])
    except Exception:
        pass  # run_function is blocked on this scheduler
    if _rpc(worker, "event_is_set", name=name):
        return True
    _rpc(worker, "event_set", name=name)
    return False


def _watch_stop(worker: Any, name: str, stop: threading.Event, done: threading.Event) -> None:
    """Long-poll the session's stop event on the scheduler until the launcher is done."""
    while not done.is_set():
        try:
            if _rpc(worker, "event_wait", name=name, timeout=2.0):
                stop.set()
                return
        except Exception:
            # The scheduler may be briefly unreachable; the launcher's own loop is unaffected.
            if done.wait(1.0):
                return


def _current_task_key() -> Any:
    try:
        from distributed.worker import thread_state

        return getattr(thread_state, "key", None)
    except ImportError:
        return None


def _abandoned(worker: Any, key: Any) -> bool:
    """Whether the scheduler released this task (Dask never interrupts a running one)."""
    if key is None:
        return False
    ts = getattr(getattr(worker, "state", None), "tasks", {}).get(key)
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


def _worker_closing(worker: Any) -> bool:
    status = getattr(getattr(worker, "status", None), "name", "")
    return status in ("closing", "closed", "failed")


def _describe_signal(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def launch(spec: LaunchSpec) -> LaunchOutcome:
    """Run one Pipes session's command on this worker and stream what it reports.

    Args:
        spec: The session's launch specification.

    Returns:
        The outcome of the command (exit code, last sequence number sent, worker facts).
    """
    from distributed import get_worker

    worker = get_worker()
    outcome: LaunchOutcome = {
        "status": "launch_failed",
        "returncode": None,
        "last_seq": -1,
        "worker": str(worker.address),
        "hostname": socket.gethostname(),
        "pid": None,
        "started_at": None,
        "ended_at": time.time(),
        "stderr_tail": "",
        "error": None,
        "max_rss_kib": None,
        "cpu_user_seconds": None,
        "cpu_system_seconds": None,
    }

    # At most once per Dagster attempt: a claimed session means an earlier delivery of this
    # task already started the command on a worker that has since been lost.
    if _claim(worker, spec["claim_event"]):
        outcome["status"] = "redelivered"
        outcome["error"] = "the session was already started by an earlier delivery of this task"
        return outcome

    sender = _Sender(worker, spec["topic"], spec["max_batch_bytes"])
    workdir = tempfile.mkdtemp(prefix="dagster-pipes-")
    try:
        abandoned = _run_command(spec, worker, sender, workdir, outcome)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if abandoned:
        # Nobody reads the topic any more: clean the scheduler instead of publishing.
        outcome["last_seq"] = sender.last_seq
        _forget_abandoned_session(worker, spec)
        return outcome
    # The outcome also rides the session's last event. The orchestrator handles it right after
    # the last message, without waiting for the scheduler's task bookkeeping or fetching the
    # task's result.
    sender.flush()
    outcome["last_seq"] = sender.last_seq + 1
    sender.add(REC_END, dict(outcome))
    sender.flush()
    return outcome


def _launch_error(spec: LaunchSpec, exc: OSError) -> str:
    program = spec["command"][0]
    cwd = spec["cwd"]
    if cwd is not None and not os.path.isdir(cwd):
        return f"working directory {cwd!r} does not exist on the worker"
    if isinstance(exc, FileNotFoundError):
        return (
            f"command not found on the worker: {program!r} "
            f"(PATH={os.environ.get('PATH', '')!r}, cwd={cwd or os.getcwd()!r})"
        )
    if isinstance(exc, PermissionError):
        return f"command is not executable on the worker: {program!r} ({exc})"
    return f"could not start {program!r} on the worker: {exc}"


def _run_command(
    spec: LaunchSpec,
    worker: Any,
    sender: _Sender,
    workdir: str,
    outcome: LaunchOutcome,
) -> bool:
    """Run the command, filling ``outcome``; return whether the Dagster step was gone."""
    context_path = os.path.join(workdir, "context.json")
    messages_path = os.path.join(workdir, "messages.jsonl")
    with open(context_path, "w", encoding="utf-8") as f:
        json.dump(spec["context_data"], f)
    open(messages_path, "wb").close()

    env = {**os.environ, **spec["env"]}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[PIPES_CONTEXT_ENV] = encode_param({"path": context_path})
    env[PIPES_MESSAGES_ENV] = encode_param({"path": messages_path})

    stdio_queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
    forward = spec["forward_stdio"]
    stderr_tail: deque[str] = deque()
    stderr_tail_len = 0

    sender.add(
        REC_START,
        {"worker": outcome["worker"], "hostname": outcome["hostname"]},
    )
    try:
        argv, preexec = _with_deathsig(spec["command"], env, spec["cwd"])
        proc = subprocess.Popen(
            argv,
            cwd=spec["cwd"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if forward else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=preexec,
        )
    except OSError as exc:
        outcome["error"] = _launch_error(spec, exc)
        sender.add(REC_NOTE, f"[pipes] {outcome['error']}")
        outcome["ended_at"] = time.time()
        return False

    outcome["pid"] = proc.pid
    outcome["started_at"] = time.time()
    sender.add(REC_PID, proc.pid, 8)
    pumps = []
    for stream, kind in ((proc.stdout, REC_STDOUT), (proc.stderr, REC_STDERR)):
        if stream is None:
            continue
        fd = os.dup(stream.fileno())
        stream.close()
        t = threading.Thread(
            target=_pump_stream, args=(fd, kind, stdio_queue), daemon=True, name=f"pipes-{kind}"
        )
        t.start()
        pumps.append(t)
    open_pumps = len(pumps)

    stop = threading.Event()
    done = threading.Event()
    threading.Thread(
        target=_watch_stop,
        args=(worker, spec["stop_event"], stop, done),
        daemon=True,
        name="pipes-stop-watch",
    ).start()

    task_key = _current_task_key()
    abandoned = False
    tail = _LineTail(messages_path, spec["max_batch_bytes"])
    poll = spec["poll_interval_seconds"]
    kill_at: float | None = None
    returncode: int | None = None
    rusage = None
    carried: tuple[str, str] | Literal[False] | None = False
    try:
        while True:
            for chunk in tail.read_chunks():
                sender.add(REC_MESSAGES, chunk.decode("utf-8", errors="replace"), len(chunk))
            # drain stdio without blocking, starting with what the last wait returned
            while True:
                if carried is not False:
                    item, carried = carried, False
                else:
                    try:
                        item = stdio_queue.get_nowait()
                    except queue.Empty:
                        break
                if item is None:
                    open_pumps -= 1
                    continue
                kind, text = item
                if kind == REC_STDERR:
                    stderr_tail.append(text)
                    stderr_tail_len += len(text)
                    while stderr_tail_len > STDERR_TAIL_BYTES and len(stderr_tail) > 1:
                        stderr_tail_len -= len(stderr_tail.popleft())
                    if not forward:
                        continue
                sender.add(kind, text, len(text))
            sender.flush()

            if returncode is None:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    returncode = os.waitstatus_to_exitcode(status)
                    proc.returncode = returncode
                    rusage = ru
                    # Nothing the command started may outlive it.
                    _signal_group(proc.pid, signal.SIGKILL)
            if returncode is not None and open_pumps <= 0:
                for chunk in tail.read_rest():
                    sender.add(REC_MESSAGES, chunk.decode("utf-8", errors="replace"), len(chunk))
                sender.flush()
                break

            if not stop.is_set() and spec["stop_when_abandoned"] and _abandoned(worker, task_key):
                # The scheduler released the task: its client (the Dagster step) is gone.
                abandoned = True
                stop.set()
                sender.add(REC_NOTE, "[pipes] the Dagster step is gone: stopping the command")
            if not stop.is_set() and _worker_closing(worker):
                # A worker that lost its scheduler closes, but first waits for running tasks:
                # nobody could collect this result or stop this command any more.
                stop.set()
                sender.add(REC_NOTE, "[pipes] the Dask worker is closing: stopping the command")
            if stop.is_set() and kill_at is None and returncode is None:
                kill_at = time.monotonic() + spec["termination_timeout_seconds"]
                _signal_group(proc.pid, signal.SIGINT)
                sender.add(REC_NOTE, "[pipes] stop requested: sent SIGINT to the process group")
            if kill_at is not None and returncode is None and time.monotonic() >= kill_at:
                _signal_group(proc.pid, signal.SIGKILL)
                sender.add(
                    REC_NOTE,
                    "[pipes] process did not exit within termination_timeout_seconds: "
                    "sent SIGKILL to the process group",
                )
                kill_at = float("inf")

            # Wait for stdio (or poll the message file after ``poll`` seconds).
            with contextlib.suppress(queue.Empty):
                carried = stdio_queue.get(timeout=poll)
    finally:
        done.set()
        tail.close()
        if returncode is None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        for t in pumps:
            t.join(timeout=5)

    outcome["status"] = "stopped" if stop.is_set() else "exited"
    outcome["returncode"] = returncode
    outcome["ended_at"] = time.time()
    outcome["stderr_tail"] = "".join(stderr_tail)[-STDERR_TAIL_BYTES:]
    if rusage is not None:
        outcome["max_rss_kib"] = int(rusage.ru_maxrss)
        outcome["cpu_user_seconds"] = float(rusage.ru_utime)
        outcome["cpu_system_seconds"] = float(rusage.ru_stime)
    if returncode is not None and returncode < 0:
        outcome["error"] = f"killed by {_describe_signal(returncode)}"
    return abandoned


def _forget_abandoned_session(worker: Any, spec: LaunchSpec) -> None:
    """Do the orchestrator's clean-up on the scheduler, since the orchestrator is gone."""
    topic, events = spec["topic"], [spec["claim_event"], spec["stop_event"]]
    try:
        from distributed import get_client

        get_client().run_on_scheduler(
            lambda dask_scheduler=None: forget_session(topic, events, False, dask_scheduler)
        )
    except Exception:
        # run_on_scheduler refused: clear the events at least (the empty topic stays).
        for name in events:
            with contextlib.suppress(Exception):
                _rpc(worker, "event_clear", name=name)


def launcher_entry(digest: str) -> Any:
    """The task function: a few hundred bytes that run the launcher published as ``digest``.

    The launcher itself (~30 KB pickled by value) is published once per scheduler connection in
    the scheduler's metadata under :data:`LAUNCHER_METADATA_KEY` + ``[digest]``, not shipped with
    every task: Dask would pickle it again on the scheduler for every task and keep a copy in its
    logs of recent messages. Each worker process fetches and unpickles it on its first session
    and keeps it, keyed by digest, so that orchestrators of different versions can share a
    cluster. If the scheduler no longer has it (it was restarted), the task returns
    ``"launcher_missing"`` before claiming the session, and the client publishes it again.
    """

    def entry(spec: LaunchSpec) -> LaunchOutcome:
        import pickle
        import sys
        import types

        cache = sys.modules.get(_ENTRY_CACHE_MODULE)
        if cache is None:
            cache = sys.modules.setdefault(
                _ENTRY_CACHE_MODULE, types.ModuleType(_ENTRY_CACHE_MODULE)
            )
        launchers = cache.__dict__.setdefault("launchers", {})
        run = launchers.get(digest)
        if run is None:
            from distributed import get_worker
            from distributed.utils import sync

            worker = get_worker()
            payload = sync(
                worker.loop,
                worker.scheduler.get_metadata,
                keys=[*LAUNCHER_METADATA_KEY, digest],
                default=None,
            )
            if payload is None:
                return {"status": "launcher_missing", "worker": str(worker.address)}  # type: ignore[typeddict-item]
            run = launchers.setdefault(digest, pickle.loads(payload))
        return run(spec)

    return entry


def claim_session(name: str, dask_scheduler: Any = None) -> bool:
    """Set a session's claim event and return whether it was set before (run on the scheduler)."""
    extension = dask_scheduler.extensions["events"]
    already = bool(extension.event_is_set(name=name))
    extension.event_set(name=name)
    return already


def subscribe_topic(topic: str, client_id: str, dask_scheduler: Any = None) -> list[Any]:
    """Subscribe a client to a topic; return the events published before (``run_on_scheduler``).

    Subscribing and reading the retained events in one step of the scheduler's event loop means
    every event is either returned here or forwarded to the client, whichever way the scheduler
    orders this call and the task's submission. So the orchestrator submits without waiting for
    the subscription. (``Client.subscribe_topic`` rides the client's batched stream, which then
    holds the submission back for the stream's 10 ms interval.)
    """
    dask_scheduler.subscribe_topic(topic, client_id)
    return [event for _, event in dask_scheduler.get_events(topic)]


def forget_session(
    topic: str, events: list[str], release_launcher: bool, dask_scheduler: Any = None
) -> bool:
    """Remove a finished session's events and topic in one scheduler call.

    Setting the stop event first releases a launcher's long-poll on it at once (a finished
    launcher ignores it); a cleared event without waiters is deleted, and one still waited on is
    deleted when its last waiter times out.
    """
    extension = getattr(dask_scheduler, "extensions", {}).get("events")
    if extension is not None:
        if release_launcher:
            extension.event_set(name=events[-1])
        for name in events:
            extension.event_clear(name=name)
    return forget_topic(topic, dask_scheduler)


def forget_topic(topic: str, dask_scheduler: Any = None) -> bool:
    """Remove a finished session's topic from the scheduler (run with ``run_on_scheduler``).

    The scheduler keeps every topic and its last events for its lifetime; a long-lived shared
    scheduler would otherwise grow with every run.
    """
    broker = getattr(dask_scheduler, "_broker", None)
    topics = getattr(broker, "_topics", None)
    if topics is None:
        return False
    return topics.pop(topic, None) is not None


def task_state(key: str, dask_scheduler: Any = None) -> str | None:
    """The scheduler's state of a task (run with ``run_on_scheduler``), ``None`` if unknown.

    ``"no-worker"`` means no connected worker satisfies the task's restrictions.
    """
    tasks = getattr(dask_scheduler, "tasks", None)
    ts = tasks.get(key) if tasks is not None else None
    return None if ts is None else str(ts.state)


def dashboard_served(dask_scheduler: Any = None) -> bool:
    """Whether the scheduler process serves the bokeh dashboard (run with ``run_on_scheduler``).

    The scheduler lists an HTTP "dashboard" service even when it serves only health and metrics.
    """
    return "distributed.dashboard.scheduler" in sys.modules
