"""A long-lived shared scheduler keeps nothing of finished sessions."""

from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import AssetExecutionContext, asset, materialize
from distributed import Client

from dagster_pipes_ext import PipesDaskClient, PipesDaskNoWorkerError, close_cached_clients
from dagster_pipes_ext_tests.conftest import script, script_asset
from dagster_pipes_ext_tests.support.processes import DaskProcesses, start_cluster, start_worker


def _scheduler_state(dask_scheduler=None) -> dict:
    return {
        "topics": [t for t in dask_scheduler._broker._topics if t.startswith("dagster-pipes/")],
        "events": [e for e in dask_scheduler.extensions["events"]._events if "dagster-pipes" in e],
        "tasks": [str(k) for k in dask_scheduler.tasks if "dagster-pipes" in str(k)],
        "queues": [q for q in dask_scheduler.extensions["queues"].queues if "dagster-pipes" in q],
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
    assert state == {"topics": [], "events": [], "tasks": [], "queues": []}


def test_scheduler_refusing_run_on_scheduler(tmp_path) -> None:
    """A scheduler that blocks run_on_scheduler still runs sessions and clears their events."""
    cluster = start_cluster(
        1,
        resources="SLOTS=1",
        scheduler_env={"DASK_DISTRIBUTED__SCHEDULER__BLOCKED_HANDLERS": '["run_function"]'},
    )
    try:

        @asset
        def guarded(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
            # Long enough for the launcher's heartbeat to leave events on the session topic.
            command = f"sleep 1.5 && exec python {script('stream_flood.py')}"
            return dask_pipes.run(
                context=context, command=["sh", "-c", command], env={"COUNT": "20"}
            ).get_materialize_result()

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
            # Without run_on_scheduler the topic keeps its retained heartbeats (documented), but
            # the session's claim is released and its data queue is gone.
            assert len(topics) == 1
            claimed = observer.sync(observer.scheduler.event_is_set, name=f"{topics[0]}/claimed")  # type: ignore[union-attr]
            assert claimed is False
            with pytest.raises(KeyError):
                observer.sync(observer.scheduler.queue_qsize, name=f"{topics[0]}/data")  # type: ignore[union-attr]
    finally:
        close_cached_clients()
        cluster.stop()


def test_launcher_lost_by_the_scheduler_is_published_again(tmp_path) -> None:
    """A scheduler that lost the published launcher (e.g. restarted) gets it again; the command
    still runs exactly once, on a fresh worker that has to fetch it."""
    cluster = start_cluster(1)
    try:
        client = PipesDaskClient(scheduler_address=cluster.address)
        first = script_asset("first", "stream_flood.py", env={"COUNT": "5"})
        assert materialize([first], resources={"dask_pipes": client}).success

        with Client(cluster.address, timeout=10, set_as_default=False) as observer:
            # What a scheduler restart does to the launcher the client published there.
            dropped = observer.run_on_scheduler(
                lambda dask_scheduler=None: (
                    dask_scheduler.task_metadata.pop("dagster-pipes-ext", None) is not None
                )
            )
            assert dropped
            # A new worker process: it has no launcher of its own yet.
            cluster.workers.append(
                start_worker(cluster.address, Path(cluster.worker_dir), name="fresh")
            )
            observer.wait_for_workers(2, timeout=30)
            [fresh] = [
                address
                for address, info in observer.scheduler_info(n_workers=-1)["workers"].items()
                if info["name"] == "fresh"
            ]

            marks = tmp_path / "started"

            @asset
            def again(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
                command = f"echo started >> {marks} && exec python {script('stream_flood.py')}"
                return dask_pipes.run(
                    context=context,
                    command=["sh", "-c", command],
                    env={"COUNT": "5"},
                    workers=fresh,
                ).get_materialize_result()

            result = materialize([again], resources={"dask_pipes": client})
            assert result.success
            [materialization] = result.asset_materializations_for_node("again")
            assert materialization.metadata["dask/worker"].value == fresh
            assert marks.read_text() == "started\n"
            republished = observer.run_on_scheduler(
                lambda dask_scheduler=None: "dagster-pipes-ext" in dask_scheduler.task_metadata
            )
            assert republished
    finally:
        close_cached_clients()
        cluster.stop()


def _finder() -> Callable[[str], list[str]]:
    """A function that lists the types of the objects holding a string, anywhere in a process."""

    def holders_of(encoded_needle: str) -> list[str]:
        # Nested, so it travels by value to the worker, which cannot import this module. The
        # needle comes hex-encoded: the call itself must not carry it.
        import gc

        needle = bytes.fromhex(encoded_needle).decode()

        gc.collect()
        found = []
        # From every object the collector tracks, down through the containers it does not track
        # (a dict or tuple holding only strings and numbers is untracked: its strings would be
        # missed otherwise).
        containers = (dict, list, tuple, set, frozenset)
        seen: set[int] = set()
        todo = list(gc.get_objects())
        while todo:
            obj = todo.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            for ref in gc.get_referents(obj):
                if isinstance(ref, (bytes, bytearray, memoryview)):
                    ref = bytes(ref).decode("latin-1")
                if isinstance(ref, str):
                    if needle in ref:
                        found.append(type(obj).__name__)
                elif isinstance(ref, containers) and not gc.is_tracked(ref):
                    todo.append(ref)
        return found

    return holders_of


def test_finished_session_leaves_no_copy_of_its_output(separate_cluster: DaskProcesses) -> None:
    """What a job printed, logged and reported cannot be read on the scheduler or the worker
    afterwards (not in Dask's logs of recent messages, events, transitions or anywhere else)."""
    import uuid

    token = uuid.uuid4().hex
    leaky = script_asset("leaky", "print_token.py", env={"TOKEN_REVERSED": token[::-1]})
    client = PipesDaskClient(scheduler_address=separate_cluster.address)
    result = materialize([leaky], resources={"dask_pipes": client})
    assert result.success
    [materialization] = result.asset_materializations_for_node("leaky")
    assert materialization.metadata["token"].value == token  # it did travel
    assert _holders_on_cluster(separate_cluster.address, token) == ([], [[]])


def test_finished_session_leaves_no_copy_of_its_environment(
    separate_cluster: DaskProcesses,
) -> None:
    """A secret passed in ``env=`` stays nowhere on the scheduler or the worker afterwards (the
    launch spec waits on the scheduler for its launcher instead of riding the task)."""
    import uuid

    secret = uuid.uuid4().hex

    @asset
    def with_secret(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(
            context=context,
            command=["sh", "-c", 'test "$API_TOKEN" = "$0"', secret],
            env={"API_TOKEN": secret},
        ).get_results()

    client = PipesDaskClient(scheduler_address=separate_cluster.address)
    for _ in range(2):  # the first run on a connection waits for the stash; later ones do not
        assert materialize([with_secret], resources={"dask_pipes": client}).success
    assert _holders_on_cluster(separate_cluster.address, secret) == ([], [[]])


def _holders_on_cluster(address: str, needle: str) -> tuple[list[str], list[list[str]]]:
    """What holds ``needle`` on the scheduler, and on each worker."""
    holders_of = _finder()
    encoded = needle.encode().hex()
    with Client(address, timeout=10, set_as_default=False) as observer:
        on_scheduler = observer.run_on_scheduler(lambda dask_scheduler=None: holders_of(encoded))
        on_workers = observer.run(lambda: holders_of(encoded))
    return on_scheduler, list(on_workers.values())
