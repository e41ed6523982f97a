"""The flood scenario's Dagster instance, and the counts of what reached it.

A ``local_temp`` instance (SQLite) whose compute-log manager writes the step's stdout to a file
without mirroring it to the terminal; the lines in that file, and a run's log entries in the
event log, are counted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dagster import DagsterInstance
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._utils import ensure_file, touch_file


class StdoutFileComputeLogManager(LocalComputeLogManager):
    """Captures the step's stdout to a file, as ``LocalComputeLogManager`` does, without a mirror.

    Dagster's manager also starts a ``tail`` process that copies the file back to this
    process's stdout (1 GiB on the terminal, and a third party reading the file); this one only
    redirects file descriptor 1 to the file for the step, so what reached the step's stdout,
    through ``sys.stdout`` (``PipesDaskMessageReader``) or the inherited descriptor
    (``PipesSubprocessClient``'s child), can be counted afterwards. Stderr is not captured.
    """

    last_stdout_path: str | None = None

    @classmethod
    def from_config_value(
        cls, inst_data: Any, config_value: Mapping[str, Any]
    ) -> StdoutFileComputeLogManager:
        """Build it from the instance's ``compute_logs`` config."""
        return cls(inst_data=inst_data, **config_value)

    @contextlib.contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Iterator[CapturedLogContext]:
        """Redirect stdout to the step's ``.out`` file while the step runs."""
        path = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        ensure_file(path)
        self.last_stdout_path = path
        with redirect_to_file(sys.stdout, path):
            yield CapturedLogContext(log_key)
        touch_file(self.complete_artifact_path(log_key))


@contextlib.contextmanager
def flood_instance() -> Iterator[tuple[Any, str]]:
    """A ``local_temp`` instance (storage on tmpfs where there is one) capturing stdout to files.

    Yields the instance and the directory of its storage.
    """
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with (
        tempfile.TemporaryDirectory(prefix="pipes-bench-flood-home-", dir=shm) as home,
        tempfile.TemporaryDirectory(prefix="pipes-bench-flood-stdout-") as captured,
    ):
        overrides = {
            "compute_logs": {
                "module": __name__,
                "class": StdoutFileComputeLogManager.__name__,
                "config": {"base_dir": captured},
            }
        }
        with DagsterInstance.local_temp(home, overrides=overrides) as instance:
            yield instance, home


def count_lines(path: str) -> tuple[int, int]:
    """Bytes and newlines in a file, read in 8 MiB pieces."""
    size = lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            size += len(chunk)
            lines += chunk.count(b"\n")
    return size, lines


def count_logs(instance: Any, run_id: str, prefix: str) -> int:
    """The run's plain log entries whose message starts with ``prefix``, counted in SQL."""
    import sqlalchemy as db

    query = db.text(
        "SELECT COUNT(*) FROM event_logs WHERE run_id = :run_id "
        "AND dagster_event_type IS NULL AND event LIKE :pattern"
    )
    pattern = f'%"user_message": "{prefix}%'
    with instance.event_log_storage.run_connection(run_id) as conn:
        return int(conn.execute(query, {"run_id": run_id, "pattern": pattern}).scalar() or 0)
