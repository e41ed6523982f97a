"""``PipesDaskClient``: run external code on a Dask cluster with the full Pipes protocol."""

from __future__ import annotations

import json
import numbers
import os
import shlex
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetCheckExecutionContext,
    AssetExecutionContext,
    MetadataValue,
    OpExecutionContext,
    PipesClient,
    PipesClientCompletedInvocation,
    open_pipes_session,
)
from dagster_pipes import PipesExtras
from pydantic import Field

from dagster_pipes_ext.cluster import Connection, ConnectionState, connection_state
from dagster_pipes_ext.connection import DaskConnectionResource, require_field
from dagster_pipes_ext.context_injector import PipesDaskContextInjector, partition_overrides
from dagster_pipes_ext.errors import (
    error_for_outcome,
)
from dagster_pipes_ext.message_reader import PipesDaskMessageReader
from dagster_pipes_ext.remote import dask_compat
from dagster_pipes_ext.remote.wire import LaunchOutcome, LaunchSpec, session_names
from dagster_pipes_ext.task import RPC_TIMEOUT_SECONDS, LaunchTask, dashboard_link

if TYPE_CHECKING:
    pass

_MISSING_VALUE = object()
HEARTBEAT_INTERVAL_SECONDS = 1.0
MIN_BATCH_BYTES = 1024


