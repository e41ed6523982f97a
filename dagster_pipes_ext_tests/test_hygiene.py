"""A long-lived shared scheduler keeps nothing of finished sessions."""

from dagster import AssetExecutionContext, asset, materialize
from distributed import Client

from dagster_pipes_ext import PipesDaskClient, PipesDaskNoWorkerError, close_cached_clients
from dagster_pipes_ext_tests.conftest import script_asset
from dagster_pipes_ext_tests.support.processes import DaskProcesses, start_cluster


def _scheduler_state(dask_scheduler=None) -> dict:
    return {
        "topics": [t for t in dask_scheduler._broker._topics if t.startswith("dagster-pipes/")],
        "events": [e for e in dask_scheduler.extensions["events"]._events if "dagster-pipes" in e],
        "tasks": [str(k) for k in dask_scheduler.tasks if "dagster-pipes" in str(k)],
    }


def test_sessions_leave_no_topics_events_or_tasks(separate_cluster: DaskProcesses) -> None:
    """After successful and failed runs, none of their topics, events or tasks stay behind."""
    tidy = script_asset("tidy", "stream_flood.py", env={"COUNT": "50"})

    @asset
    def failing(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(context=context, command=["false"]).get_materialize_result()

    client = PipesDaskClient(scheduler_address=separate_cluster.address)
    for _ in range(3):
        assert materialize([tidy], resources={"dask_pipes": client}).success
    assert not materialize(
        [failing], resources={"dask_pipes": client}, raise_on_error=False
    ).success

    with Client(separate_cluster.address, timeout=10, set_as_default=False) as observer:
        # pickled by value: the scheduler cannot import the test package
        state = observer.run_on_scheduler(
            lambda dask_scheduler=None: _scheduler_state(dask_scheduler)
        )
    assert state == {"topics": [], "events": [], "tasks": []}


def test_scheduler_refusing_run_on_scheduler(tmp_path) -> None:
    """A scheduler that blocks run_on_scheduler still runs sessions and clears their events."""
    cluster = start_cluster(
        1,
        resources="SLOTS=1",
        scheduler_env={"DASK_DISTRIBUTED__SCHEDULER__BLOCKED_HANDLERS": '["run_function"]'},
    )
    try:
        guarded = script_asset("guarded", "stream_flood.py", env={"COUNT": "20"})

        @asset
        def greedy(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
            return dask_pipes.run(
                context=context, command=["true"], resources={"GPU": 1}
            ).get_materialize_result()

        client = PipesDaskClient(scheduler_address=cluster.address, worker_wait_timeout_seconds=2)
        assert materialize([guarded], resources={"dask_pipes": client}).success
        failed = materialize([greedy], resources={"dask_pipes": client}, raise_on_error=False)
        failure = failed.failure_data_for_node("greedy")
        assert failure is not None and failure.error is not None and failure.error.cause
        assert failure.error.cause.cls_name == PipesDaskNoWorkerError.__name__
        with Client(cluster.address, timeout=10, set_as_default=False) as observer:
            topics = [t for t in observer.get_events() if t.startswith("dagster-pipes/")]  # type: ignore[union-attr]
            # Without run_on_scheduler the topic keeps its retained events (documented), but the
            # session's claim is released.
            assert len(topics) == 1
            claimed = observer.sync(observer.scheduler.event_is_set, name=f"{topics[0]}/claimed")  # type: ignore[union-attr]
            assert claimed is False
    finally:
        close_cached_clients()
        cluster.stop()
