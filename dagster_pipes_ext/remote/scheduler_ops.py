"""The functions run on the scheduler (``run_on_scheduler``) or from a worker (``run_function``).

The scheduler cannot import this package: each function reaches it by value through
:func:`on_scheduler`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from dagster_pipes_ext.remote.dask_compat import (
    BEAT_HANDLER,
    CLAIM_HANDLER,
    FORGET_HANDLER,
    OPEN_HANDLER,
    PRESENT_HANDLER,
    PUT_HANDLER,
    SPEC_HANDLER,
    STASH_HANDLER,
    STATE_HANDLER,
    STOP_WAIT_HANDLER,
    TAKE_HANDLER,
    drop_queue,
    event_extension,
    queue_extension,
    scheduler_topics,
)


def on_scheduler(function: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``function(*args, dask_scheduler)`` to be sent to the scheduler.

    Two constraints meet here. The function must travel by value: the scheduler cannot import
    this package, and Dask pickles an importable function by reference; a nested function is
    always pickled by value by cloudpickle, together with the ``remote`` functions it calls
    (registered by value). And ``run_on_scheduler`` passes the scheduler only to a function
    whose signature names a ``dask_scheduler`` parameter.
    """

    def call(*args: Any, dask_scheduler: Any = None) -> Any:
        return function(*args, dask_scheduler=dask_scheduler)

    call.__name__ = function.__name__
    return call


# An attribute of the scheduler object holding the launch specs not yet claimed, by claim event.
SPECS_ATTRIBUTE = "_dagster_pipes_ext_specs"


def _specs(dask_scheduler: Any) -> dict[str, Any]:
    specs = getattr(dask_scheduler, SPECS_ATTRIBUTE, None)
    if specs is None:
        specs = {}
        setattr(dask_scheduler, SPECS_ATTRIBUTE, specs)
    return specs


def stash_spec(name: str, spec: Any, dask_scheduler: Any = None) -> None:
    """Keep a session's launch spec until its launcher claims the session (``name``).

    The task's own arguments travel on Dask's batched streams, whose logs of recent messages
    keep them (the command's environment included) long after the session; a spec taken from
    here travels on RPCs only, and nothing of it stays once the launcher has it.
    """
    _specs(dask_scheduler)[name] = spec


def claim_session(name: str, dask_scheduler: Any = None) -> tuple[bool, Any]:
    """Set a session's claim event; return whether it was set before, and the stashed spec."""
    extension = event_extension(dask_scheduler)
    already = bool(extension.event_is_set(name=name))
    extension.event_set(name=name)
    return already, _specs(dask_scheduler).pop(name, None)


def take_spec(name: str, dask_scheduler: Any = None) -> Any:
    """The stashed spec of a claimed session, if it has arrived (``None`` otherwise)."""
    return _specs(dask_scheduler).pop(name, None)


def install_queue_handlers(dask_scheduler: Any) -> None:
    """Add a put and a take on the scheduler's queues that answer an expired wait.

    Dask's ``queue_put`` and ``queue_get`` raise ``TimeoutError`` when their wait expires, and
    the scheduler logs every handler exception as an ERROR with its traceback: each 0.5 s wait
    of a reader whose command is quiet, each wait for room while the reader is behind. The raised
    exception also sits in reference cycles with the caller's frames until a full garbage
    collection. These two do the same with the same records, and answer instead. The take also
    removes the session (:func:`forget_session`) when it hands out the batch the launcher marked
    as its last: the orchestrator then needs no clean-up call of its own after a session that
    ended normally.

    A third publishes a launcher's heartbeat on the session's topic only while the topic
    exists: a beat still on its way when the orchestrator removed the topic would otherwise
    create it again, on a shared scheduler for its lifetime (a worker's ``log_event`` travels on
    its batched stream, which the session's last batch, an RPC, can overtake).

    A fourth answers the orchestrator's liveness check, once a second per running session,
    which ``run_on_scheduler`` would log as an INFO line each time.

    Six more do what a connection's later sessions would otherwise send as ``run_function``
    calls (a pickled function each, and an INFO line in the scheduler's log): open the session,
    stash its spec, claim it, take a late spec, remove the session, and tell a waiting task's
    state (once a second while no worker can run it). One more is the launcher's long-poll of
    its stop event, answering "gone" once the session's topic is: Dask's ``event_wait`` would
    create the event of a removed session again, until the wait expired. Their answers are never
    ``None``, which is what a scheduler without the handler answers.
    """
    handlers = dask_scheduler.handlers
    names = (
        PUT_HANDLER,
        TAKE_HANDLER,
        BEAT_HANDLER,
        PRESENT_HANDLER,
        OPEN_HANDLER,
        STASH_HANDLER,
        CLAIM_HANDLER,
        SPEC_HANDLER,
        FORGET_HANDLER,
        STATE_HANDLER,
        STOP_WAIT_HANDLER,
    )
    if all(name in handlers for name in names):
        return
    import asyncio

    from distributed.utils import wait_for

    def queues() -> dict[str, Any]:
        return queue_extension(dask_scheduler).queues  # type: ignore[no-any-return]

    async def put(
        name: str = "", data: Any = None, timeout: float = 0.0, forget: Any = None
    ) -> str:
        queue = queues().get(name)
        if queue is None:
            return "missing"
        record = {"type": "msgpack", "value": data}
        if forget:
            record["forget"] = forget
        try:
            await wait_for(queue.put(record), timeout)
        except asyncio.TimeoutError:
            return "full"
        return "ok"

    async def take(name: str = "", timeout: float = 0.0) -> dict[str, Any]:
        queue = queues().get(name)
        if queue is None:
            return {"missing": True}
        try:
            record = await wait_for(queue.get(), timeout)
        except asyncio.TimeoutError:
            return {"empty": True}
        forget = record.get("forget")
        if not forget:
            return {"value": record["value"]}
        # The session's last batch: the reader has it now, and nothing else is to come.
        forget_session(
            forget["topic"], name, list(forget["events"]), True, dask_scheduler=dask_scheduler
        )
        return {"value": record["value"], "forgotten": True}

    def beat(topic: str = "", msg: Any = None) -> bool:
        topics = scheduler_topics(dask_scheduler)
        if topics is None or topic not in topics:
            return False
        dask_scheduler.log_event(topic, msg)
        return True

    def worker_present(address: str = "") -> bool:
        return address in dask_scheduler.workers

    def open_(topic: str = "", queue: str = "", maxsize: int = 0, client_id: str = "") -> bool:
        _open(topic, queue, maxsize, client_id, dask_scheduler)
        return True

    def stash(name: str = "", spec: Any = None) -> bool:
        stash_spec(name, spec, dask_scheduler=dask_scheduler)
        return True

    def claim(name: str = "") -> dict[str, Any]:
        already, spec = claim_session(name, dask_scheduler=dask_scheduler)
        return {"already": already, "spec": spec}

    def spec(name: str = "") -> dict[str, Any]:
        return {"spec": take_spec(name, dask_scheduler=dask_scheduler)}

    def forget(
        topic: str = "", queue: str = "", events: Any = (), release_launcher: bool = False
    ) -> dict[str, bool]:
        removed = forget_session(
            topic, queue, list(events), release_launcher, dask_scheduler=dask_scheduler
        )
        return {"removed": removed}

    def state(key: str = "") -> dict[str, str | None]:
        return {"state": task_state(key, dask_scheduler=dask_scheduler)}

    async def stop_wait(topic: str = "", name: str = "", timeout: float = 0.0) -> str:
        topics = scheduler_topics(dask_scheduler)
        if topics is not None and topic not in topics:
            return "gone"  # not opened yet, or removed: waiting would create the event again
        is_set = await event_extension(dask_scheduler).event_wait(name=name, timeout=timeout)
        return "set" if is_set else "unset"

    made = (
        put,
        take,
        beat,
        worker_present,
        open_,
        stash,
        claim,
        spec,
        forget,
        state,
        stop_wait,
    )
    for name, handler in zip(names, made, strict=True):
        handlers.setdefault(name, handler)


