"""A long-lived shared scheduler keeps nothing of finished sessions."""

from dagster import AssetExecutionContext, asset, materialize
from distributed import Client

from dagster_pipes_ext import PipesDaskClient
from dagster_pipes_ext_tests.conftest import script
from dagster_pipes_ext_tests.support.processes import DaskProcesses


def _scheduler_state(dask_scheduler=None) -> dict:
    return {
        "topics": [t for t in dask_scheduler._broker._topics if t.startswith("dagster-pipes/")],
        "events": [e for e in dask_scheduler.extensions["events"]._events if "dagster-pipes" in e],
        "tasks": [str(k) for k in dask_scheduler.tasks if "dagster-pipes" in str(k)],
    }


def test_sessions_leave_no_topics_events_or_tasks(separate_cluster: DaskProcesses) -> None:
    """After successful and failed runs, none of their topics, events or tasks stay behind."""

    @asset
    def tidy(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(
            context=context, command=["python", script("stream_flood.py")], env={"COUNT": "50"}
        ).get_materialize_result()

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
