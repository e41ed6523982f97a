"""The external process's stdout/stderr land in the step's compute logs, and arrive live."""

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    MetadataValue,
    materialize,
)
from dagster._core.storage.compute_log_manager import CapturedLogData

from dagster_pipes_ext import PipesDaskClient
from dagster_pipes_ext_tests.conftest import script_asset

pytestmark = pytest.mark.timeout(120)

LIVE_TIMEOUT = 30.0


def _captured(instance: DagsterInstance, run_id: str, step_key: str) -> CapturedLogData | None:
    """The compute logs captured for ``step_key`` of the run so far (None before capture began)."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.LOGS_CAPTURED):
        data = entry.get_dagster_event().logs_captured_data
        if step_key in (data.step_keys or []):
            manager = instance.compute_log_manager
            log_key = manager.build_log_key_for_run(run_id, data.file_key)
            return manager.get_log_data(log_key)
    return None


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def test_stdout_and_stderr_are_in_compute_logs(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """Lines the script prints to stdout and stderr are in the step's captured compute logs, in
    order and on the right stream."""
    proto_stdio = script_asset("proto_stdio", "proto_stdio.py")
    result = materialize([proto_stdio], instance=instance, resources={"dask_pipes": pipes_client})
    assert result.success
    captured = _captured(instance, result.run_id, "proto_stdio")
    assert captured is not None
    stdout, stderr = _text(captured.stdout), _text(captured.stderr)
    out_lines = [f"proto-stdout-line-{i}" for i in range(3)]
    err_lines = [f"proto-stderr-line-{i}" for i in range(3)]
    for line in out_lines:
        assert line in stdout
        assert line not in stderr
    for line in err_lines:
        assert line in stderr
        assert line not in stdout
    assert [stdout.index(line) for line in out_lines] == sorted(
        stdout.index(line) for line in out_lines
    )
    assert [stderr.index(line) for line in err_lines] == sorted(
        stderr.index(line) for line in err_lines
    )


def test_forward_stdio_false_keeps_stdio_out_of_compute_logs(
    pipes_client: PipesDaskClient, instance: DagsterInstance
) -> None:
    """With forward_stdio=False the script's stdout and stderr are not in the compute logs, while
    its Pipes messages still arrive."""
    quiet = PipesDaskClient(
        scheduler_address=pipes_client.scheduler_address,
        forward_stdio=False,
        termination_timeout_seconds=5,
    )
    proto_stdio = script_asset("proto_stdio", "proto_stdio.py")
    result = materialize([proto_stdio], instance=instance, resources={"dask_pipes": quiet})
    assert result.success
    captured = _captured(instance, result.run_id, "proto_stdio")
    assert captured is not None
    everything = _text(captured.stdout) + _text(captured.stderr)
    assert "proto-stdout-line" not in everything
    assert "proto-stderr-line" not in everything
    records = instance.fetch_materializations(AssetKey("proto_stdio"), limit=1).records
    materialization = records[0].asset_materialization
    assert materialization is not None
    assert materialization.metadata["printed"] == MetadataValue.int(3)


def test_logs_and_stdout_arrive_while_the_process_runs(
    pipes_client: PipesDaskClient, instance: DagsterInstance, tmp_path: Path
) -> None:
    """A log message and a stdout line reach the event log and the compute logs while the script
    still runs, since the script only finishes after the test has seen them."""
    gate = tmp_path / "gate"
    seen: dict[str, Any] = {}
    errors: list[BaseException] = []

    proto_live = script_asset(
        "proto_live", "proto_wait_for_gate.py", extras={"gate": str(gate), "timeout": LIVE_TIMEOUT}
    )

    def watch() -> None:
        try:
            deadline = time.monotonic() + LIVE_TIMEOUT
            while time.monotonic() < deadline:
                run_ids = instance.get_run_ids()
                if run_ids:
                    run_id = run_ids[0]
                    texts = [
                        e.user_message for e in instance.all_logs(run_id) if e.dagster_event is None
                    ]
                    captured = _captured(instance, run_id, "proto_live")
                    stdout = _text(captured.stdout) if captured else ""
                    if "proto-live first" in texts and "proto-live-stdout-first" in stdout:
                        seen["second_before_gate"] = "proto-live second" in texts
                        seen["succeeded_before_gate"] = bool(
                            instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)
                        )
                        gate.touch()
                        seen["gate_opened"] = time.time()
                        return
                time.sleep(0.05)
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch, daemon=True, name="proto-live-watcher")
    watcher.start()
    try:
        result = materialize(
            [proto_live],
            instance=instance,
            resources={"dask_pipes": pipes_client},
            raise_on_error=False,
        )
    finally:
        watcher.join(timeout=LIVE_TIMEOUT + 10)
    assert not watcher.is_alive()
    assert not errors, errors
    assert "gate_opened" in seen, "the first log/stdout line never arrived while the script ran"
    assert seen["second_before_gate"] is False
    assert seen["succeeded_before_gate"] is False
    assert result.success

    second = [
        e
        for e in instance.all_logs(result.run_id)
        if e.dagster_event is None and e.user_message == "proto-live second"
    ]
    assert len(second) == 1
    assert second[0].timestamp >= seen["gate_opened"] - 0.5
