"""Which Dask cluster PipesDaskClient uses, how commands are given, and where they run."""

import logging
import os
import shlex
import socket
import time
from pathlib import Path
from typing import Any, cast

import dask
import pytest
from dagster import (
    AssetExecutionContext,
    Definitions,
    EnvVar,
    ExecuteInProcessResult,
    asset,
    materialize,
)
from distributed import Client

from dagster_pipes_ext import (
    PipesDaskClient,
    PipesDaskConfigurationError,
    PipesDaskSchedulerUnreachableError,
    close_cached_clients,
)
from dagster_pipes_ext_tests.conftest import script
from dagster_pipes_ext_tests.support.processes import DaskProcesses, wait_for

ENV_REPORT = script("env_report.py")
SANITY_SECONDS = 30.0


def _free_port() -> int:
    """A loopback TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dead_address() -> str:
    return f"tcp://127.0.0.1:{_free_port()}"


def _worker_addresses(address: str) -> list[str]:
    with Client(address, timeout=10, set_as_default=False) as client:
        return sorted(client.scheduler_info(n_workers=-1)["workers"])


def _quick(**fields: Any) -> PipesDaskClient:
    """A PipesDaskClient that gives up within seconds on a dead scheduler or a missing worker."""
    return PipesDaskClient(connect_timeout_seconds=2, worker_wait_timeout_seconds=3, **fields)


def _probe_asset(captured: dict[str, Any], run_kwargs: dict[str, Any]):
    @asset
    def probe(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(context=context, **run_kwargs)
        captured["messages"] = list(invocation.get_custom_messages())
        captured["metadata"] = dict(invocation.metadata)
        captured["dask_client"] = dask_pipes.get_dask_client()
        return invocation.get_materialize_result()

    return probe


def _run(
    pipes: PipesDaskClient, **run_kwargs: Any
) -> tuple[ExecuteInProcessResult, dict[str, Any]]:
    """Materialize one asset that runs ``run_kwargs`` through ``pipes``; return what it saw."""
    run_kwargs.setdefault("command", ["python", ENV_REPORT])
    captured: dict[str, Any] = {}
    started = time.monotonic()
    result = materialize([_probe_asset(captured, run_kwargs)], resources={"dask_pipes": pipes})
    assert time.monotonic() - started < SANITY_SECONDS
    assert result.success
    return result, captured


def _facts(captured: dict[str, Any]) -> dict[str, Any]:
    [facts] = captured["messages"]
    return facts


def _worker_of(result: ExecuteInProcessResult) -> str:
    [materialization] = result.asset_materializations_for_node("probe")
    return materialization.metadata["dask/worker"].value  # type: ignore[return-value]


def _assert_runs_on(cluster: DaskProcesses, pipes: PipesDaskClient) -> None:
    """Materialize the probe through ``pipes``; it must have run on one of ``cluster``'s workers."""
    result, _ = _run(pipes)
    assert _worker_of(result) in _worker_addresses(cluster.address)


# -- cluster resolution -----------------------------------------------------------------------


def test_no_address_uses_the_embedded_cluster() -> None:
    """With no address anywhere, the command runs on the embedded in-process cluster."""
    assert dask.config.get("scheduler-address", None) is None
    pipes = _quick()
    result, captured = _run(pipes)
    worker = _worker_of(result)
    assert worker.startswith("inproc://")
    assert captured["metadata"]["dask/worker"].value == worker
    assert captured["dask_client"].scheduler.address.startswith("inproc://")
    assert _facts(captured)["pid"] != os.getpid()


def test_the_embedded_servers_wake_rarely() -> None:
    """The embedded scheduler and worker share the step's GIL: their periodic work stays rare.

    Dask's worker profiler alone would wake 100 times a second (every 10 ms) to sample task
    threads, and a launcher takes its own thread out of those samples anyway.
    """
    _, captured = _run(_quick())
    cluster = captured["dask_client"].cluster
    servers = [cluster.scheduler, *cluster.workers.values()]
    rates = {
        f"{type(server).__name__}.{name}": 1000.0 / callback.callback_time
        for server in servers
        for name, callback in server.periodic_callbacks.items()
        if callback.is_running()
    }
    assert not any(name.endswith((".profile", ".profile-cycle")) for name in rates), rates
    assert sum(rates.values()) <= 25, f"{sum(rates.values()):.0f} wake-ups per second: {rates}"


