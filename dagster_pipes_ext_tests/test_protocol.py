"""The full Dagster Pipes protocol through PipesDaskClient, on the embedded and separate clusters.

Every test runs real Dagster against real external processes (scripts/proto_*.py, which use the
stock ``open_dagster_pipes()``) on a real Dask cluster; nothing is mocked. The behaviours mirror
those Dagster's own ``PipesSubprocessClient`` tests check.
"""

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    DagsterEventType,
    DagsterInstance,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    RetryPolicy,
    TableColumn,
    TableColumnConstraints,
    TableColumnDep,
    TableColumnLineage,
    TableRecord,
    TableSchema,
    asset,
    asset_check,
    build_asset_context,
    job,
    materialize,
    multi_asset,
    op,
)
from dagster._core.definitions.metadata import (
    BoolMetadataValue,
    DagsterAssetMetadataValue,
    DagsterRunMetadataValue,
    FloatMetadataValue,
    IntMetadataValue,
    JsonMetadataValue,
    MarkdownMetadataValue,
    NotebookMetadataValue,
    NullMetadataValue,
    PathMetadataValue,
    TableColumnLineageMetadataValue,
    TableMetadataValue,
    TableSchemaMetadataValue,
    TextMetadataValue,
    TimestampMetadataValue,
    UrlMetadataValue,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.execute_in_process_result import ExecuteInProcessResult
from dagster._utils.error import SerializableErrorInfo

from dagster_pipes_ext import PipesDaskClient
from dagster_pipes_ext.errors import PipesDaskProcessError
from dagster_pipes_ext_tests.conftest import script, script_asset

pytestmark = pytest.mark.timeout(120)

NO_MESSAGES_WARNING = "[pipes] did not receive any messages from external process"
NO_CLOSED_WARNING = "[pipes] did not receive closed message from external process"
CLOSED_WITH_EXCEPTION = "[pipes] external process pipes closed with exception"
MALFORMED_WARNING = "[pipes] skipped a malformed message line from the external process"
INVOCATION_KEYS = {"dask/task_key", "dask/worker", "dask/exit_code", "dask/wall_time_seconds"}


# -- helpers ----------------------------------------------------------------------------------


def _cmd(name: str) -> list[str]:
    return ["python", script(name)]


def _user_logs(instance: DagsterInstance, run_id: str) -> list[EventLogEntry]:
    """The run's plain log messages (context.log.*), in order."""
    return [e for e in instance.all_logs(run_id) if e.dagster_event is None]


def _log_texts(instance: DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in _user_logs(instance, run_id)]


def _materialize_with_logs(
    assets_def: AssetsDefinition,
    pipes_client: PipesDaskClient,
    instance: DagsterInstance,
    **kwargs: Any,
) -> tuple[ExecuteInProcessResult, list[str]]:
    """Materialize one asset on `instance` through `pipes_client`; return it and its log texts."""
    result = materialize(
        [assets_def], instance=instance, resources={"dask_pipes": pipes_client}, **kwargs
    )
    return result, _log_texts(instance, result.run_id)


def _engine_events(instance: DagsterInstance, run_id: str) -> list[EventLogEntry]:
    return list(
        instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT),
    )


def _latest_materialization(instance: DagsterInstance, key: str) -> AssetMaterialization:
    records = instance.fetch_materializations(AssetKey(key), limit=1).records
    assert records, f"no materialization of {key} in the instance"
    materialization = records[0].asset_materialization
    assert materialization is not None
    return materialization


def _step_failure_error(result: ExecuteInProcessResult) -> SerializableErrorInfo:
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1, failures
    data = failures[0].step_failure_data
    assert data is not None
    return data.error  # type: ignore[return-value]


def _pipes_cause(error: SerializableErrorInfo) -> SerializableErrorInfo:
    """The PipesDaskProcessError under Dagster's step execution error."""
    chain = error
    while chain is not None and chain.cls_name != "PipesDaskProcessError":
        chain = chain.cause  # type: ignore[assignment]
    assert chain is not None, f"no PipesDaskProcessError in {error.to_string()}"
    return chain