class PipesDaskClient(DaskConnectionResource, PipesClient):
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
    worker_wait_timeout_seconds: float = Field(
        default=60.0,
        description=(
            "How long a task may wait for a worker that satisfies `resources`/`workers` "
            "(none connected, or none with those resources) before the step fails."
        ),
    )
    message_drain_timeout_seconds: float = Field(
        default=60.0,
        description=(
            "After the command ended, how long to wait with nothing arriving from the worker "
            "(data still in flight) before the step fails; what already arrived is always "
            "handled, however long Dagster takes."
        ),
    )
    heartbeat_timeout_seconds: float = Field(
        default=60.0,
        description=(
            "How long the launcher may send nothing, not even its heartbeat (every second), "
            "before the worker counts as lost and the step fails; the worker's supervisor then "
            "stops the command on its own. At least 3."
        ),
    )
    poll_interval_seconds: float = Field(
        default=0.005, description="How often the launcher checks the message file when idle."
    )
    max_batch_bytes: int = Field(
        default=512 * 1024,
        description=(
            "Largest batch of messages/stdio in one scheduler call; 8 batches at most are in "
            "flight (a longer message travels in pieces). At least 1024."
        ),
    )
    max_message_bytes: int = Field(
        default=64 * 1024 * 1024,
        description=(
            "Longest Pipes message line forwarded. A longer one is not forwarded, every other "
            "message still is, and the step fails naming the message's method and size. At "
            "least max_batch_bytes."
        ),
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

    def run(  # type: ignore[override]
        self,
        *,
        context: OpExecutionContext | AssetExecutionContext | AssetCheckExecutionContext,
        extras: PipesExtras | None = None,
        command: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        resources: Mapping[str, float] | None = None,
        workers: str | int | Sequence[str | int] | None = None,
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
            workers: Worker addresses, names or hosts the task is restricted to (one, or a list).
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
        self._check_fields()
        argv = _normalize_command(command)
        _check_env(self.env, "PipesDaskClient(env=...)")
        _check_env(env, "PipesDaskClient.run(env=...)")
        _check_extras(extras)
        cwd = _normalize_cwd(cwd)
        workers = _check_placement(resources, workers, allow_other_workers, priority)
        started = time.monotonic()
        per_run = self.cluster_class is not None and self.cluster_lifetime == "run"
        connection = self._connect(cached=not per_run)
        try:
            task = self._new_task(
                op_context, connection, resources, workers, allow_other_workers, priority
            )
            task.announcement = lambda: op_context.log.info(
                f"[pipes] Dask cluster: {connection.source.describe()} "
                f"(scheduler {connection.address})"
            )
            try:
                env = {**self._cluster_env(op_context, connection, task.state), **(env or {})}
                return self._run_session(op_context, task, argv, env, cwd, extras, started)
            finally:
                task.announce()  # a launcher that never reported its start: the step says it too
        finally:
            if per_run:
                connection.close()

    def _check_fields(self) -> None:
        """The session fields' ranges (the connection's are checked on connecting)."""
        for name in (
            "termination_timeout_seconds",
            "worker_wait_timeout_seconds",
            "message_drain_timeout_seconds",
        ):
            require_field(name, getattr(self, name), at_least=0, why="a time in seconds")
        require_field(
            "heartbeat_timeout_seconds",
            self.heartbeat_timeout_seconds,
            at_least=3 * HEARTBEAT_INTERVAL_SECONDS,
            why=f"the launcher sends a heartbeat every {HEARTBEAT_INTERVAL_SECONDS:g} s; one "
            "that is late must not count as a lost worker",
        )
        require_field(
            "poll_interval_seconds",
            self.poll_interval_seconds,
            above=0,
            why="the launcher's wait while the command is quiet; 0 would keep a worker thread busy",
        )
        require_field(
            "max_batch_bytes",
            self.max_batch_bytes,
            at_least=MIN_BATCH_BYTES,
            why="each batch is one scheduler call",
        )
        require_field(
            "max_message_bytes",
            self.max_message_bytes,
            at_least=self.max_batch_bytes,
            why="the cap applies to lines longer than one batch; to cap lower, lower "
            "max_batch_bytes too",
        )

    def _run_session(
        self,
        context: OpExecutionContext,
        task: LaunchTask,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str | None,
        extras: PipesExtras | None,
        started: float,
    ) -> PipesClientCompletedInvocation:
        """Open the Pipes session, run the launcher, and account for every message."""
        injector = PipesDaskContextInjector(overrides=partition_overrides(context))
        reader = PipesDaskMessageReader(
            dask_client=task.client,
            topic=task.names.topic,
            queue=task.names.queue,
            forward_stdio=self.forward_stdio,
            log=context.log,
            drain_timeout_seconds=self.message_drain_timeout_seconds,
            on_start=task.announce,
            on_end=task.notify_end,
        )
        outcome: LaunchOutcome | None = None
        try:
            with open_pipes_session(
                context=context, context_injector=injector, message_reader=reader, extras=extras
            ) as session:
                spec = self._build_spec(task, argv, env, cwd, injector)
                outcome = task.run(spec, reader, context.log)
                if outcome["last_seq"] >= 0:  # the launcher sent something, its last batch too
                    reader.wait_for_end()
                error = error_for_outcome(outcome, started_on=reader.worker_address)
                if error is None and outcome["status"] != "launch_failed":
                    error = reader.delivery_error()
                if error is not None:
                    raise error
        finally:
            # A launcher still running here was lost track of (worker lost, interrupted): stop
            # it, unless the user asked for external processes to outlive the step.
            task.forget(stop=outcome is not None or self.forward_termination)
        return PipesClientCompletedInvocation(
            session, metadata=self._metadata(task, outcome, started)
        )

    def _cluster_env(
        self, context: OpExecutionContext, connection: Connection, state: ConnectionState
    ) -> dict[str, str]:
        """Give the command what it needs to use this run's cluster too.

        The embedded cluster is in-process (``inproc://``) unless ``embedded_tcp``: the command
        cannot reach it then.
        """
        if connection.source.kind == "embedded" and connection.source.target != "tcp":
            return {}  # inproc://: no other process can reach it (see embedded_tcp)
        if not state.threads_checked:
            state.threads_checked = True
            workers = dask_compat.scheduler_workers(connection.client, RPC_TIMEOUT_SECONDS)
            if sum(int(w.get("nthreads", 0)) for w in workers.values()) == 1:
                context.log.warning(
                    "[pipes] the Dask cluster has one worker thread in all, and the launcher "
                    "takes it: tasks the command submits to this cluster would wait forever."
                )
        return {"DASK_SCHEDULER_ADDRESS": connection.address, **connection.command_tls_env()}

    def _new_task(
        self,
        context: OpExecutionContext,
        connection: Connection,
        resources: Mapping[str, float] | None,
        workers: list[str | int] | None,
        allow_other_workers: bool,
        priority: int,
    ) -> LaunchTask:
        dask_client = connection.client
        session_id = uuid.uuid4().hex
        return LaunchTask(
            dask_client,
            connection_state(dask_client),
            key=f"dagster-pipes-{_node_name(context)}-{context.run_id[:8]}-{session_id[:12]}",
            names=session_names(context.run_id, session_id),
            forward_termination=self.forward_termination,
            termination_timeout_seconds=self.termination_timeout_seconds,
            worker_wait_timeout_seconds=self.worker_wait_timeout_seconds,
            heartbeat_timeout_seconds=self.heartbeat_timeout_seconds,
            restrictions={
                "resources": dict(resources) if resources else None,
                "workers": workers,
            },
            allow_other_workers=allow_other_workers,
            priority=priority,
        )

    def _build_spec(
        self,
        task: LaunchTask,
        argv: list[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        injector: PipesDaskContextInjector,
    ) -> LaunchSpec:
        return {
            "topic": task.names.topic,
            "queue": task.names.queue,
            "claim_event": task.names.claim_event,
            "stop_event": task.names.stop_event,
            "command": argv,
            "env": {**(self.env or {}), **(env or {})},
            "cwd": cwd or self.cwd,
            "context_data": dict(injector.context_data),
            "forward_stdio": self.forward_stdio,
            "stop_when_abandoned": self.forward_termination,
            "termination_timeout_seconds": self.termination_timeout_seconds,
            "max_batch_bytes": self.max_batch_bytes,
            "max_message_bytes": self.max_message_bytes,
            "poll_interval_seconds": self.poll_interval_seconds,
            "heartbeat_interval_seconds": HEARTBEAT_INTERVAL_SECONDS,
            "heartbeat_timeout_seconds": self.heartbeat_timeout_seconds,
        }

    def _metadata(
        self, task: LaunchTask, outcome: LaunchOutcome | None, started: float
    ) -> dict[str, Any]:
        assert outcome is not None
        metadata: dict[str, Any] = {
            "dask/task_key": task.key,
            "dask/worker": outcome["worker"],
            "dask/exit_code": outcome["returncode"],
            "dask/wall_time_seconds": round(time.monotonic() - started, 4),
        }
        link = dashboard_link(task.client, task.state, self.embedded_dashboard)
        if link:
            metadata["dask/dashboard_url"] = MetadataValue.url(link)
        return metadata


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
    if any("\0" in arg for arg in argv):
        raise ValueError(
            f"PipesDaskClient.run(command=...) has a NUL character in an argument: {argv!r}. "
            "A process cannot receive one; pass the data in a file or through extras."
        )
    return argv


def _check_env(env: Mapping[str, str] | None, where: str) -> None:
    """Names and values the worker's ``execve`` takes (it refuses the rest with no name given)."""
    if env is None:
        return
    if not isinstance(env, Mapping):
        raise TypeError(
            f"{where} takes a mapping of names to values, got {env!r}. "
            'Pass a dict, e.g. {"NAME": "value"}.'
        )
    bad = {k: v for k, v in env.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise TypeError(
            f"{where} takes string names and values; not: {bad!r}. Convert the values with str()."
        )
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(
                f"{where}: {name!r}: {value!r} cannot be an environment variable; a name is "
                "non-empty and has no '=' or NUL character, a value has no NUL character."
            )


def _check_extras(extras: PipesExtras | None) -> None:
    """Extras reach the command as JSON: say which one is not, before anything is started."""
    if extras is not None and not isinstance(extras, Mapping):
        raise TypeError(
            f"PipesDaskClient.run(extras=...) takes a mapping of names to values, got {extras!r}."
        )
    for name, value in (extras or {}).items():
        try:
            json.dumps({name: value})
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"PipesDaskClient.run(extras=...) must be JSON-serializable; extras[{name!r}] "
                f"is not ({exc}). Pass plain str/int/float/bool/None, lists and dicts."
            ) from None


def _normalize_cwd(cwd: str | os.PathLike[str] | None) -> str | None:
    """The working directory as the string the launch spec carries (a ``Path`` is fine too)."""
    path = os.fspath(cwd) if isinstance(cwd, os.PathLike) else cwd
    if path is not None and not isinstance(path, str):
        raise TypeError(
            f"PipesDaskClient.run(cwd=...) takes a directory on the worker, as a str or a path, "
            f"got {cwd!r}."
        )
    if path and "\0" in path:
        raise ValueError(f"PipesDaskClient.run(cwd=...) has a NUL character: {path!r}.")
    return path


def _is_amount(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value) >= 0


def _check_placement(
    resources: Mapping[str, float] | None,
    workers: str | int | Sequence[str | int] | None,
    allow_other_workers: bool,
    priority: int,
) -> list[str | int] | None:
    """Check Dask's placement arguments before anything is submitted; the workers as a list.

    Dask would take most of these mistakes only on the scheduler (a task that fails there) or
    as a restriction no worker can meet (a wait for ``worker_wait_timeout_seconds``).
    """
    if resources is not None:
        if not isinstance(resources, Mapping):
            raise TypeError(
                "PipesDaskClient.run(resources=...) takes a mapping of Dask worker resource "
                f'names to amounts, e.g. {{"GPU": 1}}; got {resources!r}.'
            )
        for name, amount in resources.items():
            if not isinstance(name, str) or not _is_amount(amount):
                raise ValueError(
                    f"PipesDaskClient.run(resources=...): {name!r}: {amount!r} is not a resource "
                    'name with an amount; use str names and numbers >= 0, e.g. {"GPU": 1}.'
                )
    names = [workers] if isinstance(workers, (str, int)) else workers
    if names is not None:
        if not isinstance(names, Sequence) or not all(_is_worker_name(w) for w in names):
            raise TypeError(
                "PipesDaskClient.run(workers=...) takes a worker address, name or host, or a "
                f"list of them (str, or int for a worker named by a number); got {workers!r}."
            )
        if not names:
            raise ValueError(
                "PipesDaskClient.run(workers=...) is empty: name at least one worker, or leave "
                "it None to let Dask choose."
            )
    if not isinstance(allow_other_workers, bool):
        raise TypeError(
            "PipesDaskClient.run(allow_other_workers=...) takes True or False, got "
            f"{allow_other_workers!r}."
        )
    if not isinstance(priority, numbers.Real) or isinstance(priority, bool):
        raise TypeError(
            f"PipesDaskClient.run(priority=...) takes a number (higher runs first), got "
            f"{priority!r}."
        )
    return list(names) if names is not None else None


def _is_worker_name(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


__all__ = ["PipesDaskClient"]
