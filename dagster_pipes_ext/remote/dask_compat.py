"""Every private ``distributed`` attribute this package uses, and every ``run_function`` fallback.

One file to review when ``distributed`` is upgraded.

Used on the orchestrator, on workers and on the scheduler, so it imports only the standard
library and ``distributed`` (it travels by value with the rest of ``remote``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

T = TypeVar("T")
QUEUE_GET_GUARD_SECONDS = 2.0


class RunFunctionState(Protocol):
    """What a connection remembers about its scheduler's ``run_function`` handler."""

    run_function_refused: bool


# -- on the scheduler ---------------------------------------------------------------------------


def scheduler_topics(dask_scheduler: Any) -> dict[str, Any] | None:
    """The scheduler's topics and their retained events (``EventBroker._topics``).

    The scheduler has no API to delete a topic; a long-lived scheduler keeps every one.
    """
    topics = getattr(getattr(dask_scheduler, "_broker", None), "_topics", None)
    return cast("dict[str, Any] | None", topics)


def event_extension(dask_scheduler: Any) -> Any:
    """The scheduler's events extension (``Event`` objects), or ``None``."""
    return getattr(dask_scheduler, "extensions", {}).get("events")


def queue_extension(dask_scheduler: Any) -> Any:
    """The scheduler's queues extension (``distributed.Queue``'s server side)."""
    return dask_scheduler.extensions["queues"]


def drop_queue(dask_scheduler: Any, name: str) -> None:
    """Delete a queue and whatever it still holds (``QueueExtension.queues``/``client_refcount``).

    ``queue_release`` would only decrement a reference count, on the batched stream.
    """
    extension = getattr(dask_scheduler, "extensions", {}).get("queues")
    if extension is not None:
        extension.queues.pop(name, None)
        extension.client_refcount.pop(name, None)


# -- on a worker --------------------------------------------------------------------------------


def detached(exc: BaseException) -> BaseException:
    """A copy of an exception that a scheduler call raised, for the caller to raise instead.

    Such an exception is held by reference cycles among ``distributed``'s frames
    (``send_recv`` and ``sync`` keep it in their locals, their tracebacks keep those frames),
    so raising it again would hang the caller's frames on it, through its traceback and their
    ``f_back``, with every local in them: batches of up to ``max_batch_bytes``, freed only when
    a full garbage collection found them (26 batches, 13.6 MB, were waiting for one on a
    flood's worker). The copy has the same type and arguments, and no traceback. The callers
    take these exceptions as answers (a full or missing queue, an expired wait).
    """
    exc.__traceback__ = None
    try:
        copy = type(exc)(*exc.args)
    except Exception:
        return exc
    return copy


def worker_rpc(worker: Any, op: str, **kwargs: Any) -> Any:
    """Call a scheduler handler from a task thread through the worker's own connection pool."""
    from distributed.utils import sync

    try:
        return sync(worker.loop, getattr(worker.scheduler, op), **kwargs)
    except Exception as exc:
        raise detached(exc) from None


class QueueMissing(Exception):
    """The session's data queue does not exist on the scheduler (not yet, or not any more)."""


class HandlersMissing(Exception):
    """The scheduler lacks this package's queue handlers (it refuses ``run_on_scheduler``)."""


# Scheduler handlers added by ``scheduler_ops.install_queue_handlers``: Dask's ``queue_put`` and
# ``queue_get`` with the same records, answering an expired wait instead of raising it, and
# removing a session with its last batch. A long-lived scheduler keeps them; the version in the
# name keeps a changed protocol apart (v1: without the session's removal).
PUT_HANDLER = "dagster_pipes_queue_put_v2"
TAKE_HANDLER = "dagster_pipes_queue_take_v2"
# ... a heartbeat published on the session's topic only while the topic exists, and the
# liveness question "does the scheduler still have this worker" without an INFO log line.
BEAT_HANDLER = "dagster_pipes_beat_v1"
PRESENT_HANDLER = "dagster_pipes_worker_present_v1"
# ... and the per-session calls that went through ``run_function`` (a pickled function each time,
# and an INFO line in the scheduler's log), once a connection's first session installed them.
OPEN_HANDLER = "dagster_pipes_open_v1"
STASH_HANDLER = "dagster_pipes_stash_v1"
CLAIM_HANDLER = "dagster_pipes_claim_v1"
SPEC_HANDLER = "dagster_pipes_take_spec_v1"
FORGET_HANDLER = "dagster_pipes_forget_v1"
STATE_HANDLER = "dagster_pipes_task_state_v1"  # once a second while a task waits for a worker
# The launcher's long-poll of its stop event, which does not create the event again once the
# session was removed (``event_wait`` would, until the wait expires).
STOP_WAIT_HANDLER = "dagster_pipes_stop_wait_v1"


