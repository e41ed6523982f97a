"""``PipesDaskClient``: run external code on a Dask cluster with the full Pipes protocol."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import shlex
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import cloudpickle
from dagster import (
    AssetCheckExecutionContext,
    AssetExecutionContext,
    ConfigurableResource,
    DagsterExecutionInterruptedError,
    MetadataValue,
    OpExecutionContext,
    PipesClient,
    PipesClientCompletedInvocation,
    open_pipes_session,
)
from dagster_pipes import PipesExtras
from pydantic import Field

from dagster_pipes_ext import worker as _worker_module
from dagster_pipes_ext.cluster import (
    DaskConnectionError,
    get_dask_client,
    resolve_scheduler_address,
)
from dagster_pipes_ext.context_injector import PipesDaskContextInjector
from dagster_pipes_ext.errors import (
    PipesDaskError,
    PipesDaskLaunchError,
    PipesDaskNoWorkerError,
    PipesDaskProcessError,
    PipesDaskSchedulerUnreachableError,
    PipesDaskWorkerLostError,
)
from dagster_pipes_ext.message_reader import PipesDaskMessageReader
from dagster_pipes_ext.worker import (
    LAUNCHER_METADATA_KEY,
    LaunchOutcome,
    LaunchSpec,
    dashboard_served,
    forget_session,
    launch,
    launcher_entry,
    task_state,
)

if TYPE_CHECKING:
    from distributed import Client, Future

# The launcher must reach workers by value: a worker has neither this package nor dagster.
# Registering the module is not enough on its own (dask pickles an importable callable by
# reference first), so the submitted callables are lambdas, which cloudpickle always pickles by
# value, together with the registered module's functions they call.
cloudpickle.register_pickle_by_value(_worker_module)


@functools.cache
def _launcher() -> tuple[str, bytes, Any]:
    """The launcher pickled once per orchestrator process: its digest, bytes and task function."""
    payload = cloudpickle.dumps(lambda spec: launch(spec))
    digest = hashlib.sha256(payload).hexdigest()
    return digest, payload, launcher_entry(digest)


# (Dask client id, launcher digest) pairs whose scheduler holds the launcher.
_published_launchers: set[tuple[str, str]] = set()


def _launch_entry(dask_client: Client, *, again: bool = False) -> Any:
    """The task function, once the launcher is published on the client's scheduler.

    Args:
        dask_client: The connection the task will be submitted with.
        again: Publish even if it was published before (the scheduler lost it: restarted).
    """
    digest, payload, entry = _launcher()
    if again or (dask_client.id, digest) not in _published_launchers:
        dask_client.set_metadata([*LAUNCHER_METADATA_KEY, digest], payload)
        _published_launchers.add((dask_client.id, digest))
    return entry


_FORGET_SESSION = lambda topic, events, stop, dask_scheduler=None: forget_session(  # noqa: E731
    topic, events, stop, dask_scheduler
)
_TASK_STATE = lambda key, dask_scheduler=None: task_state(key, dask_scheduler)  # noqa: E731
_DASHBOARD_SERVED = lambda dask_scheduler=None: dashboard_served(dask_scheduler)  # noqa: E731

_LIVENESS_CHECK_SECONDS = 1.0
_MISSING_VALUE = object()
# The dashboard link of each scheduler connection (Client.id), looked up once.
_dashboard_links: dict[tuple[str, bool], str | None] = {}
_RPC_TIMEOUT_SECONDS = 10.0

logger = logging.getLogger(__name__)


class PipesDaskClient(ConfigurableResource, PipesClient):
    """A Pipes client that runs a command on a Dask cluster and streams what it reports.

    The command (any program, any language) runs on a Dask worker in its own process group. The
    external process sees stock Pipes bootstrap params, so the unmodified
    ``with open_dagster_pipes() as context:`` code of Dagster's Pipes tutorial works. Its logs,
    materializations, checks, custom messages, stdout and stderr come back through the Dask
    scheduler while it runs; nothing is shared between orchestrator and worker but the scheduler.

    With no scheduler address configured (here, in ``DASK_SCHEDULER_ADDRESS`` or in Dask's
    ``scheduler-address`` config) an embedded in-process ``LocalCluster`` is started on first use
    and closed when the process exits.

    Example:
        .. code-block:: python

            @asset
            def orders(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
                return dask_pipes.run(
                    context=context, command=["python", "external/orders.py"]
                ).get_materialize_result()

            defs = Definitions(assets=[orders], resources={"dask_pipes": PipesDaskClient()})
    """

    scheduler_address: str | None = Field(
        default=None,
        description=(
            "Address of the Dask scheduler, e.g. tcp://127.0.0.1:8786. Unset: "
            "DASK_SCHEDULER_ADDRESS or Dask config, else an embedded in-process cluster."
        ),
    )
    env: dict[str, str] | None = Field(
        default=None, description="Environment variables added to the worker's for the command."
    )
    cwd: str | None = Field(
        default=None, description="Working directory of the command, on the worker."
    )
    forward_stdio: bool = Field(
        default=True,
        description="Write the command's stdout/stderr to the step's compute logs.",
    )
    forward_termination: bool = Field(
        default=True,
        description="Stop the command (SIGINT, then SIGKILL) when the step is interrupted.",
    )
    termination_timeout_seconds: float = Field(
        default=20.0, description="Time between SIGINT and SIGKILL when stopping the command."
    )
    connect_timeout_seconds: float = Field(
        default=10.0, description="How long to wait for the Dask scheduler to answer."
    )
    worker_wait_timeout_seconds: float = Field(
        default=60.0,
        description=(
            "How long a task may wait for a worker that satisfies `resources`/`workers` "
            "(none connected, or none with those resources) before the step fails."
        ),
    )
    message_drain_timeout_seconds: float = Field(
        default=60.0,
        description="How long to wait, after the command ends, for messages still in flight.",
    )
    embedded_threads_per_worker: int = Field(
        default=4, description="Threads (concurrent commands) of the embedded cluster's worker."
    )
    embedded_dashboard: bool = Field(
        default=False,
        description=(
            "Serve the embedded cluster's Dask dashboard on 127.0.0.1 (needs bokeh; adds ~1.5 s "
            "to the cluster's start, and lives as long as the process that started it)."
        ),
    )
    poll_interval_seconds: float = Field(
        default=0.005, description="How often the launcher checks the message file when idle."
    )
    max_batch_bytes: int = Field(
        default=128 * 1024, description="Largest batch of messages/stdio in one scheduler event."
    )

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def _with_updated_values(self, values: Mapping[str, Any] | None) -> PipesDaskClient:
        """Copy the resource; skip Dagster's re-validation when no value changes.

        Dagster re-creates a ``ConfigurableResource`` three times for every run it is used in,
        each time inferring and validating the config schema of every field again: ~5 ms per
        run for this resource's fields. When the values are the ones already held (always so
        without ``EnvVar`` or run config), a plain copy is the same resource.
        """
        if values and any(
            _MISSING_VALUE is (held := getattr(self, name, _MISSING_VALUE)) or held != value
            for name, value in values.items()
        ):
            return super()._with_updated_values(values)  # type: ignore[return-value]
        return self.model_copy()

    def get_dask_client(self) -> Client:
        """Return the (cached) Dask client this resource submits to.

        Raises:
            PipesDaskSchedulerUnreachableError: The scheduler did not answer in time.
        """
        try:
            return get_dask_client(
                resolve_scheduler_address(self.scheduler_address),
                connect_timeout_seconds=self.connect_timeout_seconds,
                embedded_threads_per_worker=self.embedded_threads_per_worker,
                embedded_dashboard=self.embedded_dashboard,
            )
        except DaskConnectionError as exc:
            raise PipesDaskSchedulerUnreachableError(str(exc)) from exc

    def run(  # type: ignore[override]
        self,
        *,
        context: OpExecutionContext | AssetExecutionContext | AssetCheckExecutionContext,
        extras: PipesExtras | None = None,
        command: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        resources: Mapping[str, float] | None = None,
        workers: str | Sequence[str] | None = None,
        allow_other_workers: bool = False,
        priority: int = 0,
    ) -> PipesClientCompletedInvocation:
        """Run ``command`` on a Dask worker inside a Pipes session and wait for it.

        Args:
            context: The context of the asset, multi-asset, asset check or op being executed.
            extras: Extra values for the external process (``context.extras`` there).
            command: The command, as a list of arguments or a string split with ``shlex``.
            env: Environment variables for this call, on top of the resource's ``env``.
            cwd: Working directory on the worker; overrides the resource's ``cwd``.
            resources: Dask worker resources the task needs, e.g. ``{"GPU": 1}``.
            workers: Worker addresses, names or hosts the task is restricted to.
            allow_other_workers: Let ``workers`` be a preference rather than a restriction.
            priority: Dask scheduling priority of the task.

        Returns:
            The completed invocation, with the Dask task key, worker, dashboard URL, exit code
            and wall time as metadata.

        Raises:
            PipesDaskProcessError: The command exited non-zero or was killed.
            PipesDaskLaunchError: The command could not be started on the worker.
            PipesDaskWorkerLostError: The worker was lost while the command ran.
            PipesDaskNoWorkerError: No worker can satisfy ``resources``/``workers`` in time.
            PipesDaskSchedulerUnreachableError: The scheduler could not be reached.
        """
        op_context = _op_context(context)
        argv = _normalize_command(command)
        _check_env(env)
        dask_client = self.get_dask_client()
        session_id = uuid.uuid4().hex
        run_id = op_context.run_id
        topic = f"dagster-pipes/{run_id}/{session_id}"
        key = f"dagster-pipes-{_node_name(op_context)}-{run_id[:8]}-{session_id[:12]}"
        injector = PipesDaskContextInjector(overrides=_partition_overrides(op_context))
        reader = PipesDaskMessageReader(
            dask_client=dask_client,
            topic=topic,
            forward_stdio=self.forward_stdio,
            log=op_context.log,
            drain_timeout_seconds=self.message_drain_timeout_seconds,
        )
        names = {"claim": f"{topic}/claimed", "stop": f"{topic}/stop"}
        started = time.monotonic()
        outcome: LaunchOutcome | None = None
        try:
            with open_pipes_session(
                context=op_context,
                context_injector=injector,
                message_reader=reader,
                extras=extras,
            ) as session:
                spec: LaunchSpec = {
                    "session_id": session_id,
                    "topic": topic,
                    "claim_event": names["claim"],
                    "stop_event": names["stop"],
                    "command": argv,
                    "env": {**(self.env or {}), **(env or {})},
                    "cwd": cwd or self.cwd,
                    "context_data": dict(injector.context_data),
                    "forward_stdio": self.forward_stdio,
                    "stop_when_abandoned": self.forward_termination,
                    "termination_timeout_seconds": self.termination_timeout_seconds,
                    "max_batch_bytes": self.max_batch_bytes,
                    "poll_interval_seconds": self.poll_interval_seconds,
                }
                restrictions: dict[str, Any] = {
                    "resources": dict(resources) if resources else None,
                    "workers": [workers] if isinstance(workers, str) else workers,
                }
                for attempt in ("", "-again"):
                    future = dask_client.submit(
                        _launch_entry(dask_client, again=bool(attempt)),
                        spec,
                        key=key + attempt,
                        pure=False,
                        **restrictions,
                        allow_other_workers=allow_other_workers,
                        priority=priority,
                        retries=0,
                    )
                    try:
                        outcome = self._await(
                            op_context,
                            dask_client,
                            future,
                            reader,
                            names["stop"],
                            {} if allow_other_workers else restrictions,
                        )
                    finally:
                        future.release()
                    if outcome["status"] != "launcher_missing":
                        break
                    # The scheduler lost the published launcher (it was restarted); nothing
                    # was started: publish it again and resubmit.
                assert outcome is not None
                if outcome["status"] == "launcher_missing":
                    raise PipesDaskLaunchError(
                        f"Dask worker {outcome['worker']} could not find the launcher this client "
                        f"published in the scheduler's metadata (key {list(LAUNCHER_METADATA_KEY)}"
                        "), even after publishing it again; the command was not started. Check "
                        "that the scheduler accepts set_metadata/get_metadata calls."
                    )
                if outcome["last_seq"] >= 0:
                    reader.set_last_seq(outcome["last_seq"])
                self._raise_for_outcome(outcome, reader)
        finally:
            # A launcher still running here was lost track of (worker lost, interrupted): stop
            # it, unless the user asked for external processes to outlive the step.
            self._forget_session(
                dask_client, topic, names, stop=outcome is not None or self.forward_termination
            )

        assert outcome is not None
        metadata: dict[str, Any] = {
            "dask/task_key": key,
            "dask/worker": outcome["worker"],
            "dask/exit_code": outcome["returncode"],
            "dask/wall_time_seconds": round(time.monotonic() - started, 4),
        }
        dashboard = self._dashboard_link(dask_client)
        if dashboard:
            metadata["dask/dashboard_url"] = MetadataValue.url(dashboard)
        return PipesClientCompletedInvocation(session, metadata=metadata)

    # -- waiting --------------------------------------------------------------------------

    def _await(
        self,
        context: OpExecutionContext,
        dask_client: Client,
        future: Future,
        reader: PipesDaskMessageReader,
        stop_event: str,
        restrictions: Mapping[str, Any],
    ) -> LaunchOutcome:
        # Done when the launcher's last batch was handled, or when the task ended otherwise.
        done = threading.Event()
        reader.on_end = done.set
        if reader.ended.is_set():
            done.set()
        future.add_done_callback(lambda _f: done.set())
        try:
            self._watch(dask_client, future, done, reader, restrictions)
        except DagsterExecutionInterruptedError:
            if self.forward_termination and not done.is_set():
                context.log.info(
                    "[pipes] execution interrupted: stopping the process on the Dask worker "
                    f"(SIGINT, then SIGKILL after {self.termination_timeout_seconds:g}s)."
                )
                _scheduler_rpc(dask_client, "event_set", name=stop_event)
                done.wait(timeout=self.termination_timeout_seconds + 10)
            if not done.is_set():
                future.cancel()
            raise
        return self._outcome_of(dask_client, future, reader)

    def _watch(
        self,
        dask_client: Client,
        future: Future,
        done: threading.Event,
        reader: PipesDaskMessageReader,
        restrictions: Mapping[str, Any],
    ) -> None:
        """Wait for the task, failing fast if its worker is lost or no worker can ever run it."""
        next_check = time.monotonic() + _LIVENESS_CHECK_SECONDS
        unsatisfiable_since: float | None = None
        while not done.wait(timeout=0.2):
            now = time.monotonic()
            if now < next_check:
                continue
            next_check = now + _LIVENESS_CHECK_SECONDS
            if dask_client.status != "running":
                continue  # reconnecting: the client cancels the future if the scheduler is gone
            workers_info = dask_client.scheduler_info(n_workers=-1).get("workers", {})
            if reader.started.is_set():
                if reader.worker_address not in workers_info and not done.is_set():
                    future.cancel()
                    raise self._worker_lost(reader.worker_address)
                continue
            if not self._unrunnable(dask_client, future, workers_info, restrictions):
                unsatisfiable_since = None
                continue
            unsatisfiable_since = unsatisfiable_since or now
            if now - unsatisfiable_since >= self.worker_wait_timeout_seconds:
                future.cancel()
                timeout = self.worker_wait_timeout_seconds
                raise PipesDaskNoWorkerError(
                    _no_worker_message(workers_info, str(future.key), restrictions, timeout)
                )

    def _unrunnable(
        self,
        dask_client: Client,
        future: Future,
        workers_info: Mapping[str, Any],
        restrictions: Mapping[str, Any],
    ) -> bool:
        """Whether no connected worker can run the task; the scheduler's own verdict first."""
        if not workers_info:
            return True  # with no worker at all the scheduler queues the task, silently
        try:
            state = dask_client.run_on_scheduler(_TASK_STATE, str(future.key))
        except Exception:
            state = None  # run_on_scheduler refused: judge from the workers' descriptions
        if state is not None:
            return state == "no-worker"
        return not _runnable_somewhere(workers_info, restrictions)

    def _outcome_of(
        self, dask_client: Client, future: Future, reader: PipesDaskMessageReader
    ) -> LaunchOutcome:
        from distributed.scheduler import KilledWorker

        if reader.outcome is not None:
            return reader.outcome
        if future.status == "error":
            exc = cast(BaseException, future.exception())
            if isinstance(exc, KilledWorker):
                raise self._worker_lost(reader.worker_address) from exc
            raise PipesDaskLaunchError(
                f"The launcher task {future.key!r} failed on the Dask worker: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if future.status == "cancelled":
            if dask_client.status != "running":
                raise PipesDaskSchedulerUnreachableError(
                    f"The connection to the Dask scheduler was lost while task {future.key!r} "
                    "ran. The launcher stops the command when its worker loses the scheduler; "
                    "add a Dagster RetryPolicy to run it again once the scheduler is back."
                )
            raise PipesDaskError(f"The Dask task {future.key!r} was cancelled on the cluster.")
        outcome: LaunchOutcome = future.result()
        if outcome["status"] == "redelivered":
            raise self._worker_lost(reader.worker_address, redelivered_to=outcome["worker"])
        return outcome

    def _worker_lost(
        self, worker: str | None, redelivered_to: str | None = None
    ) -> PipesDaskWorkerLostError:
        where = f" ({worker})" if worker else ""
        again = (
            f" Dask delivered the task again to {redelivered_to}, which refused to start it."
            if redelivered_to
            else ""
        )
        return PipesDaskWorkerLostError(
            f"The Dask worker running the external process{where} was lost.{again} The command "
            "is not re-run automatically because it may have side effects; add a Dagster "
            "RetryPolicy to the asset or op to run it again."
        )

    def _raise_for_outcome(self, outcome: LaunchOutcome, reader: PipesDaskMessageReader) -> None:
        if outcome["status"] == "launch_failed":
            raise PipesDaskLaunchError(
                f"{outcome['error']} (Dask worker {outcome['worker']}, host {outcome['hostname']})"
            )
        code = outcome["returncode"]
        if code == 0:
            return
        assert code is not None
        tail = outcome["stderr_tail"].rstrip()
        how = f"was {outcome['error']}" if outcome["error"] else f"failed with exit code {code}"
        stopped = " after a stop request" if outcome["status"] == "stopped" else ""
        raise PipesDaskProcessError(
            f"External process on Dask worker {outcome['worker']} "
            f"(host {outcome['hostname']}) {how}{stopped}."
            + (f"\nLast lines of its stderr:\n{tail}" if tail else ""),
            returncode=code,
            worker=outcome["worker"],
            stderr_tail=outcome["stderr_tail"],
        )

    # -- scheduler hygiene ----------------------------------------------------------------

    def _forget_session(
        self, dask_client: Client, topic: str, names: Mapping[str, str], *, stop: bool
    ) -> None:
        """Leave nothing of the session on a (possibly long-lived, shared) scheduler."""
        if dask_client.status != "running":
            return  # the scheduler is gone, and with it everything the session left there
        events = [names["claim"], names["stop"]]
        try:
            # One call does it all. Dropping the topic on the scheduler also drops this client's
            # subscription: an `unsubscribe-topic` message sent now could arrive after the
            # removal (it travels on another channel) and re-create the topic.
            dask_client.run_on_scheduler(_FORGET_SESSION, topic, events, stop)
            getattr(dask_client, "_event_handlers", {}).pop(topic, None)
            return
        except Exception:
            logger.debug(
                "run_on_scheduler refused; cleaning up %s call by call", topic, exc_info=True
            )
        try:
            # Without run_on_scheduler (`distributed.scheduler.pickle: false`) an empty topic stays.
            if stop:
                _scheduler_rpc(dask_client, "event_set", name=names["stop"])
            for name in events:
                _scheduler_rpc(dask_client, "event_clear", name=name)
            dask_client.unsubscribe_topic(topic)
        except Exception:
            logger.debug("could not clean session %s from the scheduler", topic, exc_info=True)

    def _dashboard_link(self, dask_client: Client) -> str | None:
        # Dagster builds a new resource object for every run: cache per connection instead.
        cache_key = (dask_client.id, self.embedded_dashboard)
        if cache_key not in _dashboard_links:
            link: str | None
            try:
                link = _dashboard_link(dask_client, self.embedded_dashboard)
            except Exception:
                link = None
            _dashboard_links[cache_key] = link
        return _dashboard_links[cache_key]


def _scheduler_rpc(dask_client: Client, op: str, **kwargs: Any) -> Any:
    """Call a scheduler handler (e.g. the event extension's) from a synchronous client."""
    scheduler = dask_client.scheduler
    assert scheduler is not None, "the Dask client is not connected"
    return dask_client.sync(getattr(scheduler, op), callback_timeout=_RPC_TIMEOUT_SECONDS, **kwargs)


def _dashboard_link(dask_client: Client, embedded_dashboard: bool) -> str | None:
    info = dask_client.scheduler_info(n_workers=0)
    port = info.get("services", {}).get("dashboard")
    if port is None:
        return None
    if str(info.get("address", "")).startswith("inproc://"):
        # The embedded cluster serves its dashboard on loopback only.
        return f"http://127.0.0.1:{port}/status" if embedded_dashboard else None
    try:
        served = dask_client.run_on_scheduler(_DASHBOARD_SERVED)
    except Exception:
        served = True  # run_on_scheduler refused: trust the listed service
    return dask_client.dashboard_link if served else None


def _op_context(
    context: OpExecutionContext | AssetExecutionContext | AssetCheckExecutionContext,
) -> OpExecutionContext:
    if isinstance(context, (AssetExecutionContext, AssetCheckExecutionContext)):
        return context.op_execution_context
    return context


def _node_name(context: OpExecutionContext) -> str:
    try:
        return context.op.name
    except Exception:  # directly invoked (build_asset_context): there is no node, only its def
        return context.op_def.name


def _normalize_command(command: str | Sequence[str]) -> list[str]:
    if isinstance(command, str):
        argv = shlex.split(command)
    elif isinstance(command, Sequence) and all(isinstance(a, str) for a in command):
        argv = list(command)
    else:
        raise TypeError(
            "PipesDaskClient.run(command=...) takes a string or a sequence of strings, got "
            f"{command!r}."
        )
    if not argv:
        raise ValueError("PipesDaskClient.run(command=...) is empty: name a program to run.")
    return argv


def _check_env(env: Mapping[str, str] | None) -> None:
    if env is None:
        return
    bad = {k: v for k, v in env.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise TypeError(
            f"PipesDaskClient.run(env=...) takes string names and values; not: {bad!r}. "
            "Convert the values with str()."
        )


def _partition_overrides(context: OpExecutionContext) -> dict[str, Any]:
    """Deliver a multi-partition run's key range and time window, which Dagster core omits."""
    try:
        if context.has_partition_key or not context.has_partition_key_range:
            return {}
        key_range = context.partition_key_range
    except Exception:
        return {}
    overrides: dict[str, Any] = {
        "partition_key_range": {"start": key_range.start, "end": key_range.end}
    }
    try:
        window = context.partition_time_window
        overrides["partition_time_window"] = {
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
        }
    except Exception:
        pass  # not time-partitioned
    return overrides


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


def _no_worker_message(
    workers_info: Mapping[str, Any], key: str, restrictions: Mapping[str, Any], timeout: float
) -> str:
    if not workers_info:
        return (
            f"No Dask worker connected to the scheduler within {timeout:g}s, so the task "
            f"{key!r} could not start. Start a worker (`dask worker <scheduler>`)."
        )
    offered = {addr: info.get("resources") or {} for addr, info in workers_info.items()}
    return (
        f"No Dask worker can run task {key!r}: it needs "
        f"resources={restrictions.get('resources') or {}} workers={restrictions.get('workers')}, "
        f"and within {timeout:g}s no connected worker offered them (workers and their "
        f"resources: {offered}). Start a worker with `dask worker --resources ...` or change "
        "`resources=`/`workers=`."
    )


__all__ = ["PipesDaskClient"]
