"""The launcher: the Dask task that runs one Pipes session's command on a worker.

One call of :func:`launch` is one session. It:

1. refuses to run if the session was already claimed by an earlier delivery of the same task
   (Dask silently re-runs tasks whose worker died; external code must not run twice);
2. writes the context data to a worker-local file and starts the command in its own process
   group with the stock ``DAGSTER_PIPES_CONTEXT``/``DAGSTER_PIPES_MESSAGES`` file params;
3. tails the message file and the process's stdout/stderr, and puts them as sequence-numbered
   batches into the session's bounded data queue on the scheduler: when the reader falls
   behind, the launcher waits, and the data waits on the worker's disk and in the pipe;
4. sends a heartbeat on the session topic while it runs;
5. stops the command when asked to, when the Dagster step is gone, or when the worker closes
   (SIGINT to the group, SIGKILL after a timeout);
6. puts its :class:`LaunchOutcome` as the last batch and returns it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, cast

from dagster_pipes_ext.remote import dask_compat
from dagster_pipes_ext.remote.process import Supervised, describe_signal, launch_error
from dagster_pipes_ext.remote.scheduler_ops import CLAIM_SESSION, FORGET_SESSION, TAKE_SPEC
from dagster_pipes_ext.remote.sender import Heartbeat, ReaderGone, Sender
from dagster_pipes_ext.remote.stdio import StdioDrain
from dagster_pipes_ext.remote.stop import StopPolicy
from dagster_pipes_ext.remote.tail import LineTail
from dagster_pipes_ext.remote.wire import (
    LAUNCHER_METADATA_KEY,
    PIPES_CONTEXT_ENV,
    PIPES_MESSAGES_ENV,
    REC_END,
    REC_START,
    WINDOW_BATCHES,
    LaunchOutcome,
    LaunchSpec,
    SpecRef,
    encode_param,
)

SPEC_WAIT_SECONDS = 10.0  # for a stashed spec that was not on the scheduler at the claim
SPEC_POLL_SECONDS = 0.005
# Where a worker process keeps the launchers it unpickled (see ``launcher_entry``).
_ENTRY_CACHE_MODULE = "__dagster_pipes_ext_launchers__"


def launch(argument: LaunchSpec | SpecRef) -> LaunchOutcome:
    """Run one Pipes session's command on this worker and stream what it reports.

    Args:
        argument: The session's launch specification, or where to claim it on the scheduler.

    Returns:
        The outcome of the command (exit code, last sequence number sent, worker facts).
    """
    from distributed import get_worker

    worker = get_worker()
    with dask_compat.unprofiled_task_thread(worker):
        return _launch(worker, argument)


def _launch(worker: Any, argument: LaunchSpec | SpecRef) -> LaunchOutcome:
    outcome = _new_outcome(worker)
    spec = _claimed_spec(worker, argument, outcome)
    if spec is None:
        return outcome
    policy = StopPolicy(worker, spec)
    sender = Sender(worker, spec["queue"], spec["max_batch_bytes"], on_blocked=policy.while_blocked)
    heartbeat = Heartbeat(worker, spec["topic"], spec["heartbeat_interval_seconds"], sender)
    workdir = tempfile.mkdtemp(prefix="dagster-pipes-")
    proc: Supervised | None = None
    try:
        proc, messages_path = _start_command(spec, sender, workdir, outcome)
        if proc is not None:
            _run_command(proc, messages_path, spec, sender, policy, heartbeat, outcome)
        # Cleared up before the last batch: once the orchestrator has it, its step goes on, and
        # on an embedded cluster this thread's work would compete with it for the GIL.
        _clear_up(policy, proc, workdir)
        if not policy.abandoned:
            _send_outcome(sender, outcome, spec)
    except ReaderGone:
        policy.abandoned = True
    finally:
        heartbeat.stop()  # beats go on while the last batch waits for room: the reader is slow
        _clear_up(policy, proc, workdir)
    if policy.abandoned:
        # Nobody reads the session any more: clean the scheduler instead of sending.
        outcome["last_seq"] = sender.last_seq
        _forget_abandoned_session(worker, spec)
    return outcome


def _clear_up(policy: StopPolicy, proc: Supervised | None, workdir: str) -> None:
    """End the stop watch, reap the supervisor (it has reported), remove the session's files."""
    policy.close()
    if proc is not None:
        proc.release()
    shutil.rmtree(workdir, ignore_errors=True)


