"""The orchestrator's side of one launcher task: submit it, wait for it, stop it, clean up.

Internal API, also used by the benchmarks: :class:`LaunchTask` and :func:`dashboard_link`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import cloudpickle
from dagster import DagsterExecutionInterruptedError

from dagster_pipes_ext import remote
from dagster_pipes_ext.cluster import ConnectionState
from dagster_pipes_ext.errors import (
    error_for_ended_task,
    no_worker_error,
    worker_lost_error,
    worker_unresponsive_error,
)
from dagster_pipes_ext.message_reader import PipesDaskMessageReader
from dagster_pipes_ext.remote import dask_compat
from dagster_pipes_ext.remote.launcher import launch, launcher_entry
from dagster_pipes_ext.remote.scheduler_ops import (
    DASHBOARD_SERVED,
    FORGET_SESSION,
    STASH_SPEC,
    TASK_STATE,
    WORKER_PRESENT,
)
from dagster_pipes_ext.remote.wire import (
    LAUNCHER_METADATA_KEY,
    LaunchOutcome,
    LaunchSpec,
    SessionNames,
    SpecRef,
)

if TYPE_CHECKING:
    from distributed import Client, Future

# Workers and the scheduler have neither this package nor dagster: everything under `remote`
# reaches them by value.
cloudpickle.register_pickle_by_value(remote)

LIVENESS_CHECK_SECONDS = 1.0
WAIT_SLICE_SECONDS = 0.2
RPC_TIMEOUT_SECONDS = 10.0
# After a stop request, how much longer than the command's grace period to wait for the launcher.
STOP_WAIT_MARGIN_SECONDS = 10.0

logger = logging.getLogger(__name__)


@functools.cache
def _launcher() -> tuple[str, bytes, Any]:
    """The launcher pickled once per orchestrator process: its digest, bytes and task function.

    A lambda, because Dask pickles an importable function by reference, and the worker cannot
    import it; cloudpickle always pickles a lambda by value, with the ``remote`` functions it
    calls.
    """
    payload = cloudpickle.dumps(lambda spec: launch(spec))
    digest = hashlib.sha256(payload).hexdigest()
    return digest, payload, launcher_entry(digest)


class LaunchTask:
    """One launcher task on the cluster, from submission to clean-up.

    Args:
        dask_client: The connection to submit with.
        state: What that connection knows about its scheduler.
        key: The task key.
        names: The session's topic, data queue and events.
        forward_termination: Stop the command when the step is interrupted.
        termination_timeout_seconds: The command's SIGINT → SIGKILL grace period.
        worker_wait_timeout_seconds: How long the task may wait for a worker that can run it.
        heartbeat_timeout_seconds: How long the launcher may stay silent before it is lost.
        restrictions: ``resources``/``workers`` of the task.
        allow_other_workers: ``workers`` is a preference, not a restriction.
        priority: The task's Dask priority.

    Attributes:
        announcement: What the step logs about the launch. It is called once, when the
            launcher reports its start (the reader calls :meth:`announce` then), or at the end
            of ``run()`` if it never did: the event-log write stays off the launch's path.
    """

    def __init__(
        self,
        dask_client: Client,
        state: ConnectionState,
        *,
        key: str,
        names: SessionNames,
        forward_termination: bool,
        termination_timeout_seconds: float,
        worker_wait_timeout_seconds: float,
        heartbeat_timeout_seconds: float,
        restrictions: Mapping[str, Any],
        allow_other_workers: bool = False,
        priority: int = 0,
    ) -> None:
        self.client = dask_client
        self.state = state
        self.key = key
        self.names = names
        self._forward_termination = forward_termination
        self._grace = termination_timeout_seconds
        self._worker_wait = worker_wait_timeout_seconds
        self._heartbeat_timeout = heartbeat_timeout_seconds
        self._restrictions = dict(restrictions)
        self._allow_other_workers = allow_other_workers
        self._priority = priority
        self._ended = threading.Event()
        self._reader: PipesDaskMessageReader
        self.announcement: Callable[[], None] | None = None
        self._announcing = threading.Lock()

    def announce(self) -> None:
        """Call ``announcement`` if it was not called yet (from the reader's thread, or run's)."""
        with self._announcing:
            announcement, self.announcement = self.announcement, None
        if announcement is not None:
            announcement()

    def notify_end(self) -> None:
        """Called by the reader once the launcher's last batch was handled."""
        self._ended.set()

    # -- the protocol -------------------------------------------------------------------------

    def run(self, spec: LaunchSpec, reader: PipesDaskMessageReader, log: Any) -> LaunchOutcome:
        """Submit the launcher and wait for its outcome (publishing it again if it was lost).

        Args:
            spec: What the launcher runs.
            reader: The session's reader, constructed with ``on_end=self.notify_end``.
            log: Where to say that an interrupted step stops the command (``context.log``).
        """
        self._reader = reader
        outcome = self._submit_and_wait(spec, log, republish=False)
        if outcome["status"] == "launcher_missing":
            outcome = self._submit_again_with_launcher_republished(spec, log)
        return outcome

    def _submit_again_with_launcher_republished(self, spec: LaunchSpec, log: Any) -> LaunchOutcome:
        """The scheduler lost the published launcher (it was restarted); nothing was started."""
        self.key += "-again"
        return self._submit_and_wait(spec, log, republish=True)

    def _submit_and_wait(self, spec: LaunchSpec, log: Any, *, republish: bool) -> LaunchOutcome:
        self._ended.clear()
        future = self.client.submit(
            self._entry(republish),
            self._task_argument(spec),
            key=self.key,
            pure=False,
            **self._restrictions,
            allow_other_workers=self._allow_other_workers,
            priority=self._priority,
            retries=0,
        )
        try:
            return self._await(future, log)
        finally:
            future.release()

    def _task_argument(self, spec: LaunchSpec) -> LaunchSpec | SpecRef:
        """The spec, or where the launcher claims it: stashed on the scheduler beforehand.

        A task's arguments travel on Dask's batched streams, whose logs of recent messages keep
        them (the command's environment included) long after the session; the stashed spec
        travels on RPCs and leaves the scheduler with the claim. The first stash on a
        connection is waited for (it tells whether ``run_function`` is refused: then the task
        carries the spec); later ones are not, and the launcher waits for a late one.
        """
        if self.state.run_function_refused:
            return spec
        if self.state.handlers_ready:
            stashing = dask_compat.start_scheduler_rpc(
                self.client, dask_compat.STASH_HANDLER, name=spec["claim_event"], spec=spec
            )
            stashing.add_done_callback(lambda done: self._stash_answered(done, spec))
            return {"claim_event": spec["claim_event"], "stashed": True, "handlers": True}
        stashing = dask_compat.start_run_on_scheduler(
            self.client, STASH_SPEC, spec["claim_event"], spec
        )
        if not self.state.spec_stash_works:
            try:
                stashing.result(timeout=RPC_TIMEOUT_SECONDS)
            except Exception:
                self.state.run_function_refused = True
                return spec
            self.state.spec_stash_works = True
        return {"claim_event": spec["claim_event"], "stashed": True, "handlers": False}

    def _stash_answered(self, done: concurrent.futures.Future[Any], spec: LaunchSpec) -> None:
        """Stash again through ``run_function`` if the handler was missing or failed.

        The launcher waits for a late spec; this runs on the client's event loop.
        """
        if not done.cancelled() and done.exception() is None and done.result() is not None:
            return
        self.state.handlers_ready = False
        dask_compat.start_run_on_scheduler(self.client, STASH_SPEC, spec["claim_event"], spec)

    def _entry(self, republish: bool) -> Any:
        """The task function, once the launcher is published on this connection's scheduler."""
        digest, payload, entry = _launcher()
        if republish or digest not in self.state.published_launchers:
            self.client.set_metadata([*LAUNCHER_METADATA_KEY, digest], payload)
            self.state.published_launchers.add(digest)
        return entry

    # -- waiting ------------------------------------------------------------------------------

    def _await(self, future: Future, log: Any) -> LaunchOutcome:
        """Wait until the launcher's last batch was handled or the task ended otherwise."""
        future.add_done_callback(lambda _f: self._ended.set())
        try:
            self._watch(future)
        except DagsterExecutionInterruptedError:
            if self._forward_termination and not self._ended.is_set():
                log.info(
                    "[pipes] execution interrupted: stopping the process on the Dask worker "
                    f"(SIGINT, then SIGKILL after {self._grace:g}s)."
                )
                self.stop_interrupted()
                self._ended.wait(timeout=self._grace + STOP_WAIT_MARGIN_SECONDS)
            if not self._ended.is_set():
                future.cancel()
            raise
        return self._result(future)

    def _watch(self, future: Future) -> None:
        """Wait for the task, failing fast if its worker is lost or no worker can ever run it."""
        next_check = time.monotonic() + LIVENESS_CHECK_SECONDS
        unsatisfiable_since: float | None = None
        while not self._ended.wait(timeout=WAIT_SLICE_SECONDS):
            now = time.monotonic()
            if now < next_check:
                continue
            next_check = now + LIVENESS_CHECK_SECONDS
            if self.client.status != "running":
                continue  # reconnecting: the client cancels the future if the scheduler is gone
            worker = self._reader.worker_address
            if worker is not None:
                self._check_launcher_alive(future, worker)
                continue
            workers_info = dask_compat.scheduler_workers(self.client, RPC_TIMEOUT_SECONDS)
            if not self._unrunnable(future, workers_info):
                unsatisfiable_since = None
                continue
            unsatisfiable_since = unsatisfiable_since or now
            if now - unsatisfiable_since >= self._worker_wait:
                future.cancel()
                raise no_worker_error(
                    workers_info, str(future.key), self._checked_restrictions, self._worker_wait
                )

    def _worker_present(self, worker: str) -> bool:
        """Whether the scheduler still has this worker, asked of the scheduler itself.

        Through the package's scheduler handler, installed with the session's queue (this is
        asked once the launcher's first batch came); else ``WORKER_PRESENT``, else the
        scheduler's ``identity``.
        """
        if not self.state.run_function_refused:
            with contextlib.suppress(Exception):
                answer = dask_compat.scheduler_rpc(
                    self.client, dask_compat.PRESENT_HANDLER, RPC_TIMEOUT_SECONDS, address=worker
                )
                if answer is not None:
                    return bool(answer)
        return bool(
            dask_compat.run_on_scheduler(
                self.client,
                self.state,
                WORKER_PRESENT,
                worker,
                fallback=lambda: (
                    worker in dask_compat.scheduler_workers(self.client, RPC_TIMEOUT_SECONDS)
                ),
            )
        )

    def _check_launcher_alive(self, future: Future, worker: str) -> None:
        """Fail if the scheduler removed the launcher's worker, or the launcher went silent.

        Both are facts, not a snapshot: the scheduler's own list of its workers, and the time
        since the launcher's last heartbeat or batch.
        """
        present = self._worker_present(worker)
        if self._ended.is_set():
            return
        if not present:
            future.cancel()
            raise worker_lost_error(worker)
        alive_at = self._reader.last_sign_of_life or time.monotonic()
        silent = time.monotonic() - alive_at
        if silent > self._heartbeat_timeout:
            future.cancel()
            raise worker_unresponsive_error(worker, silent, self._heartbeat_timeout)

    @property
    def _checked_restrictions(self) -> Mapping[str, Any]:
        return {} if self._allow_other_workers else self._restrictions

    def _unrunnable(self, future: Future, workers_info: Mapping[str, Any]) -> bool:
        """Whether no connected worker can run the task; the scheduler's own verdict first."""
        if not workers_info:
            return True  # with no worker at all the scheduler queues the task, silently
        state = self._task_state(str(future.key))
        if state is not None:
            return state == "no-worker"
        return not _runnable_somewhere(workers_info, self._checked_restrictions)

    def _task_state(self, key: str) -> str | None:
        """The scheduler's state of the task (``None``: unknown, or not to be asked)."""
        if self.state.handlers_ready:
            with contextlib.suppress(Exception):
                answer = dask_compat.scheduler_rpc(
                    self.client, dask_compat.STATE_HANDLER, RPC_TIMEOUT_SECONDS, key=key
                )
                if answer is not None:
                    return cast("str | None", answer["state"])
        return dask_compat.run_on_scheduler(
            self.client, self.state, TASK_STATE, key, fallback=lambda: None
        )

    def _result(self, future: Future) -> LaunchOutcome:
        """The outcome: from the launcher's last batch if the reader has it, else the task's."""
        if self._reader.outcome is not None:
            return self._reader.outcome
        if future.status in ("error", "cancelled"):
            exception = (
                cast(BaseException, future.exception()) if future.status == "error" else None
            )
            raise error_for_ended_task(
                str(future.key),
                exception,
                cancelled=future.status == "cancelled",
                connected=self.client.status == "running",
                worker=self._reader.worker_address,
            ) from exception
        return cast(LaunchOutcome, future.result())

    # -- clean-up -----------------------------------------------------------------------------

    def stop_interrupted(self) -> None:
        """Ask the launcher to stop the command (the session's stop event)."""
        dask_compat.scheduler_rpc(
            self.client, "event_set", RPC_TIMEOUT_SECONDS, name=self.names.stop_event
        )

    def _forget_by_handler(self, stop: bool) -> bool:
        """``forget_session`` through the package's handler; whether the scheduler had it."""
        names = self.names
        with contextlib.suppress(Exception):
            answer = dask_compat.scheduler_rpc(
                self.client,
                dask_compat.FORGET_HANDLER,
                RPC_TIMEOUT_SECONDS,
                topic=names.topic,
                queue=names.queue,
                events=names.events,
                release_launcher=stop,
            )
            if answer is not None:
                return True
        self.state.handlers_ready = False
        return False

    def forget(self, *, stop: bool) -> None:
        """Leave nothing of the session on a (possibly long-lived, shared) scheduler.

        Args:
            stop: Also set the stop event, so a launcher still running stops its command.
        """
        if self.client.status != "running":
            return  # the scheduler is gone, and with it everything the session left there
        reader = getattr(self, "_reader", None)
        if reader is not None and reader.session_removed:
            # Taking the launcher's last batch removed the session on the scheduler already.
            dask_compat.set_topic_handler(self.client, self.names.topic, None)
            return
        # One call does it all. Dropping the topic on the scheduler also drops this client's
        # subscription: an `unsubscribe-topic` message sent now could arrive after the removal
        # (it travels on another channel) and re-create the topic.
        names = self.names
        if self.state.handlers_ready and self._forget_by_handler(stop):
            dask_compat.set_topic_handler(self.client, names.topic, None)
            return
        if (
            dask_compat.run_on_scheduler(
                self.client,
                self.state,
                FORGET_SESSION,
                names.topic,
                names.queue,
                names.events,
                stop,
                fallback=lambda: None,
            )
            is not None
        ):
            dask_compat.set_topic_handler(self.client, names.topic, None)
            return
        try:
            # Without run_on_scheduler an empty topic stays, with its last heartbeats.
            if stop:
                self.stop_interrupted()
            for name in names.events:
                dask_compat.scheduler_rpc(
                    self.client, "event_clear", RPC_TIMEOUT_SECONDS, name=name
                )
            dask_compat.release_queue(self.client, names.queue)
            self.client.unsubscribe_topic(names.topic)
        except Exception:
            logger.debug(
                "could not clean session %s from the scheduler", names.topic, exc_info=True
            )


