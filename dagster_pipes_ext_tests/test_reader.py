"""The reader's ordering guarantees when the transport misbehaves: holes refilled or reported."""

import json
import time
import uuid

from dagster import AssetExecutionContext, DagsterInstance, asset, materialize, open_pipes_session

from dagster_pipes_ext import PipesDaskClient, PipesDaskContextInjector, PipesDaskMessageReader


def _line(method: str, params: dict | None) -> list:
    return ["m", json.dumps({"__dagster_pipes_version": "0.1", "method": method, "params": params})]


def _custom(i: int) -> list:
    return _line("report_custom_message", {"payload": i})


def _run_session(publish_before, publish_during, last_seq: int, instance: DagsterInstance):
    seen: dict = {}

    @asset
    def gappy(context: AssetExecutionContext):
        dask_client = PipesDaskClient().get_dask_client()
        topic = f"dagster-pipes-test/{uuid.uuid4().hex}"
        for batch in publish_before:
            dask_client.log_event(topic, batch)
        deadline = time.monotonic() + 10
        while len(dask_client.get_events(topic)) < len(publish_before):  # type: ignore[arg-type]
            assert time.monotonic() < deadline, "the scheduler never recorded the early events"
            time.sleep(0.02)
        reader = PipesDaskMessageReader(
            dask_client=dask_client, topic=topic, log=context.log, drain_timeout_seconds=5
        )
        started = time.monotonic()
        with open_pipes_session(
            context=context,
            context_injector=PipesDaskContextInjector(),
            message_reader=reader,
        ) as session:
            for batch in publish_during:
                dask_client.log_event(topic, batch)
            reader.expect_final_batch(last_seq)
        seen["custom"] = session.get_custom_messages()
        seen["seconds"] = time.monotonic() - started
        seen["lost"] = reader.lost_batches
        dask_client.unsubscribe_topic(topic)
        return session.get_results()

    result = materialize([gappy], instance=instance)
    assert result.success
    warnings = [
        e.message
        for e in instance.all_logs(result.run_id)
        if e.level == 30 and "never arrived" in (e.message or "")
    ]
    return seen, warnings


def test_hole_is_refilled_from_the_schedulers_retained_events(instance: DagsterInstance):
    """A batch the subscription missed (published before it) is re-read and handled in order."""
    seen, warnings = _run_session(
        publish_before=[{"s": 1, "r": [_custom(1)]}],
        publish_during=[
            {"s": 2, "r": [_custom(2), _line("closed", {})]},
            {"s": 0, "r": [_line("opened", {}), _custom(0)]},
        ],
        last_seq=2,
        instance=instance,
    )
    assert seen["custom"] == (0, 1, 2)
    assert seen["lost"] == 0 and warnings == []


def test_batch_that_never_arrives_is_reported_not_waited_for(instance: DagsterInstance):
    """A batch that exists nowhere is reported as lost; the rest is handled and nothing hangs."""
    seen, warnings = _run_session(
        publish_before=[],
        publish_during=[
            {"s": 0, "r": [_line("opened", {}), _custom(0)]},
            {"s": 2, "r": [_custom(2)]},
            {"s": 2, "r": [_custom(2)]},  # a duplicate is dropped
            {"s": 3, "r": [_line("closed", {})]},
        ],
        last_seq=3,
        instance=instance,
    )
    assert seen["custom"] == (0, 2)
    assert seen["lost"] == 1
    assert len(warnings) == 1 and "sequence 1..1" in warnings[0]
    assert seen["seconds"] < 5  # well within the drain timeout: the hole was given up on