def open_session(
    topic: str, queue: str, maxsize: int, client_id: str, dask_scheduler: Any = None
) -> None:
    """Subscribe the orchestrator to the session's topic and create its bounded data queue.

    One call, started before the task is submitted and not waited for: the launcher retries a
    put until the queue exists, and the topic carries only heartbeats. The queue handlers are
    installed first, so they exist wherever the queue does.
    """
    install_queue_handlers(dask_scheduler)
    _open(topic, queue, maxsize, client_id, dask_scheduler)


def _open(topic: str, queue: str, maxsize: int, client_id: str, dask_scheduler: Any) -> None:
    dask_scheduler.subscribe_topic(topic, client_id)
    queue_extension(dask_scheduler).create(name=queue, client=client_id, maxsize=maxsize)


def forget_session(
    topic: str, queue: str, events: list[str], release_launcher: bool, dask_scheduler: Any = None
) -> bool:
    """Remove a finished session's events, data queue and topic in one scheduler call.

    Setting the stop event first releases a launcher's long-poll on it at once (a finished
    launcher ignores it); a cleared event without waiters is deleted, and one still waited on is
    deleted when its last waiter times out. Removing the topic also drops its subscriptions.
    The scheduler keeps every topic and its last events for its lifetime otherwise. A launcher
    still putting into the removed queue learns that its reader is gone.
    """
    drop_queue(dask_scheduler, queue)
    _specs(dask_scheduler).pop(events[0], None)  # a task that never started
    extension = event_extension(dask_scheduler)
    if extension is not None:
        if release_launcher:
            extension.event_set(name=events[-1])
        for name in events:
            extension.event_clear(name=name)
    topics = scheduler_topics(dask_scheduler)
    return topics is not None and topics.pop(topic, None) is not None


def task_state(key: str, dask_scheduler: Any = None) -> str | None:
    """The scheduler's state of a task, ``None`` if unknown.

    ``"no-worker"`` means no connected worker satisfies the task's restrictions.
    """
    ts = dask_scheduler.tasks.get(key)
    return None if ts is None else str(ts.state)


def worker_present(address: str, dask_scheduler: Any = None) -> bool:
    """Whether the scheduler still has this worker (it removes a worker it lost)."""
    return address in dask_scheduler.workers


def dashboard_served(dask_scheduler: Any = None) -> bool:
    """Whether the scheduler process serves the bokeh dashboard.

    The scheduler lists an HTTP "dashboard" service even when it serves only health and metrics.
    """
    return "distributed.dashboard.scheduler" in sys.modules


STASH_SPEC = on_scheduler(stash_spec)
CLAIM_SESSION = on_scheduler(claim_session)
TAKE_SPEC = on_scheduler(take_spec)
OPEN_SESSION = on_scheduler(open_session)
FORGET_SESSION = on_scheduler(forget_session)
TASK_STATE = on_scheduler(task_state)
WORKER_PRESENT = on_scheduler(worker_present)
DASHBOARD_SERVED = on_scheduler(dashboard_served)