def dashboard_link(
    dask_client: Client, state: ConnectionState, embedded_dashboard: bool
) -> str | None:
    """The scheduler's dashboard link, looked up once per connection (``None``: not served)."""
    if embedded_dashboard not in state.dashboard_links:
        link: str | None
        try:
            link = _lookup_dashboard_link(dask_client, state, embedded_dashboard)
        except Exception:
            link = None
        state.dashboard_links[embedded_dashboard] = link
    return state.dashboard_links[embedded_dashboard]


def _lookup_dashboard_link(
    dask_client: Client, state: ConnectionState, embedded_dashboard: bool
) -> str | None:
    info = dask_client.scheduler_info(n_workers=0)
    port = info.get("services", {}).get("dashboard")
    if port is None:
        return None
    if str(info.get("address", "")).startswith("inproc://"):
        # The embedded cluster serves its dashboard on loopback only.
        return f"http://127.0.0.1:{port}/status" if embedded_dashboard else None
    # run_on_scheduler refused: trust the listed service.
    served = dask_compat.run_on_scheduler(
        dask_client, state, DASHBOARD_SERVED, fallback=lambda: True
    )
    return dask_client.dashboard_link if served else None


def _runnable_somewhere(workers_info: Mapping[str, Any], restrictions: Mapping[str, Any]) -> bool:
    from distributed.comm.addressing import resolve_address

    resources = restrictions.get("resources") or {}
    allowed: set[str] = set()
    for entry in restrictions.get("workers") or ():
        allowed.add(str(entry))
        with contextlib.suppress(ValueError, TypeError):
            allowed.add(resolve_address(str(entry)))  # "127.0.0.1:8788" → "tcp://127.0.0.1:8788"
    for address, info in workers_info.items():
        if allowed and not {address, str(info.get("name")), info.get("host")} & allowed:
            continue
        have = info.get("resources") or {}
        if all(have.get(name, 0) >= amount for name, amount in resources.items()):
            return True
    return False