def start_worker_rpc(worker: Any, op: str, **kwargs: Any) -> concurrent.futures.Future[Any]:
    """Start a scheduler call from a task's thread without waiting for its answer."""
    coroutine = getattr(worker.scheduler, op)(**kwargs)
    return asyncio.run_coroutine_threadsafe(coroutine, worker.loop.asyncio_loop)


def queue_put(
    worker: Any,
    name: str,
    batch: Any,
    timeout: float,
    stock: bool = False,
    forget: dict[str, Any] | None = None,
) -> None:
    """Put one batch into a scheduler queue; wait at most ``timeout`` for room.

    Through :data:`PUT_HANDLER`, or Dask's own ``queue_put`` with ``stock`` (whose expired wait
    the scheduler logs as an ERROR with a traceback). ``forget`` (``{"topic", "events"}``) marks
    the session's last batch: the scheduler removes the session (its queue, events and topic)
    when the reader takes it (``stock`` ignores it: the orchestrator removes it then).

    Raises:
        TimeoutError: The queue stayed full (the reader is behind); nothing was put.
        QueueMissing: There is no such queue.
        HandlersMissing: The scheduler has no :data:`PUT_HANDLER` (the queue exists).
    """
    if stock:
        try:
            worker_rpc(worker, "queue_put", name=name, data=batch, timeout=timeout)
        except KeyError:
            raise QueueMissing(name) from None
        return
    answer = worker_rpc(worker, PUT_HANDLER, name=name, data=batch, timeout=timeout, forget=forget)
    if answer == "ok":
        return
    if answer == "full":
        raise TimeoutError(f"scheduler queue {name!r} stayed full for {timeout:g} s")
    if answer == "missing":
        raise QueueMissing(name)
    # No answer: the scheduler has no such handler. Until the orchestrator has opened the
    # session it has no queue either (the handlers are installed first).
    queue_size(worker, name)
    raise HandlersMissing(PUT_HANDLER)


def queue_size(worker: Any, name: str) -> int:
    """The number of items in a scheduler queue (a few bytes each way).

    Raises:
        QueueMissing: There is no such queue.
    """
    try:
        return int(worker_rpc(worker, "queue_qsize", name=name))
    except KeyError:
        raise QueueMissing(name) from None


@contextlib.contextmanager
def unprofiled_task_thread(worker: Any) -> Iterator[None]:
    """Keep this task thread out of the worker's statistical profiler while the block runs.

    The profiler (``Worker.trigger_profile``) samples every thread in ``Worker.active_threads``
    every 10 ms and keeps a call tree per second of the last
    ``distributed.admin.low-level-log-length`` (1,000) seconds, twice (``profile_history``,
    ``profile_keys_history``). A launcher that waits hours on its command would fill both with
    its own waiting stacks (25 MB on a worker, measured) and nothing of the command, which runs
    in its own process. The thread is put back before the task returns: Dask deletes it then.
    """
    threads = getattr(worker, "active_threads", None)
    lock = getattr(worker, "active_threads_lock", None)
    ident = threading.get_ident()
    if not isinstance(threads, dict) or lock is None:
        yield
        return
    with lock:
        key = threads.pop(ident, None)
    try:
        yield
    finally:
        if key is not None:
            with lock:
                threads[ident] = key