class _ClusterLineWatcher(logging.Handler):
    """Notes, when the step logs its cluster line, which launcher tasks the client holds."""

    def __init__(self, dask_client: Client) -> None:
        super().__init__()
        self.dask_client = dask_client
        self.held_at_line: list[list[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "[pipes] Dask cluster:" in record.getMessage():
            keys = [str(key) for key in list(self.dask_client.futures)]
            self.held_at_line.append([k for k in keys if k.startswith("dagster-pipes-")])


def _materialize_watched(
    **run_kwargs: Any,
) -> tuple[ExecuteInProcessResult, _ClusterLineWatcher]:
    """Materialize one asset that runs ``true`` with ``run_kwargs``, its cluster line watched."""
    watchers: list[_ClusterLineWatcher] = []

    @asset
    def probe(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        watcher = _ClusterLineWatcher(dask_pipes.get_dask_client())
        watchers.append(watcher)
        context.log.addHandler(watcher)
        try:
            invocation = dask_pipes.run(context=context, command=["true"], **run_kwargs)
            return invocation.get_materialize_result()
        finally:
            context.log.removeHandler(watcher)

    result = materialize([probe], resources={"dask_pipes": _quick()}, raise_on_error=False)
    [watcher] = watchers
    return result, watcher


def test_the_cluster_line_is_logged_once_the_launcher_is_submitted() -> None:
    """The `[pipes] Dask cluster:` event-log write does not delay the launch: it follows it."""
    result, watcher = _materialize_watched()
    assert result.success
    [held] = watcher.held_at_line  # logged once
    assert len(held) == 1, f"launcher tasks held when the cluster line was logged: {held}"


def test_extras_that_are_not_json_fail_before_anything_is_submitted() -> None:
    """Extras the command could never read fail the step up front, naming the extra."""
    result, watcher = _materialize_watched(extras={"ok": [1, "two"], "when": object()})
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert "extras['when'] is not" in message and "JSON-serializable" in message, message
    assert watcher.held_at_line == []  # nothing was submitted, no session was begun


def test_scheduler_address_field_uses_the_separate_cluster(
    separate_cluster: DaskProcesses,
) -> None:
    """An explicit `scheduler_address` runs the command on that cluster's tcp worker."""
    pipes = _quick(scheduler_address=separate_cluster.address)
    result, captured = _run(pipes)
    worker = _worker_of(result)
    assert worker.startswith("tcp://127.0.0.1:")
    assert worker in _worker_addresses(separate_cluster.address)
    assert captured["dask_client"].scheduler.address == separate_cluster.address


def test_dask_scheduler_address_env_var_uses_the_separate_cluster(
    separate_cluster: DaskProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`DASK_SCHEDULER_ADDRESS` in the environment selects the separate cluster."""
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", separate_cluster.address)
    _assert_runs_on(separate_cluster, _quick())


def test_env_var_config_in_materialize_resources(
    separate_cluster: DaskProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`scheduler_address=EnvVar(...)` in `materialize(resources=...)` resolves at run time."""
    monkeypatch.setenv("PIPES_EXT_TEST_SCHEDULER", separate_cluster.address)
    _assert_runs_on(separate_cluster, _quick(scheduler_address=EnvVar("PIPES_EXT_TEST_SCHEDULER")))


def test_env_var_config_in_definitions(
    separate_cluster: DaskProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`scheduler_address=EnvVar(...)` in `Definitions` resources reaches the separate cluster."""
    monkeypatch.setenv("PIPES_EXT_TEST_SCHEDULER", separate_cluster.address)
    captured: dict[str, Any] = {}
    defs = Definitions(
        assets=[_probe_asset(captured, {"command": ["python", ENV_REPORT]})],
        resources={"dask_pipes": _quick(scheduler_address=EnvVar("PIPES_EXT_TEST_SCHEDULER"))},
    )
    started = time.monotonic()
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process()
    assert time.monotonic() - started < SANITY_SECONDS
    assert result.success
    assert _worker_of(result) in _worker_addresses(separate_cluster.address)


def test_run_config_reaches_the_resource_the_asset_sees(separate_cluster: DaskProcesses) -> None:
    """Values given at launch (run config) replace the defaults of the resource in the run."""
    seen: dict[str, Any] = {}

    @asset
    def probe(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        seen["address"] = dask_pipes.scheduler_address
        seen["timeout"] = dask_pipes.termination_timeout_seconds
        return dask_pipes.run(
            context=context, command=["python", ENV_REPORT]
        ).get_materialize_result()

    config = {"scheduler_address": separate_cluster.address, "termination_timeout_seconds": 7}
    result = materialize(
        [probe],
        resources={"dask_pipes": PipesDaskClient.configure_at_launch()},
        run_config={"resources": {"dask_pipes": {"config": config}}},
    )
    assert result.success
    assert seen == {"address": separate_cluster.address, "timeout": 7.0}
    assert _worker_of(result) in _worker_addresses(separate_cluster.address)


def test_dask_config_scheduler_address_uses_the_separate_cluster(
    separate_cluster: DaskProcesses,
) -> None:
    """Dask's `scheduler-address` config selects the separate cluster."""
    with dask.config.set({"scheduler-address": separate_cluster.address}):
        result, _ = _run(_quick())
    assert _worker_of(result) in _worker_addresses(separate_cluster.address)


def test_explicit_field_beats_env_var(
    separate_cluster: DaskProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit `scheduler_address` wins over a (dead) `DASK_SCHEDULER_ADDRESS`."""
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", _dead_address())
    _assert_runs_on(separate_cluster, _quick(scheduler_address=separate_cluster.address))


def test_env_var_beats_dask_config(
    separate_cluster: DaskProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`DASK_SCHEDULER_ADDRESS` wins over a (dead) Dask `scheduler-address` config value."""
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", separate_cluster.address)
    with dask.config.set({"scheduler-address": _dead_address()}):
        result, _ = _run(_quick())
    assert _worker_of(result) in _worker_addresses(separate_cluster.address)


# -- cached clients ---------------------------------------------------------------------------


def test_cached_clients_are_reused_and_closed(separate_cluster: DaskProcesses) -> None:
    """One process reuses one Dask client per address across runs until `close_cached_clients`."""
    separate = PipesDaskClient(scheduler_address=separate_cluster.address)
    embedded = PipesDaskClient()
    first_separate = separate.get_dask_client()
    first_embedded = embedded.get_dask_client()
    assert PipesDaskClient(scheduler_address=separate_cluster.address).get_dask_client() is (
        first_separate
    )
    assert PipesDaskClient().get_dask_client() is first_embedded
    assert first_separate is not first_embedded

    _, captured_a = _run(separate)
    _, captured_b = _run(PipesDaskClient(scheduler_address=separate_cluster.address))
    assert captured_a["dask_client"] is first_separate
    assert captured_b["dask_client"] is first_separate
    _, captured_c = _run(embedded)
    assert captured_c["dask_client"] is first_embedded

    close_cached_clients()
    assert first_separate.status == "closed"
    assert first_embedded.status == "closed"

    again = separate.get_dask_client()
    assert again is not first_separate
    assert again.status == "running"
    _, captured_d = _run(separate)
    assert captured_d["dask_client"] is again


# -- commands ---------------------------------------------------------------------------------


def test_command_as_string_is_split_with_shlex(separate_cluster: DaskProcesses) -> None:
    """A string command is split like a shell would, quoting included."""
    pipes = PipesDaskClient(scheduler_address=separate_cluster.address)
    command = f"python {shlex.quote(ENV_REPORT)} --flag x --name 'two words'"
    _, captured = _run(pipes, command=command)
    assert _facts(captured)["argv"] == ["--flag", "x", "--name", "two words"]


def test_command_as_list_is_passed_verbatim(separate_cluster: DaskProcesses) -> None:
    """A list command reaches the process argument by argument, without shell splitting."""
    pipes = PipesDaskClient(scheduler_address=separate_cluster.address)
    _, captured = _run(pipes, command=("python", ENV_REPORT, "--flag", "x y", "$HOME"))
    assert _facts(captured)["argv"] == ["--flag", "x y", "$HOME"]


@pytest.mark.parametrize(
    ("command", "error", "match"),
    [
        ([1, 2], TypeError, r"takes a string or a sequence of strings, got \[1, 2\]"),
        (["python", 3], TypeError, "takes a string or a sequence of strings"),
        (None, TypeError, "takes a string or a sequence of strings, got None"),
        (b"python", TypeError, "takes a string or a sequence of strings"),
        ("", ValueError, r"run\(command=\.\.\.\) is empty"),
        ("   ", ValueError, r"run\(command=\.\.\.\) is empty"),
        ([], ValueError, r"run\(command=\.\.\.\) is empty"),
    ],
    ids=["ints", "mixed", "none", "bytes", "empty-string", "blank-string", "empty-list"],
)
def test_invalid_command_fails_before_connecting(
    command: Any, error: type[Exception], match: str
) -> None:
    """An invalid command is rejected with a clear message before any scheduler is contacted."""
    _assert_fails_before_connecting({"command": command}, error, match)


@pytest.mark.parametrize(
    ("run_kwargs", "error", "match"),
    [
        ({"env": ["A=1"]}, TypeError, r"run\(env=\.\.\.\) takes a mapping .*\['A=1'\]"),
        ({"extras": ["a"]}, TypeError, r"run\(extras=\.\.\.\) takes a mapping"),
        ({"cwd": 5}, TypeError, r"run\(cwd=\.\.\.\) takes a directory .*got 5"),
        ({"cwd": "/tmp\0x"}, ValueError, r"run\(cwd=\.\.\.\) has a NUL character"),
        ({"env": {"A=B": "1"}}, ValueError, r"'A=B': '1' cannot be an environment variable"),
        ({"env": {"": "1"}}, ValueError, r"'': '1' cannot be an environment variable"),
        ({"env": {"A": "x\0y"}}, ValueError, r"'A': 'x\\x00y' cannot be an environment"),
        ({"command": ["echo", "a\0b"]}, ValueError, r"run\(command=\.\.\.\) has a NUL"),
        ({"resources": ["GPU"]}, TypeError, r"run\(resources=\.\.\.\) takes a mapping"),
        ({"resources": {"GPU": "one"}}, ValueError, r"'GPU': 'one' is not a resource name"),
        ({"resources": {"GPU": -1}}, ValueError, r"'GPU': -1 is not a resource name"),
        ({"workers": 1.5}, TypeError, r"run\(workers=\.\.\.\) takes a worker address"),
        ({"workers": [True]}, TypeError, r"run\(workers=\.\.\.\) takes a worker address"),
        ({"workers": []}, ValueError, r"run\(workers=\.\.\.\) is empty"),
        ({"allow_other_workers": "no"}, TypeError, r"takes True or False, got 'no'"),
        ({"priority": "high"}, TypeError, r"run\(priority=\.\.\.\) takes a number"),
    ],
    ids=[
        "env-list",
        "extras-list",
        "cwd-int",
        "cwd-nul",
        "env-name-with-equals",
        "env-name-empty",
        "env-value-nul",
        "command-nul",
        "resources-list",
        "resource-amount-str",
        "resource-amount-negative",
        "workers-float",
        "workers-bool",
        "workers-empty",
        "allow-other-workers-str",
        "priority-str",
    ],
)
def test_invalid_run_arguments_fail_before_connecting(
    run_kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Placement, env, cwd and extras of the wrong shape fail up front, naming the argument.

    Dask would refuse most of them only on the scheduler, or wait for a worker no one offers.
    """
    _assert_fails_before_connecting({"command": ["true"], **run_kwargs}, error, match)


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("termination_timeout_seconds", -1.0, "at least 0"),
        ("worker_wait_timeout_seconds", -1.0, "at least 0"),
        ("message_drain_timeout_seconds", -1.0, "at least 0"),
        ("heartbeat_timeout_seconds", 0.5, "at least 3"),
        ("poll_interval_seconds", 0.0, "more than 0"),
        ("max_batch_bytes", 0, "at least 1024"),
        ("max_message_bytes", 10, "at least 524288"),
        ("connect_timeout_seconds", 0.0, "more than 0"),
        ("embedded_threads_per_worker", 0, "at least 1"),
    ],
)
def test_out_of_range_fields_fail_before_connecting(field: str, value: float, bound: str) -> None:
    """A field out of its range fails the step up front, naming it and its range (before: a
    hang for `max_batch_bytes=0`, a lost worker for a heartbeat timeout under the heartbeat
    interval, a cap ignored for lines under one batch for a small `max_message_bytes`).
    """
    _assert_fails_before_connecting(
        {"command": ["true"]},
        PipesDaskConfigurationError,
        rf"PipesDaskClient\({field}={value!r}\) is out of range: it must be {bound} \(",
        **{field: value},
    )


def test_an_out_of_range_env_var_field_fails_when_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges are checked at run time, where an `EnvVar` has its value."""
    monkeypatch.setenv("PIPES_EXT_TEST_BATCH", "0")
    _assert_fails_before_connecting(
        {"command": ["true"]},
        PipesDaskConfigurationError,
        r"max_batch_bytes=0\) is out of range",
        max_batch_bytes=EnvVar.int("PIPES_EXT_TEST_BATCH"),
    )


def test_an_impossible_env_field_fails_before_connecting() -> None:
    """The resource's own `env` is checked too (the worker's `execve` would refuse it unnamed)."""
    _assert_fails_before_connecting(
        {"command": ["true"]},
        ValueError,
        r"PipesDaskClient\(env=\.\.\.\): 'A=B': '1' cannot be an environment variable",
        env={"A=B": "1"},
    )


def _assert_fails_before_connecting(
    run_kwargs: dict[str, Any], error: type[Exception], match: str, **fields: Any
) -> None:
    # A dead scheduler address: reaching it would raise PipesDaskSchedulerUnreachableError.
    fields.setdefault("connect_timeout_seconds", 2)
    pipes = PipesDaskClient(scheduler_address=_dead_address(), **fields)
    captured: dict[str, Any] = {}
    started = time.monotonic()
    with pytest.raises(error, match=match) as excinfo:
        materialize([_probe_asset(captured, run_kwargs)], resources={"dask_pipes": pipes})
    assert not isinstance(excinfo.value, PipesDaskSchedulerUnreachableError)
    assert time.monotonic() - started < SANITY_SECONDS
    assert captured == {}


# -- env and cwd ------------------------------------------------------------------------------


def test_env_and_cwd_fields_reach_the_process(
    separate_cluster: DaskProcesses, tmp_path: Path
) -> None:
    """The resource's `env` and `cwd` apply to the command on the worker."""
    field_dir = tmp_path / "field-cwd"
    field_dir.mkdir()
    pipes = PipesDaskClient(
        scheduler_address=separate_cluster.address,
        env={"PIPES_TEST_VALUE": "from-field", "PIPES_TEST_OTHER": "field-other"},
        cwd=str(field_dir),
    )
    result, captured = _run(pipes)
    facts = _facts(captured)
    assert facts["cwd"] == os.path.realpath(field_dir)
    assert facts["env"] == {"PIPES_TEST_VALUE": "from-field", "PIPES_TEST_OTHER": "field-other"}
    [materialization] = result.asset_materializations_for_node("probe")
    assert materialization.metadata["pipes_test_value"].value == "from-field"
    assert materialization.metadata["cwd"].value == os.path.realpath(field_dir)


def test_per_call_env_and_cwd_override_the_fields(
    separate_cluster: DaskProcesses, tmp_path: Path
) -> None:
    """`run(env=..., cwd=...)` overrides the resource's values key by key and directory."""
    field_dir = tmp_path / "field-cwd"
    call_dir = tmp_path / "call-cwd"
    field_dir.mkdir()
    call_dir.mkdir()
    pipes = PipesDaskClient(
        scheduler_address=separate_cluster.address,
        env={"PIPES_TEST_VALUE": "from-field", "PIPES_TEST_OTHER": "field-other"},
        cwd=str(field_dir),
    )
    result, captured = _run(
        pipes, env={"PIPES_TEST_VALUE": "from-call", "PIPES_TEST_CALL": "1"}, cwd=str(call_dir)
    )
    facts = _facts(captured)
    assert facts["cwd"] == os.path.realpath(call_dir)
    assert facts["env"] == {
        "PIPES_TEST_VALUE": "from-call",
        "PIPES_TEST_OTHER": "field-other",
        "PIPES_TEST_CALL": "1",
    }
    [materialization] = result.asset_materializations_for_node("probe")
    assert materialization.metadata["pipes_test_value"].value == "from-call"


def test_cwd_as_a_path_reaches_the_process(separate_cluster: DaskProcesses, tmp_path: Path) -> None:
    """`run(cwd=Path(...))` is taken as its string (the launch spec carries plain strings)."""
    pipes = PipesDaskClient(scheduler_address=separate_cluster.address)
    _, captured = _run(pipes, cwd=tmp_path)
    assert _facts(captured)["cwd"] == os.path.realpath(tmp_path)


SUPERVISOR_AGE = (
    "import os, psutil\n"
    "from dagster_pipes import open_dagster_pipes\n"
    "with open_dagster_pipes() as context:\n"
    "    started = psutil.Process(os.getppid()).create_time()\n"
    "    context.report_asset_materialization(metadata={'supervisor_started': started})\n"
)


def test_a_launch_after_a_pause_takes_the_spare_supervisor(
    separate_cluster: DaskProcesses,
) -> None:
    """The next spare supervisor starts shortly after a session ends (not at once, where its
    start-up would compete with the end of the step): a launch a second later takes it, so its
    supervisor is older than the launch.
    """
    pipes = PipesDaskClient(scheduler_address=separate_cluster.address)
    for _ in range(2):  # the second takes the spare that was ready: the next one is replenished
        _run(pipes, command=["python", "-c", SUPERVISOR_AGE])
        time.sleep(1.0)
    launched_at = time.time()
    result, _ = _run(pipes, command=["python", "-c", SUPERVISOR_AGE])
    [materialization] = result.asset_materializations_for_node("probe")
    started = materialization.metadata["supervisor_started"].value
    assert isinstance(started, float)
    assert started < launched_at - 0.1, (started, launched_at)


# -- placement --------------------------------------------------------------------------------


def test_resources_run_on_the_worker_offering_them(separate_cluster: DaskProcesses) -> None:
    """`resources={"SLOTS": 1}` runs on the separate cluster's worker that offers SLOTS=4."""
    pipes = PipesDaskClient(
        scheduler_address=separate_cluster.address, worker_wait_timeout_seconds=3
    )
    result, _ = _run(pipes, resources={"SLOTS": 1})
    worker = _worker_of(result)
    with Client(separate_cluster.address, timeout=10, set_as_default=False) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
    assert info[worker]["resources"] == {"SLOTS": 4}


@pytest.mark.parametrize("form", ["address-list", "address-string", "name", "host"])
def test_workers_restriction_runs_on_that_worker(
    separate_cluster: DaskProcesses, form: str
) -> None:
    """`workers=` given as an address (list or bare string), a worker name or a host works."""
    with Client(separate_cluster.address, timeout=10, set_as_default=False) as client:
        [(address, info)] = client.scheduler_info(n_workers=-1)["workers"].items()
    workers = {
        "address-list": [address],
        "address-string": address,
        "name": [str(info["name"])],
        "host": [info["host"]],
    }[form]
    pipes = PipesDaskClient(
        scheduler_address=separate_cluster.address, worker_wait_timeout_seconds=3
    )
    result, _ = _run(pipes, workers=workers)
    assert _worker_of(result) == address


def test_workers_by_number_and_a_number_no_worker_has() -> None:
    """A worker named by a number (the embedded worker is `0`) is a valid `workers=`; a number
    that names no worker is refused by the scheduler, and the error says so.
    """
    pipes = _quick()
    [(address, info)] = pipes.get_dask_client().scheduler_info(n_workers=-1)["workers"].items()
    assert isinstance(info["name"], int)
    result, _ = _run(pipes, workers=info["name"])
    assert _worker_of(result) == address

    result, _ = _materialize_watched(workers=[info["name"] + 123])
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert "PipesDaskLaunchError" in message, message
    assert "failed before it reported from any Dask worker (the scheduler refused it" in message
    assert f"got {info['name'] + 123}" in message  # Dask's own reason follows


@pytest.mark.parametrize("scheme", ["with-scheme", "without-scheme"])
def test_busy_matching_worker_is_waited_for(separate_cluster: DaskProcesses, scheme: str) -> None:
    """A task restricted to a busy worker waits for its SLOTS instead of failing as no-worker."""
    # Dask accepts a worker address with or without its `tcp://` scheme in `workers=`; both name
    # the one connected worker here, so both must wait the few seconds the worker is busy.
    with Client(separate_cluster.address, timeout=10, set_as_default=False) as client:
        [address] = client.scheduler_info(n_workers=-1)["workers"]
        restriction = address if scheme == "with-scheme" else address.removeprefix("tcp://")
        # Occupy all 4 SLOTS for longer than worker_wait_timeout_seconds.
        blocker = client.submit(
            lambda: __import__("time").sleep(5) or "done", resources={"SLOTS": 4}, pure=False
        )
        wait_for(
            lambda: cast(dict, client.processing(workers=[address])).get(address),
            timeout=10,
            what="the blocker to occupy the worker",
        )
        pipes = PipesDaskClient(
            scheduler_address=separate_cluster.address, worker_wait_timeout_seconds=3
        )
        try:
            result, _ = _run(pipes, workers=[restriction], resources={"SLOTS": 1})
        finally:
            assert blocker.result(timeout=30) == "done"
    assert _worker_of(result) == address
