"""Streaming guarantees: every message exactly once, in order, whatever the volume or pacing."""

from pathlib import Path

import pytest
from dagster import AssetExecutionContext, asset, materialize

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
    client = pipes_client.model_copy(update={"max_batch_bytes": 1024})
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
    """A single 8 MiB message line travels as one event and arrives intact."""
    huge = script_asset("huge", "stream_huge.py", env={"SIZE_MB": "8"})

    result = materialize([huge], resources={"dask_pipes": pipes_client})
    assert result.success
    metadata = result.asset_materializations_for_node("huge")[0].metadata
    assert metadata["size"].value == 8 * 1024 * 1024
    assert metadata["blob"].value == "x" * (8 * 1024 * 1024)