def current_task_key() -> Any:
    """The key of the task running in this thread (``distributed.worker.thread_state``)."""
    try:
        from distributed.worker import thread_state

        return getattr(thread_state, "key", None)
    except ImportError:
        return None


def task_released_on_worker(worker: Any, key: Any) -> bool:
    """Whether the scheduler released this running task (``Worker.state.tasks``).

    Dask never interrupts a running task: it only forgets it, which is how the launcher learns
    that the task's client (the Dagster step) is gone.
    """
    if key is None:
        return False
    ts = getattr(getattr(worker, "state", None), "tasks", {}).get(key)
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


def worker_closing(worker: Any) -> bool:
    """Whether the worker is closing (it lost its scheduler, or is shutting down)."""
    status = getattr(getattr(worker, "status", None), "name", "")
    return status in ("closing", "closed", "failed")


def run_function_from_worker(
    worker: Any, function: Callable[..., T], args: tuple[Any, ...], fallback: Callable[[], T]
) -> T:
    """Run ``function(*args)`` on the scheduler from a worker; ``fallback()`` if refused."""
    from distributed.protocol.pickle import dumps

    try:
        response = worker_rpc(
            worker,
            "run_function",
            function=dumps(function),
            args=dumps(args),
            kwargs=dumps({}),
            wait=True,
        )
        if response.get("status") == "OK":
            return cast(T, response["result"])
    except Exception:
        pass  # run_function is blocked on this scheduler
    return fallback()


# -- on the orchestrator ------------------------------------------------------------------------


def run_on_scheduler(
    client: Any,
    state: RunFunctionState,
    function: Callable[..., T],
    *args: Any,
    fallback: Callable[[], T],
) -> T:
    """``client.run_on_scheduler(function, *args)``, or ``fallback()`` where it is refused.

    A refusal (``distributed.scheduler.blocked-handlers`` naming ``run_function``) is remembered
    for the connection, so later calls go to the fallback at once.
    """
    if not state.run_function_refused:
        try:
            return cast(T, client.run_on_scheduler(function, *args))
        except Exception:
            state.run_function_refused = True
    return fallback()


def start_run_on_scheduler(
    client: Any, function: Callable[..., Any], *args: Any
) -> concurrent.futures.Future[Any]:
    """Start ``run_on_scheduler`` from any thread without waiting (``Client._run_on_scheduler``)."""
    coroutine = client._run_on_scheduler(function, *args)
    return asyncio.run_coroutine_threadsafe(coroutine, client.loop.asyncio_loop)


def start_scheduler_rpc(client: Any, op: str, **kwargs: Any) -> concurrent.futures.Future[Any]:
    """Start a scheduler handler's call from any thread without waiting for its answer.

    The answer is ``None`` where the scheduler has no such handler.
    """
    coroutine = getattr(client.scheduler, op)(**kwargs)
    return asyncio.run_coroutine_threadsafe(coroutine, client.loop.asyncio_loop)


def set_topic_handler(client: Any, topic: str, handler: Callable[[Any], None] | None) -> bool:
    """Install (or drop, with ``None``) a client's handler for a topic without subscribing.

    ``Client._event_handlers`` is what ``Client.subscribe_topic`` fills; setting it directly
    lets the subscription itself travel on an RPC. Returns whether the client has that dict.
    """
    handlers = getattr(client, "_event_handlers", None)
    if not isinstance(handlers, dict):
        return False
    if handler is None:
        handlers.pop(topic, None)
    else:
        handlers[topic] = handler
    return True


