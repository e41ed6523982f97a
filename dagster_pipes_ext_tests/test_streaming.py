"""Streaming guarantees: every message exactly once, in order, whatever the volume or pacing."""

from pathlib import Path

import pytest
from dagster import AssetExecutionContext, DagsterInstance, asset, materialize

from dagster_pipes_ext import PipesDaskClient
from dagster_pipes_ext_tests.conftest import script, script_asset


def _flood_asset(count: int, sink: list):
    @asset
    def flood(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(
            context=context,
            command=["python", script("stream_flood.py")],
            env={"COUNT": str(count)},
        )
        sink.extend(invocation.get_custom_messages())
        return invocation.get_materialize_result()

    return flood


@pytest.mark.slow
def test_more_batches_than_the_scheduler_retains(pipes_client: PipesDaskClient) -> None:
    """20,000 messages in 1 KiB batches (over the 1,000 a topic keeps) arrive once, in order."""
    received: list = []
    client = PipesDaskClient(scheduler_address=pipes_client.scheduler_address, max_batch_bytes=1024)
    result = materialize([_flood_asset(20_000, received)], resources={"dask_pipes": client})
    assert result.success
    assert [m["i"] for m in received] == list(range(20_000))


def test_many_messages_default_batches(pipes_client: PipesDaskClient) -> None:
    """5,000 messages with default batching arrive exactly once and in order."""
    received: list = []
    result = materialize([_flood_asset(5_000, received)], resources={"dask_pipes": pipes_client})
    assert result.success
    assert [m["i"] for m in received] == list(range(5_000))
    mat = result.asset_materializations_for_node("flood")[0]
    assert mat.metadata["sent"].value == 5_000


def test_partial_lines_from_a_non_python_writer(pipes_client: PipesDaskClient, tmp_path: Path):
    """A writer that emits each line in two pieces is read whole: no message lost or broken."""
    received: list = []

    @asset
    def raw(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        invocation = dask_pipes.run(
            context=context, command=["python", script("stream_raw_writer.py")]
        )
        received.extend(invocation.get_custom_messages())
        return invocation.get_materialize_result()

    result = materialize([raw], resources={"dask_pipes": pipes_client})
    assert result.success
    assert [m["i"] for m in received] == list(range(20))
    mat = result.asset_materializations_for_node("raw")[0]
    assert mat.metadata["pieces"].value == 20


def test_huge_metadata_arrives_whole(pipes_client: PipesDaskClient) -> None:
    """A single 8 MiB message line travels in bounded pieces and arrives intact."""
    huge = script_asset("huge", "stream_huge.py", env={"SIZE_MB": "8"})

    result = materialize([huge], resources={"dask_pipes": pipes_client})
    assert result.success
    metadata = result.asset_materializations_for_node("huge")[0].metadata
    assert metadata["size"].value == 8 * 1024 * 1024
    assert metadata["blob"].value == "x" * (8 * 1024 * 1024)


def test_message_over_the_cap_fails_the_step_and_the_rest_arrives(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """A message over max_message_bytes is not forwarded; the step fails naming its method, its
    size and the field to raise, and the messages around it are still delivered."""
    huge = script_asset("huge", "stream_huge.py", env={"SIZE_MB": "3"})
    client = PipesDaskClient(
        scheduler_address=pipes_client.scheduler_address, max_message_bytes=1024 * 1024
    )
    result = materialize(
        [huge], resources={"dask_pipes": client}, instance=instance, raise_on_error=False
    )
    assert not result.success
    failure = result.failure_data_for_node("huge")
    assert failure is not None and failure.error is not None and failure.error.cause
    error = failure.error.cause
    assert error.cls_name == "PipesDaskMessageTooLargeError"
    text = error.to_string()
    assert "'report_asset_materialization' (3,145,9" in text  # 3 MiB of metadata, and its JSON
    assert "PipesDaskClient(max_message_bytes=...)" in text
    logs = [e.message for e in instance.all_logs(result.run_id)]
    assert "after the huge message" in logs
    assert any("opened dagster pipes" in m for m in logs)
