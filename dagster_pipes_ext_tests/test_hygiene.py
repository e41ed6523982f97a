"""A long-lived shared scheduler keeps nothing of finished sessions."""

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import AssetExecutionContext, asset, materialize
from distributed import Client

from dagster_pipes_ext import PipesDaskClient, PipesDaskNoWorkerError, close_cached_clients
from dagster_pipes_ext_tests.conftest import script, script_asset
from dagster_pipes_ext_tests.support.processes import (
    DaskProcesses,
    start_cluster,
    start_worker,
    wait_for,
)


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


def test_worker_profiler_keeps_no_launcher_stacks(separate_cluster: DaskProcesses) -> None:
    """Dask's profiler keeps 1,000 s of stacks of every task thread; a launcher waiting on its
    command must not fill it (a plain task of the same length shows that it samples).

    A launcher may leave a sample or two per session: the profiler copies the list of task
    threads before it reads their stacks, so the first sample after the launcher left it can
    still be the launcher's. Waiting 2.5 s used to leave ~250.
    """

    @asset
    def waiting(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(context=context, command=["sleep", "2.5"]).get_results()

    # Nested, so that they travel by value: the worker cannot import the test package.
    def sleeping_task(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def samples_by_key(dask_worker=None) -> dict[str, int]:
        """Samples the worker's profiler took of each task-key prefix, recent and history."""
        counts: dict[str, int] = {}
        cycles = [by_key for _, by_key in dask_worker.profile_keys_history]
        for by_key in [*cycles, dask_worker.profile_keys]:
            for prefix, tree in by_key.items():
                counts[prefix] = counts.get(prefix, 0) + tree["count"]
        return counts

    client = PipesDaskClient(scheduler_address=separate_cluster.address)
    with Client(separate_cluster.address, timeout=10, set_as_default=False) as observer:
        assert materialize([waiting], resources={"dask_pipes": client}).success
        assert observer.submit(sleeping_task, 1.5, pure=False).result(timeout=30) == 1.5
        [counts] = observer.run(samples_by_key).values()
    plain = counts.get("sleeping_task", 0)
    launcher = sum(n for prefix, n in counts.items() if prefix.startswith("dagster-pipes-waiting"))
    assert plain >= 30, f"the profiler took {plain} samples of a 1.5 s task: {counts}"
    assert launcher <= 5, f"{launcher} samples of a launcher that waited 2.5 s: {counts}"


def test_an_expired_wait_keeps_nothing_alive(caplog: pytest.LogCaptureFixture) -> None:
    """A put into a full queue that times out (the launcher's wait while the reader is behind)
    is an answer: the scheduler logs no error, and nothing is left for the cyclic garbage
    collector, not the batch, not the caller's frame.

    Dask's ``queue_put`` raises; the scheduler logged each one as an ERROR with a traceback,
    and the exception, held in reference cycles among ``distributed``'s frames, kept the
    caller's frames with the batch in them until a full collection.
    """
    import gc
    import logging
    import types

    from distributed import LocalCluster, Queue

    from dagster_pipes_ext.remote import dask_compat
    from dagster_pipes_ext.remote.scheduler_ops import install_queue_handlers, on_scheduler

    def put_batch(worker, n: int) -> bool:
        batch = f"batch {n} " + "x" * 4096
        try:
            dask_compat.queue_put(worker, "full", batch, 0.05)
        except TimeoutError:
            return True
        return False

    def is_batch(o: object) -> bool:
        return isinstance(o, str) and o.startswith("batch ") and o.endswith("x" * 4096)

    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
        caplog.at_level(logging.WARNING, logger="distributed"),
    ):
        client.run_on_scheduler(on_scheduler(install_queue_handlers))
        Queue("full", client=client, maxsize=1).put(0, timeout=10)
        [worker] = cluster.workers.values()
        gc.collect()
        gc.disable()
        try:
            timed_out = [put_batch(worker, n) for n in range(5)]
            tracked = gc.get_objects()
            frames = [
                o
                for o in tracked
                if isinstance(o, types.FrameType) and o.f_code is put_batch.__code__
            ]
            holders = [o for o in tracked if any(is_batch(r) for r in gc.get_referents(o))]
            del tracked
        finally:
            gc.enable()
    assert timed_out == [True] * 5
    assert (len(frames), len(holders)) == (0, 0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_quiet_session_leaves_no_noise_in_the_scheduler_log(
    separate_cluster: DaskProcesses,
) -> None:
    """The reader waits 0.5 s at a time on the scheduler; a wait that expires is no error.

    With Dask's ``queue_get`` the scheduler logged an ERROR with a traceback for each one: a
    command that prints nothing for an hour left 7,200 in a shared scheduler's log.
    """

    @asset
    def quiet(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(context=context, command=["sleep", "2"]).get_results()

    log = Path(separate_cluster.worker_dir) / "scheduler.log"
    text = log.read_text(errors="replace")
    before = text.count("Exception while handling op")
    present_before = text.count("out-of-band function 'worker_present'")
    client = PipesDaskClient(scheduler_address=separate_cluster.address)
    assert materialize([quiet], resources={"dask_pipes": client}).success
    text = log.read_text(errors="replace")
    assert text.count("Exception while handling op") == before, text[-3000:]
    # nor an INFO line a second for the orchestrator's liveness check (run_on_scheduler)
    assert text.count("out-of-band function 'worker_present'") == present_before, text[-3000:]


def _topic_probes(topic: str) -> tuple[Callable[..., bool], Callable[..., None]]:
    """Whether ``topic`` exists on the scheduler, and its removal (for ``run_on_scheduler``).

    Nested, so that they travel by value: the scheduler cannot import the test package.
    """

    def topic_exists(dask_scheduler=None) -> bool:
        return topic in dask_scheduler._broker._topics

    def drop_topic(dask_scheduler=None) -> None:
        dask_scheduler._broker._topics.pop(topic, None)

    return topic_exists, drop_topic


def test_a_late_heartbeat_does_not_create_a_forgotten_topic(
    separate_cluster: DaskProcesses,
) -> None:
    """A launcher's heartbeat that reaches the scheduler after the orchestrator removed the
    session's topic is dropped; while the topic exists it is published to its subscriber.

    Sent with the worker's ``log_event`` (its batched stream, which the session's last batch,
    an RPC, can overtake) such a beat created the topic again, for the scheduler's lifetime:
    seen in CI as a topic left by one of three sessions on a loaded machine.
    """
    import uuid

    from dagster_pipes_ext.remote.dask_compat import BEAT_HANDLER
    from dagster_pipes_ext.remote.scheduler_ops import install_queue_handlers, on_scheduler

    topic = f"pipes-test-late-beat/{uuid.uuid4().hex}"
    received: list = []
    topic_exists, drop_topic = _topic_probes(topic)

    with Client(separate_cluster.address, timeout=10, set_as_default=False) as client:
        client.run_on_scheduler(on_scheduler(install_queue_handlers))
        beat = getattr(client.scheduler, BEAT_HANDLER)
        assert client.sync(beat, topic=topic, msg={"hb": 1}, callback_timeout=10) is False
        assert client.run_on_scheduler(topic_exists) is False
        client.subscribe_topic(topic, received.append)
        wait_for(lambda: client.run_on_scheduler(topic_exists), 10, "the subscription")
        assert client.sync(beat, topic=topic, msg={"hb": 2}, callback_timeout=10) is True
        wait_for(lambda: received, 10, "the published heartbeat")
        client.unsubscribe_topic(topic)
        client.run_on_scheduler(drop_topic)
    assert [event[1] for event in received] == [{"hb": 2}]


def test_a_finished_session_is_removed_with_its_last_batch(
    separate_cluster: DaskProcesses,
) -> None:
    """The reader's take of the launcher's last batch removes the session on the scheduler: no
    clean-up call follows a session that ended normally (it cost the step ~10 ms, measured), and
    nothing of it is left when ``materialize`` returns."""
    tidy = script_asset("removed", "stream_flood.py", env={"COUNT": "20"})
    log = Path(separate_cluster.worker_dir) / "scheduler.log"
    client = PipesDaskClient(scheduler_address=separate_cluster.address)
    with Client(separate_cluster.address, timeout=10, set_as_default=False) as observer:
        for _ in range(3):  # the first session on a connection, and later ones
            before = log.read_text(errors="replace").count("'forget_session'")
            assert materialize([tidy], resources={"dask_pipes": client}).success
            state = observer.run_on_scheduler(
                lambda dask_scheduler=None: _scheduler_state(dask_scheduler)
            )
            assert (state["topics"], state["events"], state["queues"]) == ([], [], [])
            assert log.read_text(errors="replace").count("'forget_session'") == before


def _out_of_band_calls(text: str) -> list[str]:
    """The functions ``run_function`` ran, from the lines Dask logs for each one."""
    import re

    return re.findall(r"Run out-of-band function '(\w+)'", text)


@pytest.mark.parametrize("cluster_kind", ["embedded", "separate"])
def test_later_sessions_run_through_the_handlers(
    cluster_kind: str, request: pytest.FixtureRequest
) -> None:
    """Once a connection's first session installed the package's scheduler handlers, later
    sessions open, stash, claim and clean up through them: no ``run_function`` call (a pickled
    function each, and an INFO line in a shared scheduler's log)."""
    import logging

    tidy = script_asset("through_handlers", "stream_flood.py", env={"COUNT": "20"})

    @asset
    def no_worker(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        # Ends without a last batch: the orchestrator's own clean-up call.
        return dask_pipes.run(
            context=context, command=["true"], resources={"GPU": 1}
        ).get_materialize_result()

    lines: list[str] = []
    if cluster_kind == "embedded":
        client = PipesDaskClient(worker_wait_timeout_seconds=1)
        log = None
    else:
        cluster: DaskProcesses = request.getfixturevalue("separate_cluster")
        client = PipesDaskClient(scheduler_address=cluster.address, worker_wait_timeout_seconds=1)
        log = Path(cluster.worker_dir) / "scheduler.log"

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect(logging.INFO)
    dask_logger = logging.getLogger("distributed.worker")
    level = dask_logger.level
    dask_logger.addHandler(handler)
    dask_logger.setLevel(logging.INFO)
    try:
        assert materialize([tidy], resources={"dask_pipes": client}).success  # installs them
        before = log.read_text(errors="replace") if log else ""
        lines.clear()
        for _ in range(3):
            assert materialize([tidy], resources={"dask_pipes": client}).success
        failed = materialize([no_worker], resources={"dask_pipes": client}, raise_on_error=False)
        assert not failed.success
        after = log.read_text(errors="replace")[len(before) :] if log else "\n".join(lines)
    finally:
        dask_logger.removeHandler(handler)
        dask_logger.setLevel(level)
    assert _out_of_band_calls(after) == []
    if cluster_kind == "separate":
        with Client(client.scheduler_address, timeout=10, set_as_default=False) as observer:
            state = observer.run_on_scheduler(
                lambda dask_scheduler=None: _scheduler_state(dask_scheduler)
            )
        assert (state["topics"], state["events"], state["queues"]) == ([], [], [])


def test_sessions_fall_back_where_the_handlers_are_missing(tmp_path: Path) -> None:
    """A scheduler that lost the package's handlers since a connection's first session (what
    a restart does) still runs later sessions, through ``run_function``, installs them again,
    and keeps nothing of them."""
    from dagster_pipes_ext.remote import dask_compat

    names = [
        dask_compat.OPEN_HANDLER,
        dask_compat.STASH_HANDLER,
        dask_compat.CLAIM_HANDLER,
        dask_compat.SPEC_HANDLER,
        dask_compat.FORGET_HANDLER,
        dask_compat.STATE_HANDLER,
    ]

    def drop_handlers(which: list[str], dask_scheduler=None) -> list[str]:
        return [n for n in which if dask_scheduler.handlers.pop(n, None) is not None]

    def present(dask_scheduler=None) -> list[str]:
        return [n for n in names if n in dask_scheduler.handlers]

    tidy = script_asset("fallback", "stream_flood.py", env={"COUNT": "20"})

    @asset
    def no_worker(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
        return dask_pipes.run(
            context=context, command=["true"], resources={"GPU": 1}
        ).get_materialize_result()

    cluster = start_cluster(1)
    try:
        client = PipesDaskClient(scheduler_address=cluster.address, worker_wait_timeout_seconds=1)
        with Client(cluster.address, timeout=10, set_as_default=False) as observer:
            assert materialize([tidy], resources={"dask_pipes": client}).success
            log = Path(cluster.worker_dir) / "scheduler.log"
            seen = len(log.read_text(errors="replace"))
            assert observer.run_on_scheduler(drop_handlers, names) == names
            assert materialize([tidy], resources={"dask_pipes": client}).success
            assert observer.run_on_scheduler(present) == names  # installed again
            calls = _out_of_band_calls(log.read_text(errors="replace")[seen:])
            assert "open_session" in calls, calls
            # The orchestrator's own clean-up (no last batch), with its handler missing.
            forget = [dask_compat.FORGET_HANDLER]
            assert observer.run_on_scheduler(drop_handlers, forget) == forget
            failed = materialize(
                [no_worker], resources={"dask_pipes": client}, raise_on_error=False
            )
            assert not failed.success
            calls = _out_of_band_calls(log.read_text(errors="replace")[seen:])
            assert calls.count("forget_session") == 1, calls
            state = observer.run_on_scheduler(
                lambda dask_scheduler=None: _scheduler_state(dask_scheduler)
            )
            assert (state["topics"], state["events"], state["queues"]) == ([], [], [])
            assert materialize([tidy], resources={"dask_pipes": client}).success
            state = observer.run_on_scheduler(
                lambda dask_scheduler=None: _scheduler_state(dask_scheduler)
            )
            assert (state["topics"], state["events"], state["queues"]) == ([], [], [])
    finally:
        close_cached_clients()
        cluster.stop()


def test_a_late_stop_poll_does_not_create_a_removed_event(
    separate_cluster: DaskProcesses,
) -> None:
    """The launcher's long-poll of its stop event answers "gone" once the session's topic was
    removed, without creating the event again; Dask's ``event_wait`` re-creates it (seen: a
    session's stop event left on the scheduler right after the session ended)."""
    import concurrent.futures
    import uuid

    from dagster_pipes_ext.remote.dask_compat import STOP_WAIT_HANDLER
    from dagster_pipes_ext.remote.scheduler_ops import install_queue_handlers, on_scheduler

    topic = f"pipes-test-stop-poll/{uuid.uuid4().hex}"
    stop = f"{topic}/stop"

    def events(dask_scheduler=None) -> list[str]:
        return [e for e in dask_scheduler.extensions["events"]._events if e == stop]

    topic_exists, drop_topic = _topic_probes(topic)

    with Client(separate_cluster.address, timeout=10, set_as_default=False) as client:
        client.run_on_scheduler(on_scheduler(install_queue_handlers))
        wait = getattr(client.scheduler, STOP_WAIT_HANDLER)
        answer = client.sync(wait, topic=topic, name=stop, timeout=1.0, callback_timeout=10)
        assert (answer, client.run_on_scheduler(events)) == ("gone", [])
        # Dask's own wait, for comparison: the event exists while it waits.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.sync, client.scheduler.event_wait, name=stop, timeout=1.0)
            wait_for(lambda: client.run_on_scheduler(events) == [stop], 5, "Dask's event")
            assert waiting.result(timeout=10) is False
        client.subscribe_topic(topic, lambda _event: None)
        wait_for(lambda: client.run_on_scheduler(topic_exists), 10, "the subscription")
        client.sync(client.scheduler.event_set, name=stop)
        answer = client.sync(wait, topic=topic, name=stop, timeout=1.0, callback_timeout=10)
        assert answer == "set"
        client.unsubscribe_topic(topic)
        client.run_on_scheduler(drop_topic)
        client.sync(client.scheduler.event_clear, name=stop)
        assert client.run_on_scheduler(events) == []