def _assert_invocation_metadata(
    metadata: Mapping[str, MetadataValue],
    *,
    op_name: str,
    cluster_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    """The Dask facts PipesDaskClient attaches to every result of an invocation."""
    task_key = metadata["dask/task_key"]
    assert isinstance(task_key, TextMetadataValue)
    assert task_key.value.startswith(f"dagster-pipes-{op_name}-")
    worker = metadata["dask/worker"]
    assert isinstance(worker, TextMetadataValue)
    exit_code = metadata["dask/exit_code"]
    assert isinstance(exit_code, IntMetadataValue) and exit_code.value == 0
    wall = metadata["dask/wall_time_seconds"]
    assert isinstance(wall, FloatMetadataValue)
    assert wall.value is not None and 0 < wall.value < 60
    if cluster_kind == "separate":
        cluster = request.getfixturevalue("separate_cluster")
        assert worker.value.startswith("tcp://127.0.0.1:")
        # the separate scheduler is started with a dashboard (see conftest)
        assert cluster.dashboard_port
        assert metadata["dask/dashboard_url"] == MetadataValue.url(
            f"http://127.0.0.1:{cluster.dashboard_port}/status"
        )
    else:
        assert worker.value.startswith("inproc://")


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


# -- the success path -------------------------------------------------------------------------

TABLE_SCHEMA = TableSchema(
    columns=[
        TableColumn(
            name="a",
            type="int",
            description="column a",
            constraints=TableColumnConstraints(nullable=False, unique=True),
        ),
        TableColumn(name="b", type="string"),
    ]
)


def _expected_metadata(run_id: str) -> dict[str, tuple[type, MetadataValue]]:
    return {
        "raw_text": (TextMetadataValue, MetadataValue.text("hello")),
        "raw_int": (IntMetadataValue, MetadataValue.int(42)),
        "raw_float": (FloatMetadataValue, MetadataValue.float(1.5)),
        "raw_bool": (BoolMetadataValue, MetadataValue.bool(True)),
        "raw_none": (NullMetadataValue, MetadataValue.null()),
        "raw_list": (JsonMetadataValue, MetadataValue.json([1, "two"])),
        "t_text": (TextMetadataValue, MetadataValue.text("some text")),
        "t_url": (UrlMetadataValue, MetadataValue.url("https://dagster.io/x")),
        "t_path": (PathMetadataValue, MetadataValue.path("/data/out.parquet")),
        "t_notebook": (NotebookMetadataValue, MetadataValue.notebook("/nb/report.ipynb")),
        "t_json": (JsonMetadataValue, MetadataValue.json({"nested": {"n": 1}})),
        "t_md": (MarkdownMetadataValue, MetadataValue.md("# Title\n*bold*")),
        "t_float": (FloatMetadataValue, MetadataValue.float(3.25)),
        "t_int": (IntMetadataValue, MetadataValue.int(7)),
        "t_bool": (BoolMetadataValue, MetadataValue.bool(False)),
        "t_dagster_run": (DagsterRunMetadataValue, MetadataValue.dagster_run(run_id)),
        "t_asset": (DagsterAssetMetadataValue, MetadataValue.asset(AssetKey(["upstream", "key"]))),
        "t_null": (NullMetadataValue, MetadataValue.null()),
        "t_table": (
            TableMetadataValue,
            MetadataValue.table(
                records=[TableRecord({"a": 1, "b": "x"}), TableRecord({"a": 2, "b": "y"})],
                schema=TableSchema(
                    columns=[
                        TableColumn(name="a", type="int"),
                        TableColumn(name="b", type="string"),
                    ]
                ),
            ),
        ),
        "t_table_schema": (TableSchemaMetadataValue, MetadataValue.table_schema(TABLE_SCHEMA)),
        "t_lineage": (
            TableColumnLineageMetadataValue,
            MetadataValue.column_lineage(
                TableColumnLineage(
                    deps_by_column={"a": [TableColumnDep(asset_key="upstream", column_name="x")]}
                )
            ),
        ),
        "t_timestamp": (TimestampMetadataValue, MetadataValue.timestamp(1700000000.5)),
    }


def test_logs_metadata_of_every_type_and_data_version(
    pipes_client: PipesDaskClient,
    instance: DagsterInstance,
    cluster_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    """Logs at info/warning/error and a materialization with every Pipes metadata type, raw and
    explicitly typed, plus its data version and the Dask invocation metadata, reach the run's event
    log intact."""
    proto_all_types = script_asset("proto_all_types", "proto_materialize_all.py")

    result = materialize(
        [proto_all_types], instance=instance, resources={"dask_pipes": pipes_client}
    )
    assert result.success
    run_id = result.run_id

    levels = {e.user_message: e.level for e in _user_logs(instance, run_id)}
    assert levels["proto info line"] == logging.INFO
    assert levels["proto warning line"] == logging.WARNING
    assert levels["proto error line"] == logging.ERROR
    texts = _log_texts(instance, run_id)
    assert (
        texts.index("proto info line")
        < texts.index("proto warning line")
        < texts.index("proto error line")
    )
    assert not any(NO_MESSAGES_WARNING in t or NO_CLOSED_WARNING in t for t in texts)

    # read back from storage: the values survived serialization, not only the in-memory result
    materialization = _latest_materialization(instance, "proto_all_types")
    metadata = materialization.metadata
    for key, (cls, expected) in _expected_metadata(run_id).items():
        assert isinstance(metadata[key], cls), (key, metadata[key])
        assert metadata[key] == expected, key
    assert materialization.tags is not None
    assert materialization.tags.get("dagster/data_version") == "proto-v42"
    assert (
        set(metadata) - {"dask/dashboard_url"} == set(_expected_metadata(run_id)) | INVOCATION_KEYS
    )
    _assert_invocation_metadata(
        metadata, op_name="proto_all_types", cluster_kind=cluster_kind, request=request
    )


def test_dashboard_url_metadata_leads_to_a_served_dashboard(
    pipes_client: PipesDaskClient, cluster_kind: str
) -> None:
    """A `dask/dashboard_url` in the invocation metadata (required for the separate cluster, whose
    scheduler serves one) opens the Dask dashboard rather than a 404."""
    metadata: list[Mapping[str, MetadataValue]] = []

    @asset
    def proto_dashboard(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(context=context, command=_cmd("proto_open_only.py"))
        metadata.append(invocation.metadata)
        return invocation.get_materialize_result()

    assert materialize([proto_dashboard], resources={"dask_pipes": pipes_client}).success
    dashboard = metadata[0].get("dask/dashboard_url")
    if cluster_kind == "separate":
        assert dashboard is not None
    if dashboard is not None:
        assert isinstance(dashboard, UrlMetadataValue)
        assert dashboard.value.startswith("http://127.0.0.1:")
        assert _http_status(dashboard.value) == 200, f"{dashboard.value} is not served"


def test_pipes_metadata_types_all_exercised() -> None:
    """The success-path script covers every metadata type dagster-pipes defines (there is no "job"
    type)."""
    from typing import get_args

    from dagster_pipes import PipesMetadataType

    types = set(get_args(PipesMetadataType)) - {"__infer__"}
    source = Path(script("proto_materialize_all.py")).read_text(encoding="utf-8")
    assert "job" not in types
    for t in types:
        assert f'"type": "{t}"' in source, t


# -- asset checks -----------------------------------------------------------------------------


def test_asset_checks_passed_failed_warn_error(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """Passed and failed checks of WARN and ERROR severity arrive with metadata, and a failed non-
    blocking ERROR check still lets the asset materialize."""

    @asset(
        check_specs=[
            AssetCheckSpec("passes_warn", asset="proto_checked"),
            AssetCheckSpec("fails_warn", asset="proto_checked"),
            AssetCheckSpec("fails_error", asset="proto_checked", blocking=False),
        ]
    )
    def proto_checked(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(
            context=context, command=_cmd("proto_checks.py")
        ).get_materialize_result()

    result = materialize([proto_checked], instance=instance, resources={"dask_pipes": pipes_client})
    assert result.success

    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"passes_warn", "fails_warn", "fails_error"}
    ok = evaluations["passes_warn"]
    assert ok.passed and ok.severity == AssetCheckSeverity.WARN
    assert ok.metadata["checked_rows"] == MetadataValue.int(10)
    assert ok.metadata["note"] == MetadataValue.text("all fine")
    warn = evaluations["fails_warn"]
    assert not warn.passed and warn.severity == AssetCheckSeverity.WARN
    assert warn.metadata["bad_rows"] == MetadataValue.int(1)
    err = evaluations["fails_error"]
    assert not err.passed and err.severity == AssetCheckSeverity.ERROR
    assert err.metadata["bad_rows"] == MetadataValue.int(3)
    assert err.metadata["report"] == MetadataValue.url("https://dagster.io/r")
    for evaluation in evaluations.values():
        assert evaluation.asset_key == AssetKey("proto_checked")
        assert set(evaluation.metadata) >= INVOCATION_KEYS

    # the asset materialized despite the failed ERROR check
    materialization = _latest_materialization(instance, "proto_checked")
    assert materialization.metadata["rows"] == MetadataValue.int(10)
    stored = instance.all_logs(result.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    assert len(stored) == 3


# -- multi-asset ------------------------------------------------------------------------------


def test_multi_asset_two_materializations_and_a_check(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """A multi-asset's script reports two materializations with explicit asset keys and a check on
    one of them, all returned by get_results()."""
    seen: list[Any] = []

    @multi_asset(
        specs=[AssetSpec("proto_multi_a"), AssetSpec("proto_multi_b")],
        check_specs=[AssetCheckSpec("b_nonempty", asset="proto_multi_b")],
    )
    def proto_multi(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        results = dask_pipes.run(context=context, command=_cmd("proto_multi.py")).get_results()
        seen.extend(results)
        yield from results

    result = materialize([proto_multi], instance=instance, resources={"dask_pipes": pipes_client})
    assert result.success

    # exactly the reported results: no implicit extra materialization
    assert [type(r) for r in seen] == [MaterializeResult, MaterializeResult, AssetCheckResult]
    assert "selected asset keys: ['proto_multi_a', 'proto_multi_b']" in _log_texts(
        instance, result.run_id
    )
    a = _latest_materialization(instance, "proto_multi_a")
    b = _latest_materialization(instance, "proto_multi_b")
    assert a.metadata["which"] == MetadataValue.text("a")
    assert b.metadata["which"] == MetadataValue.text("b")
    assert b.tags is not None and b.tags.get("dagster/data_version") == "b-1"
    assert set(a.metadata) >= INVOCATION_KEYS and set(b.metadata) >= INVOCATION_KEYS
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_key == AssetKey("proto_multi_b")
    assert evaluation.check_name == "b_nonempty" and evaluation.passed
    assert evaluation.metadata["count"] == MetadataValue.int(5)


# -- the context the script sees --------------------------------------------------------------


def _ok(echo: Mapping[str, Any], key: str) -> Any:
    assert "ok" in echo[key], (key, echo[key])
    return echo[key]["ok"]


def test_context_run_id_job_name_asset_key_retry_number_and_extras(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """The script sees the run id, job name, asset key, retry number 0 and the nested extras passed
    to run()."""
    echoes: list[Any] = []
    extras = {"str": "v", "int": 3, "nested": {"list": [1, 2, {"deep": True}]}, "none": None}

    @asset(code_version="cv-1")
    def proto_echo(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(
            context=context, command=_cmd("proto_echo_context.py"), extras=extras
        )
        echoes.extend(invocation.get_custom_messages())
        return invocation.get_materialize_result()

    result = materialize([proto_echo], instance=instance, resources={"dask_pipes": pipes_client})
    assert result.success
    (echo,) = echoes
    assert _ok(echo, "run_id") == result.run_id
    assert _ok(echo, "job_name") == result.job_def.name
    assert _ok(echo, "retry_number") == 0
    assert _ok(echo, "is_asset_step") is True
    assert _ok(echo, "asset_key") == "proto_echo"
    assert _ok(echo, "asset_keys") == ["proto_echo"]
    assert _ok(echo, "code_version") == "cv-1"
    assert _ok(echo, "is_partition_step") is False
    assert "error" in echo["partition_key"]
    assert _ok(echo, "extras") == extras
    # nothing reported: an implicit materialization with the invocation metadata
    materialization = _latest_materialization(instance, "proto_echo")
    assert set(materialization.metadata) - {"dask/dashboard_url"} == INVOCATION_KEYS


def test_custom_messages_arrive_complete_and_in_order(pipes_client: PipesDaskClient) -> None:
    """500 custom messages sent by the script arrive exactly once each and in the order sent."""
    count = 500
    received: list[Any] = []

    @asset
    def proto_many_messages(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(
            context=context, command=_cmd("proto_custom_messages.py"), extras={"count": count}
        )
        received.extend(invocation.get_custom_messages())
        return invocation.get_materialize_result()

    result = materialize([proto_many_messages], resources={"dask_pipes": pipes_client})
    assert result.success
    assert len(received) == count
    assert [m["seq"] for m in received] == list(range(count))
    assert all(m["pad"] == "x" * (m["seq"] % 50) for m in received)


# -- partitions -------------------------------------------------------------------------------

DAILY = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-10")


def test_single_partition_key_range_and_window(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """A single-partition run gives the script its partition key, a one-key range and the day's time
    window."""
    echoes: list[Any] = []

    @asset(partitions_def=DAILY)
    def proto_daily(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(context=context, command=_cmd("proto_echo_context.py"))
        echoes.extend(invocation.get_custom_messages())
        return invocation.get_materialize_result()

    result = materialize(
        [proto_daily],
        instance=instance,
        partition_key="2024-01-02",
        resources={"dask_pipes": pipes_client},
    )
    assert result.success
    (echo,) = echoes
    assert _ok(echo, "is_partition_step") is True
    assert _ok(echo, "partition_key") == "2024-01-02"
    assert _ok(echo, "partition_key_range") == {"start": "2024-01-02", "end": "2024-01-02"}
    assert _ok(echo, "partition_time_window") == {
        "start": "2024-01-02T00:00:00+00:00",
        "end": "2024-01-03T00:00:00+00:00",
    }
    records = instance.fetch_materializations(AssetKey("proto_daily"), limit=10).records
    assert [r.partition_key for r in records] == ["2024-01-02"]


def test_partition_range_single_run_backfill(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """A single-run backfill of three daily partitions gives the script the key range and the
    spanning time window, and materializes all three partitions."""
    echoes: list[Any] = []

    @asset(partitions_def=DAILY, backfill_policy=BackfillPolicy.single_run())
    def proto_daily_range(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(context=context, command=_cmd("proto_echo_context.py"))
        echoes.extend(invocation.get_custom_messages())
        return invocation.get_materialize_result()

    result = materialize(
        [proto_daily_range],
        instance=instance,
        resources={"dask_pipes": pipes_client},
        tags={
            "dagster/asset_partition_range_start": "2024-01-01",
            "dagster/asset_partition_range_end": "2024-01-03",
        },
    )
    assert result.success
    (echo,) = echoes
    assert _ok(echo, "is_partition_step") is True
    # dagster-pipes refuses `partition_key` when the step has no single key
    assert "error" in echo["partition_key"]
    assert _ok(echo, "partition_key_range") == {"start": "2024-01-01", "end": "2024-01-03"}
    assert _ok(echo, "partition_time_window") == {
        "start": "2024-01-01T00:00:00+00:00",
        "end": "2024-01-04T00:00:00+00:00",
    }
    records = instance.fetch_materializations(AssetKey("proto_daily_range"), limit=10).records
    assert sorted(r.partition_key for r in records) == ["2024-01-01", "2024-01-02", "2024-01-03"]


# -- ops, asset checks and direct invocation --------------------------------------------------


def test_plain_op_in_job(
    pipes_client: PipesDaskClient,
    instance: DagsterInstance,
    cluster_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    """A plain @op in a @job runs the script, which sees the job name, no asset, and its extras."""

    @op
    def proto_op(context: OpExecutionContext, dask_pipes: PipesDaskClient) -> dict:
        invocation = dask_pipes.run(
            context=context, command=_cmd("proto_echo_context.py"), extras={"from": "op"}
        )
        return {
            "echo": invocation.get_custom_messages()[0],
            "results": invocation.get_results(),
            "metadata": invocation.metadata,
        }

    @job
    def proto_op_job():
        proto_op()

    result = proto_op_job.execute_in_process(
        instance=instance, resources={"dask_pipes": pipes_client}
    )
    assert result.success
    out = result.output_for_node("proto_op")
    echo = out["echo"]
    assert _ok(echo, "run_id") == result.run_id
    assert _ok(echo, "job_name") == "proto_op_job"
    assert _ok(echo, "retry_number") == 0
    assert _ok(echo, "is_asset_step") is False
    assert "error" in echo["asset_key"]
    assert _ok(echo, "extras") == {"from": "op"}
    assert out["results"] == ()
    _assert_invocation_metadata(
        out["metadata"], op_name="proto_op", cluster_kind=cluster_kind, request=request
    )
    assert "[pipes] external process successfully opened dagster pipes." in _log_texts(
        instance, result.run_id
    )


def test_asset_check_function_uses_client(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """An @asset_check function runs the script with an AssetCheckExecutionContext and returns
    get_asset_check_result()."""
    contexts: list[Any] = []

    @asset
    def proto_check_target() -> MaterializeResult:
        return MaterializeResult(metadata={"plain": True})

    @asset_check(asset=proto_check_target)
    def proto_external_check(
        context: AssetCheckExecutionContext, dask_pipes: PipesDaskClient
    ) -> AssetCheckResult:
        contexts.append(context)
        return dask_pipes.run(
            context=context,
            command=_cmd("proto_asset_check_only.py"),
            extras={"asset_key": "proto_check_target", "check_name": "proto_external_check"},
        ).get_asset_check_result()

    result = materialize(
        [proto_check_target, proto_external_check],
        instance=instance,
        resources={"dask_pipes": pipes_client},
    )
    assert result.success
    assert isinstance(contexts[0], AssetCheckExecutionContext)
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_key == AssetKey("proto_check_target")
    assert evaluation.check_name == "proto_external_check"
    assert evaluation.passed and evaluation.severity == AssetCheckSeverity.WARN
    assert evaluation.metadata["retry_number"] == MetadataValue.int(0)
    assert evaluation.metadata["job"] == MetadataValue.text(result.job_def.name)
    assert set(evaluation.metadata) >= INVOCATION_KEYS
    assert "checking from an @asset_check" in _log_texts(instance, result.run_id)


def test_direct_invocation_with_build_asset_context(pipes_client: PipesDaskClient) -> None:
    """Calling the asset function directly with build_asset_context(resources=...) runs the script
    and returns its materialization."""
    echoes: list[Any] = []

    @asset
    def proto_direct(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(
            context=context, command=_cmd("proto_echo_context.py"), extras={"direct": True}
        )
        echoes.extend(invocation.get_custom_messages())
        return invocation.get_materialize_result()

    context = build_asset_context(resources={"dask_pipes": pipes_client})
    try:
        result = proto_direct(context)
    except Exception as exc:
        # reported without Dagster's deep traceback, which pytest fails to render here
        pytest.fail(f"direct invocation failed: {type(exc).__name__}: {exc}", pytrace=False)
    assert isinstance(result, MaterializeResult)
    assert result.metadata is not None
    assert set(result.metadata) >= INVOCATION_KEYS
    assert result.metadata["dask/exit_code"] == MetadataValue.int(0)
    task_key = result.metadata["dask/task_key"]
    assert isinstance(task_key, TextMetadataValue)
    assert task_key.value.startswith("dagster-pipes-proto_direct-")
    (echo,) = echoes
    assert _ok(echo, "asset_key") == "proto_direct"
    assert _ok(echo, "job_name") is None
    assert _ok(echo, "retry_number") == 0
    assert _ok(echo, "run_id") == context.run_id
    assert _ok(echo, "extras") == {"direct": True}


# -- failures ---------------------------------------------------------------------------------


def test_exception_inside_pipes_block_fails_step_after_delivering_logs(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """A script raising inside its `with` block fails the step with PipesDaskProcessError (exit code
    1) after its earlier log and custom message arrived, and the closing exception is recorded."""
    custom: list[Any] = []

    @asset
    def proto_raises(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        try:
            dask_pipes.run(context=context, command=_cmd("proto_raise_in_pipes.py"))
        except PipesDaskProcessError as exc:
            custom.append(exc)
            raise

    result = materialize(
        [proto_raises],
        instance=instance,
        resources={"dask_pipes": pipes_client},
        raise_on_error=False,
    )
    assert not result.success
    (exc,) = custom
    assert exc.returncode == 1
    assert "ValueError: proto boom inside pipes" in exc.stderr_tail
    cause = _pipes_cause(_step_failure_error(result))
    assert "with exit code 1" in cause.message
    assert "ValueError: proto boom inside pipes" in cause.message

    assert "proto logged before the failure" in _log_texts(instance, result.run_id)
    closed = [
        e
        for e in _engine_events(instance, result.run_id)
        if e.user_message == CLOSED_WITH_EXCEPTION
    ]
    assert len(closed) == 1
    data = closed[0].get_dagster_event().engine_event_data
    assert data.error is not None and "proto boom inside pipes" in data.error.message
    assert not instance.fetch_materializations(AssetKey("proto_raises"), limit=1).records


def test_exit_code_3_before_opening_pipes(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """A script exiting 3 before opening Pipes raises PipesDaskProcessError naming exit code 3 and
    its stderr tail, and the run warns that no messages arrived."""
    proto_exit3 = script_asset("proto_exit3", "proto_exit_before_pipes.py")

    started = time.monotonic()
    with pytest.raises(PipesDaskProcessError) as info:
        materialize([proto_exit3], instance=instance, resources={"dask_pipes": pipes_client})
    assert time.monotonic() - started < 30
    exc = info.value
    assert exc.returncode == 3
    assert "with exit code 3" in str(exc)
    assert "proto fatal: configuration missing" in str(exc)
    assert "proto fatal: configuration missing" in exc.stderr_tail
    assert "about to fail" not in exc.stderr_tail  # stdout is not part of the stderr tail
    (run,) = instance.get_runs()
    assert any(NO_MESSAGES_WARNING in t for t in _log_texts(instance, run.run_id))


def test_import_error_before_opening_pipes(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """A script failing at import raises PipesDaskProcessError with exit code 1 and the
    ModuleNotFoundError in the message."""
    proto_import_fails = script_asset("proto_import_fails", "proto_import_error.py")

    with pytest.raises(PipesDaskProcessError) as info:
        materialize([proto_import_fails], instance=instance, resources={"dask_pipes": pipes_client})
    assert info.value.returncode == 1
    assert "with exit code 1" in str(info.value)
    assert "ModuleNotFoundError" in str(info.value)
    assert "proto_module_that_does_not_exist" in str(info.value)


def test_exit_zero_without_opening_pipes(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """A script exiting 0 without opening Pipes does not hang: the run warns that no messages
    arrived and the asset gets an implicit materialization."""
    proto_silent = script_asset("proto_silent", "proto_no_pipes.py")

    started = time.monotonic()
    result = materialize([proto_silent], instance=instance, resources={"dask_pipes": pipes_client})
    assert time.monotonic() - started < 30
    assert result.success
    texts = _log_texts(instance, result.run_id)
    warnings = [t for t in texts if NO_MESSAGES_WARNING in t]
    assert len(warnings) == 1
    assert "PipesDaskContextInjector" in warnings[0] and "PipesDaskMessageReader" in warnings[0]
    materialization = _latest_materialization(instance, "proto_silent")
    assert set(materialization.metadata) - {"dask/dashboard_url"} == INVOCATION_KEYS


def test_process_exiting_without_closed_message(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """A script that reports and then os._exit(0)s inside its block still delivers the
    materialization, with a warning that `closed` never arrived."""
    proto_no_close = script_asset("proto_no_close", "proto_no_close.py")

    result, texts = _materialize_with_logs(proto_no_close, pipes_client, instance)
    assert result.success
    assert "proto before abrupt exit" in texts
    assert sum(NO_CLOSED_WARNING in t for t in texts) == 1
    assert not any(NO_MESSAGES_WARNING in t for t in texts)
    materialization = _latest_materialization(instance, "proto_no_close")
    assert materialization.metadata["reported_before_exit"] == MetadataValue.bool(True)
    assert materialization.metadata["dask/exit_code"] == MetadataValue.int(0)


def test_non_json_serializable_custom_payload_fails_step(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """report_custom_message(object()) fails inside the script, so the step fails with
    PipesDaskProcessError naming the serialization problem."""
    proto_bad_payload = script_asset("proto_bad_payload", "proto_bad_payload.py")

    result, texts = _materialize_with_logs(
        proto_bad_payload, pipes_client, instance, raise_on_error=False
    )
    assert not result.success
    cause = _pipes_cause(_step_failure_error(result))
    assert "with exit code 1" in cause.message
    # the message writer's json.dumps raises inside the script; its traceback is the stderr tail
    assert "context.report_custom_message(object())" in cause.message
    assert "TypeError: Object of type object is not JSON serializable" in cause.message
    assert "proto sending a bad payload" in texts
    closed = [
        e
        for e in _engine_events(instance, result.run_id)
        if e.user_message == CLOSED_WITH_EXCEPTION
    ]
    assert len(closed) == 1


def test_missing_materialization_is_implicit(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """A script that opens Pipes and reports nothing yields an implicit materialization carrying
    only the invocation metadata, without warnings."""

    @asset
    def proto_open_only(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(context=context, command=_cmd("proto_open_only.py"))
        assert invocation.get_results(implicit_materializations=False) == ()
        return invocation.get_materialize_result()

    result = materialize(
        [proto_open_only], instance=instance, resources={"dask_pipes": pipes_client}
    )
    assert result.success
    materialization = _latest_materialization(instance, "proto_open_only")
    assert set(materialization.metadata) - {"dask/dashboard_url"} == INVOCATION_KEYS
    warnings = [e for e in _user_logs(instance, result.run_id) if e.level >= logging.WARNING]
    assert warnings == []


def test_malformed_lines_are_skipped_with_warnings(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """Garbage, partial-JSON, non-message and unterminated lines in the messages file are skipped
    with one warning each, while later messages still arrive and the run succeeds."""
    proto_malformed = script_asset("proto_malformed", "proto_malformed.py")

    result, texts = _materialize_with_logs(proto_malformed, pipes_client, instance)
    assert result.success
    skipped = [t for t in texts if MALFORMED_WARNING in t]
    assert len(skipped) == 4, skipped
    assert "this is not json at all" in skipped[0]
    assert '"method": "log", "par' in skipped[1]
    assert "[1, 2, 3]" in skipped[2]
    assert '"method": "lo' in skipped[3]  # the unterminated last line, read at process exit
    assert texts.index("proto before garbage") < texts.index(skipped[0])
    assert texts.index(skipped[2]) < texts.index("proto after garbage")
    materialization = _latest_materialization(instance, "proto_malformed")
    assert materialization.metadata["after_garbage"] == MetadataValue.bool(True)
    assert not any(NO_CLOSED_WARNING in t for t in texts)


def test_retry_policy_reruns_failed_step(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """With RetryPolicy(max_retries=1), a script failing on retry_number 0 is run again, sees
    retry_number 1 and materializes."""
    attempts: list[int] = []

    @asset(retry_policy=RetryPolicy(max_retries=1))
    def proto_retried(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        attempts.append(context.retry_number)
        return dask_pipes.run(
            context=context, command=_cmd("proto_fail_first_attempt.py")
        ).get_materialize_result()

    result, texts = _materialize_with_logs(proto_retried, pipes_client, instance)
    assert result.success
    assert attempts == [0, 1]
    event_types = [e.event_type for e in result.all_events]
    assert DagsterEventType.STEP_UP_FOR_RETRY in event_types
    assert DagsterEventType.STEP_RESTARTED in event_types
    assert "proto attempt with retry_number=0" in texts
    assert "proto attempt with retry_number=1" in texts
    records = instance.fetch_materializations(AssetKey("proto_retried"), limit=10).records
    assert len(records) == 1
    materialization = records[0].asset_materialization
    assert materialization is not None
    assert materialization.metadata["retry_number"] == MetadataValue.int(1)
    assert materialization.metadata["dask/exit_code"] == MetadataValue.int(0)