def _new_outcome(worker: Any) -> LaunchOutcome:
    return {
        "status": "launch_failed",
        "returncode": None,
        "last_seq": -1,
        "lines": 0,
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


def _claimed_spec(
    worker: Any, argument: LaunchSpec | SpecRef, outcome: LaunchOutcome
) -> LaunchSpec | None:
    """Claim the session; its spec, or ``None`` (and why, in ``outcome``) to run nothing."""
    already, spec = _claim(worker, argument)
    if already:
        outcome["status"] = "redelivered"
        outcome["error"] = "the session was already started by an earlier delivery of this task"
    elif spec is None:
        outcome["error"] = (
            "the session's launch specification never reached the Dask scheduler (the "
            f"orchestrator's call to store it failed, or took over {SPEC_WAIT_SECONDS:g} s)"
        )
    return None if already else spec


def _claim(worker: Any, argument: LaunchSpec | SpecRef) -> tuple[bool, LaunchSpec | None]:
    """Set the session's claim event: whether an earlier delivery had set it, and the spec.

    One scheduler call, which also takes the spec the orchestrator stashed there (``None``:
    it never arrived); two event calls where the scheduler refuses ``run_function``, and then
    the task carries the spec itself.
    """
    name = argument["claim_event"]

    def by_events() -> tuple[bool, None]:
        if dask_compat.worker_rpc(worker, "event_is_set", name=name):
            return True, None
        dask_compat.worker_rpc(worker, "event_set", name=name)
        return False, None

    handlers = bool(argument.get("handlers"))
    answer = _handler_call(worker, dask_compat.CLAIM_HANDLER, name) if handlers else None
    if answer is not None:
        already, stashed = bool(answer["already"]), answer["spec"]
    else:
        already, stashed = dask_compat.run_function_from_worker(
            worker, CLAIM_SESSION, (name,), by_events
        )
    if already:
        return True, None
    if not argument.get("stashed"):
        return False, cast(LaunchSpec, argument)
    # The stash call and the task travel on different channels: the spec is there almost
    # always, and otherwise within milliseconds.
    deadline = time.monotonic() + SPEC_WAIT_SECONDS
    while stashed is None and time.monotonic() < deadline:
        time.sleep(SPEC_POLL_SECONDS)
        answer = _handler_call(worker, dask_compat.SPEC_HANDLER, name) if handlers else None
        if answer is not None:
            stashed = answer["spec"]
        else:
            stashed = dask_compat.run_function_from_worker(worker, TAKE_SPEC, (name,), lambda: None)
    return False, stashed


def _handler_call(worker: Any, op: str, name: str) -> dict[str, Any] | None:
    """Call one of the package's scheduler handlers; ``None`` if the scheduler lacks it."""
    try:
        return cast("dict[str, Any] | None", dask_compat.worker_rpc(worker, op, name=name))
    except Exception:
        return None


def _send_outcome(sender: Sender, outcome: LaunchOutcome, spec: LaunchSpec) -> None:
    """Send the outcome alone in the session's last batch.

    The orchestrator handles it right after the last message, without waiting for the
    scheduler's task bookkeeping or fetching the task's result. Taking that batch removes the
    session from the scheduler (its queue, events and topic), in the reader's own call.
    """
    sender.flush()
    outcome["last_seq"] = sender.last_seq + 1
    sender.add(REC_END, dict(outcome))
    sender.flush(forget={"topic": spec["topic"], "events": _session_events(spec)})


def _session_events(spec: LaunchSpec) -> list[str]:
    """The session's events, the stop event last (as ``SessionNames.events``)."""
    return [spec["claim_event"], spec["stop_event"]]


# -- the session -------------------------------------------------------------------------------


def _start_command(
    spec: LaunchSpec, sender: Sender, workdir: str, outcome: LaunchOutcome
) -> tuple[Supervised | None, str]:
    """Start the command under its supervisor; ``None`` (and a note) if it could not start."""
    env, messages_path = _prepare_files(spec, workdir)
    sender.add(REC_START, {"worker": outcome["worker"], "hostname": outcome["hostname"]})
    try:
        proc = Supervised(spec, env)
    except OSError as exc:
        outcome["error"] = launch_error(spec, exc)
        sender.note(outcome["error"])
        outcome["ended_at"] = time.time()
        return None, messages_path
    outcome["pid"] = proc.pid
    outcome["started_at"] = time.time()
    return proc, messages_path


def _run_command(
    proc: Supervised,
    messages_path: str,
    spec: LaunchSpec,
    sender: Sender,
    policy: StopPolicy,
    heartbeat: Heartbeat,
    outcome: LaunchOutcome,
) -> None:
    """Stream what the running command reports until it and its descendants are gone."""
    stdio = StdioDrain(proc, forward=spec["forward_stdio"])
    proc.on_exit(stdio.wake)  # the supervisor's report ends the loop's wait at once
    policy.watch(proc, sender)
    heartbeat.attach(proc)
    tail = LineTail(messages_path, spec["max_batch_bytes"], spec["max_message_bytes"])
    returncode: int | None = None
    usage: dict[str, Any] = {}
    try:
        returncode, usage = _pump_until_exit(proc, tail, stdio, policy, sender, spec)
    finally:
        outcome["lines"] = tail.lines
        tail.close()
        if returncode is None:
            proc.kill()  # every descendant, now
        stdio.close()
    _record_exit(outcome, policy, returncode, usage, stdio.stderr_tail())


def _prepare_files(spec: LaunchSpec, workdir: str) -> tuple[dict[str, str], str]:
    """Write the context file, create the message file; return the command's env and its path."""
    context_path = os.path.join(workdir, "context.json")
    messages_path = os.path.join(workdir, "messages.jsonl")
    with open(context_path, "w", encoding="utf-8") as f:
        # dumps, not dump: json.dump encodes in pure Python, chunk by chunk (5x slower here).
        f.write(json.dumps(spec["context_data"]))
    open(messages_path, "wb").close()
    env = {**os.environ, **spec["env"]}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[PIPES_CONTEXT_ENV] = encode_param({"path": context_path})
    env[PIPES_MESSAGES_ENV] = encode_param({"path": messages_path})
    return env, messages_path


def _pump_until_exit(
    proc: Supervised,
    tail: LineTail,
    stdio: StdioDrain,
    policy: StopPolicy,
    sender: Sender,
    spec: LaunchSpec,
) -> tuple[int, Any]:
    """Forward messages and stdio until the command exited and its pipes closed."""
    returncode: int | None = None
    usage: dict[str, Any] = {}
    budget = spec["max_batch_bytes"] * WINDOW_BATCHES
    while True:
        records, more = tail.read(budget)
        sender.add_records(records)
        stdio.drain(sender)
        _forward_notes(proc, sender)
        sender.flush()
        if returncode is None:
            # The supervisor reports once the command exited and nothing it started is left.
            exited = proc.exited()
            if exited is not None:
                returncode, usage = exited
                policy.exited = True
        if returncode is not None and not stdio.open:
            # The backlog a slow reader left in the file, one budget at a time (bounded memory),
            # then the unterminated last line, if any.
            more = True
            while more:
                sender.flush()
                records, more = tail.read(budget)
                sender.add_records(records)
                stdio.drain(sender)
            sender.add_records(tail.read_rest())  # the writers are gone: at most the last line
            _forward_notes(proc, sender)
            sender.flush()
            return returncode, usage
        policy.check()
        if not more:
            stdio.wait(spec["poll_interval_seconds"])


def _forward_notes(proc: Supervised, sender: Sender) -> None:
    """The supervisor's notices, in the run's log."""
    while not proc.notes.empty():
        note = proc.notes.get_nowait()
        if note.startswith("termination timeout: "):  # the command ignored the stop
            sender.note(
                "process did not exit within termination_timeout_seconds: sent SIGKILL to the "
                f"process group (supervisor: {note.removeprefix('termination timeout: ')})"
            )
            continue
        if note.startswith("sent SIGKILL to "):  # what an exited command left behind
            note = f"ended {note.removeprefix('sent SIGKILL to ')} the command left running"
        sender.note(f"supervisor: {note}")


def _record_exit(
    outcome: LaunchOutcome,
    policy: StopPolicy,
    returncode: int | None,
    usage: dict[str, Any],
    stderr_tail: str,
) -> None:
    outcome["status"] = "stopped" if policy.stop.is_set() else "exited"
    outcome["returncode"] = returncode
    outcome["ended_at"] = time.time()
    outcome["stderr_tail"] = stderr_tail
    if "maxrss_kib" in usage:
        outcome["max_rss_kib"] = int(usage["maxrss_kib"])
        outcome["cpu_user_seconds"] = float(usage["utime"])
        outcome["cpu_system_seconds"] = float(usage["stime"])
    if returncode is not None and returncode < 0:
        outcome["error"] = f"killed by {describe_signal(returncode)}"
    if usage.get("reason") == "hung":
        outcome["status"] = "stopped"
        outcome["error"] = (
            f"{outcome['error'] or f'exited with code {returncode}'}, stopped by its supervisor: "
            "the launcher sent no heartbeat for heartbeat_timeout_seconds (the Dask worker was "
            "stopped or hung)"
        )


# -- clean-up and entry -------------------------------------------------------------------------


def _forget_abandoned_session(worker: Any, spec: LaunchSpec) -> None:
    """Do the orchestrator's clean-up on the scheduler, since the orchestrator is gone."""
    topic, queue, events = spec["topic"], spec["queue"], _session_events(spec)

    def clear_events() -> bool:  # run_function refused: the empty topic stays
        for name in events:
            with contextlib.suppress(Exception):
                dask_compat.worker_rpc(worker, "event_clear", name=name)
        return False

    dask_compat.run_function_from_worker(
        worker, FORGET_SESSION, (topic, queue, events, False), clear_events
    )


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

    def entry(spec: LaunchSpec | SpecRef) -> LaunchOutcome:
        import pickle
        import types

        cache = sys.modules.get(_ENTRY_CACHE_MODULE)
        if cache is None:
            cache = sys.modules.setdefault(
                _ENTRY_CACHE_MODULE, types.ModuleType(_ENTRY_CACHE_MODULE)
            )
        launchers = cache.__dict__.setdefault("launchers", {})
        run = launchers.get(digest)
        if run is None:
            # Only the standard library and distributed here: this function travels with every
            # task, and a reference to a module of this package would pickle that module too.
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
