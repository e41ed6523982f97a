"""The reader when the transport misbehaves: duplicates dropped, a loss fails the step."""

import json
import uuid

from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    asset,
    materialize,
    open_pipes_session,
)

from dagster_pipes_ext import (
    PipesDaskClient,
    PipesDaskContextInjector,
    PipesDaskMessageReader,
    PipesDaskMessagesLostError,
)
from dagster_pipes_ext.remote.wire import session_names


def _line(method: str, params: dict | None) -> str:
    return json.dumps({"__dagster_pipes_version": "0.1", "method": method, "params": params})


def _messages(*lines: str) -> list:
    return ["m", "".join(line + "\n" for line in lines)]


def _custom(i: int) -> str:
    return _line("report_custom_message", {"payload": i})


def _end(last_seq: int, lines: int) -> list:
    return ["end", {"status": "exited", "returncode": 0, "last_seq": last_seq, "lines": lines}]


def _run_session(batches: list[dict], instance: DagsterInstance) -> dict:
    """Put ``batches`` into a real session queue, as a launcher would, and read them."""
    seen: dict = {}

    @asset
    def gappy(context: AssetExecutionContext):
        dask_client = PipesDaskClient().get_dask_client()
        names = session_names(context.run_id, uuid.uuid4().hex)
        reader = PipesDaskMessageReader(
            dask_client=dask_client, topic=names.topic, queue=names.queue, log=context.log
        )
        with open_pipes_session(
            context=context, context_injector=PipesDaskContextInjector(), message_reader=reader
        ) as session:
            for batch in batches:
                dask_client.sync(
                    dask_client.scheduler.queue_put, name=names.queue, data=batch, timeout=10
                )
            reader.wait_for_end()
        seen["custom"] = session.get_custom_messages()
        seen["error"] = reader.delivery_error()
        if seen["error"] is not None:
            raise seen["error"]
        return session.get_results()

    seen["result"] = materialize([gappy], instance=instance, raise_on_error=False)
    return seen


def test_duplicate_batches_are_dropped(instance: DagsterInstance):
    """A batch put twice (its answer was lost, the launcher put it again) is handled once."""
    first = {"s": 0, "r": [_messages(_line("opened", {}), _custom(0))]}
    seen = _run_session(
        [
            first,
            first,
            {"s": 1, "r": [_messages(_custom(1), _line("closed", {}))]},
            {"s": 2, "r": [_end(2, 4)]},
        ],
        instance,
    )
    assert seen["result"].success
    assert seen["custom"] == (0, 1)
    assert seen["error"] is None


def test_a_batch_that_never_arrives_fails_the_step(instance: DagsterInstance):
    """A missing batch is counted, the rest is handled, and the step fails saying how many."""
    seen = _run_session(
        [
            {"s": 0, "r": [_messages(_line("opened", {}), _custom(0))]},
            {"s": 2, "r": [_messages(_custom(2), _line("closed", {}))]},
            {"s": 3, "r": [_end(3, 6)]},
        ],
        instance,
    )
    assert not seen["result"].success
    assert seen["custom"] == (0, 2)
    error = seen["error"]
    assert isinstance(error, PipesDaskMessagesLostError)
    assert "2 of 6 message lines" in str(error) and "1 batch(es) missing" in str(error)


def test_slow_handler_loses_nothing_past_the_drain_timeout(instance: DagsterInstance, tmp_path):
    """Messages already on their way are handled however long Dagster takes; the step succeeds.

    Dagster's handler writes ~1-2k log messages a second here; 3,000 messages with a 1 s drain
    timeout left most of them queued when the command ended (the old reader then dropped them
    and still reported success).
    """
    from dagster_pipes_ext_tests.conftest import script_asset

    flood = script_asset("flood", "log_flood.py", env={"COUNT": "3000"})
    result = materialize(
        [flood],
        instance=instance,
        resources={"dask_pipes": PipesDaskClient(message_drain_timeout_seconds=1)},
        raise_on_error=False,
    )
    logged = [
        e.message for e in instance.all_logs(result.run_id) if e.message.startswith("flood line ")
    ]
    assert logged == [f"flood line {i}" for i in range(3000)]
    assert result.success
    materialization = result.asset_materializations_for_node("flood")[0]
    assert materialization.metadata["sent"].value == 3000
