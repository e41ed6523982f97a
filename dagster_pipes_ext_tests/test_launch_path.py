"""What one session costs on the launch path: its batches, and what is left when run() ends.

No ``from __future__ import annotations``: Dagster reads the asset's real annotations.
"""

import os
from typing import Any

import psutil
import pytest
from dagster import AssetExecutionContext, MaterializeResult, asset, materialize

from dagster_pipes_ext import PipesDaskClient
from dagster_pipes_ext.message_reader import PipesDaskMessageReader
from dagster_pipes_ext.remote.wire import REC_MESSAGES
from dagster_pipes_ext_tests.conftest import script
from dagster_pipes_ext_tests.support.processes import DaskProcesses


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The record kinds of every batch a reader accepts, in order (the reader is unchanged)."""
    seen: list[list[str]] = []
    accept = PipesDaskMessageReader._accept

    def recording(self: PipesDaskMessageReader, batch: Any) -> None:
        seen.append([kind for kind, _ in batch["r"]])
        accept(self, batch)

    monkeypatch.setattr(PipesDaskMessageReader, "_accept", recording)
    return seen


def _materialize(
    pipes: PipesDaskClient, command: list[str], after_run: Any = None, **run_kwargs: Any
) -> Any:
    @asset
    def session(context: AssetExecutionContext, dask_pipes: PipesDaskClient) -> MaterializeResult:
        invocation = dask_pipes.run(context=context, command=command, **run_kwargs)
        result = invocation.get_materialize_result()
        if after_run is not None:
            after_run(result)
        return result

    result = materialize([session], resources={"dask_pipes": pipes})
    assert result.success
    return result


@pytest.mark.parametrize("where", ["embedded", "separate"])
def test_the_session_is_cleared_up_on_the_worker_when_run_returns(
    where: str, request: pytest.FixtureRequest
) -> None:
    """When run() returns, the session's files are gone and its supervisor has been reaped.

    (The launcher clears up before its last batch, so nothing of it competes with the step.)
    """
    if where == "separate":
        cluster: DaskProcesses = request.getfixturevalue("separate_cluster")
        pipes = PipesDaskClient(scheduler_address=cluster.address)
        worker = psutil.Process(cluster.workers[0].pid)
    else:
        pipes = PipesDaskClient()
        worker = psutil.Process(os.getpid())
    seen: dict[str, Any] = {}

    def after_run(result: MaterializeResult) -> None:
        session_dir = str((result.metadata or {})["session_dir"].value)  # type: ignore[union-attr]
        seen["dir_exists"] = os.path.exists(session_dir)
        seen["zombies"] = [p.pid for p in worker.children() if p.status() == psutil.STATUS_ZOMBIE]

    _materialize(pipes, ["python", script("report_context_dir.py")], after_run)
    assert seen == {"dir_exists": False, "zombies": []}


def test_messages_travel_in_batches_not_one_record_per_call(
    batches: list[list[str]], separate_cluster: DaskProcesses
) -> None:
    """A steady stream of messages goes in a batch per launcher round, not a call per record.

    (The batch's size was not reset after a put: once a session had sent max_batch_bytes in
    all, every record went alone. 20,000 custom messages took 167-952 scheduler calls here
    instead of 15-19, and 100,000 took 1.55x the subprocess client's time on a separate
    cluster.)
    """
    pipes = PipesDaskClient(scheduler_address=separate_cluster.address)
    _materialize(pipes, ["python", script("stream_flood.py")], env={"COUNT": "20000"})
    message_batches = [b for b in batches if REC_MESSAGES in b]
    assert len(message_batches) <= 80, f"{len(message_batches)} batches carried the messages"