def queue_get(client: Any, name: str, timeout: float, stock: bool = False) -> tuple[Any, bool]:
    """Take the next item of a scheduler queue, waiting at most ``timeout`` on the scheduler.

    The wait happens on the scheduler, so an expired wait takes nothing from the queue. Through
    :data:`TAKE_HANDLER`, or Dask's own ``queue_get`` with ``stock`` (whose expired wait the
    scheduler logs as an ERROR with a traceback: every 0.5 s while the command is quiet).

    Returns:
        The item, and whether taking it removed the session from the scheduler (its last
        batch, put with ``forget``).

    Raises:
        TimeoutError: Nothing arrived in time.
        QueueMissing: There is no such queue.
        HandlersMissing: The scheduler has no :data:`TAKE_HANDLER`.
    """
    # A guard against a connection that hangs (the scheduler died): an answer lost this way is
    # a gap in the sequence numbers, which fails the step.
    guard = timeout + QUEUE_GET_GUARD_SECONDS
    try:
        if stock:
            record = client.sync(
                client.scheduler.queue_get, name=name, timeout=timeout, callback_timeout=guard
            )
            return record["value"], False
        answer = client.sync(
            getattr(client.scheduler, TAKE_HANDLER),
            name=name,
            timeout=timeout,
            callback_timeout=guard,
        )
    except KeyError:
        raise QueueMissing(name) from None
    except Exception as exc:
        raise detached(exc) from None
    if answer is None:
        raise HandlersMissing(TAKE_HANDLER)
    if "value" in answer:
        return answer["value"], bool(answer.get("forgotten"))
    if answer.get("missing"):
        raise QueueMissing(name)
    raise TimeoutError(f"nothing arrived in scheduler queue {name!r} within {timeout:g} s")


def create_queue(client: Any, name: str, maxsize: int) -> None:
    """Create a scheduler queue with plain RPCs (where ``run_on_scheduler`` is refused)."""
    client.sync(client.scheduler.queue_create, name=name, client=client.id, maxsize=maxsize)


def release_queue(client: Any, name: str) -> None:
    """Release a queue created by :func:`create_queue` (where ``run_on_scheduler`` is refused)."""
    client._send_to_scheduler({"op": "queue_release", "name": name, "client": client.id})


def scheduler_workers(client: Any, timeout: float) -> dict[str, Any]:
    """The scheduler's workers, asked of the scheduler itself.

    ``Client.scheduler_info()`` returns the client's shared copy, which a periodic refresh with
    ``n_workers=0`` can overwrite between another thread's update and its read: it then lists
    no workers at all.
    """
    identity = client.sync(client.scheduler.identity, n_workers=-1, callback_timeout=timeout)
    return dict(identity.get("workers", {}))


def new_client(factory: Callable[[], Any]) -> Any:
    """``factory()`` (which builds a ``Client``), discarding a client left half-built by a failure.

    A ``Client`` whose constructor raised still exists, referenced from the exception's
    traceback, with its event-loop thread; when it is collected, its ``close()`` waits twice the
    connect timeout for a connection that never was (and can deadlock a client starting
    meanwhile). Found in the traceback, marked closed and its loop stopped, it costs nothing.
    """
    import traceback

    from distributed import Client

    try:
        return factory()
    except BaseException as exc:
        for frame, _line in traceback.walk_tb(exc.__traceback__):
            client = frame.f_locals.get("self")
            if isinstance(client, Client) and client.status != "running":
                _discard(client)
        raise


def _discard(client: Any) -> None:
    for callback in getattr(client, "_periodic_callbacks", {}).values():
        callback.stop()
    client.status = "closed"
    runner = getattr(client, "_loop_runner", None)
    if runner is not None:
        runner.stop()


def silence_closed_gateway(cluster: Any) -> None:
    """Keep a closed dask-gateway cluster's ``Gateway`` from raising when collected.

    ``Gateway.__del__`` calls ``close()`` again, which reads a stopped loop and raises (an
    unraisable ``RuntimeError`` at some later collection); it skips asynchronous gateways.
    """
    gateway = getattr(cluster, "gateway", None)
    if gateway is not None and hasattr(gateway, "_asynchronous"):
        gateway._asynchronous = True


def scheduler_rpc(client: Any, op: str, timeout: float, **kwargs: Any) -> Any:
    """Call a scheduler handler (e.g. the event extension's) from a synchronous client."""
    scheduler = client.scheduler
    assert scheduler is not None, "the Dask client is not connected"
    return client.sync(getattr(scheduler, op), callback_timeout=timeout, **kwargs)
