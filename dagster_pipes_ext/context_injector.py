"""``PipesDaskContextInjector``: the Pipes context travels inside the Dask task."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster import OpExecutionContext, PipesContextInjector
from dagster_pipes import PipesContextData, PipesParams

INJECTOR_PARAM = "dask_task"


class PipesDaskContextInjector(PipesContextInjector):
    """Carries the Pipes context data to the worker inside the launch task itself.

    No shared storage is involved: the client puts :attr:`context_data` into the task it submits,
    and the launcher on the worker writes it to a worker-local file whose stock ``{"path": ...}``
    params it hands to the external process as ``DAGSTER_PIPES_CONTEXT``.

    Args:
        overrides: Context fields to set on top of what Dagster builds, for example a partition
            key range that Dagster core leaves out for multi-partition runs.
    """

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._context_data: PipesContextData | None = None

    @property
    def context_data(self) -> PipesContextData:
        """The context data of the open session, as the external process will see it."""
        if self._context_data is None:
            raise RuntimeError("PipesDaskContextInjector.context_data read outside a session")
        return self._context_data

    @contextmanager
    def inject_context(self, context_data: PipesContextData) -> Iterator[PipesParams]:
        """Capture the context data for the launch task.

        Args:
            context_data: The context data Dagster built for this session.

        Yields:
            Params naming the transport; the external process receives file params instead.
        """
        data: dict[str, Any] = {**context_data}
        data.update(self._overrides)
        self._context_data = PipesContextData(**data)  # type: ignore[typeddict-item]
        try:
            yield {INJECTOR_PARAM: True}
        finally:
            self._context_data = None

    def no_messages_debug_text(self) -> str:
        """Tell the user how the context reaches the external process."""
        return (
            "The context was sent inside the Dask launch task; the launcher on the worker wrote it "
            "to a worker-local file and set DAGSTER_PIPES_CONTEXT to stock file params. The "
            "external process should call `open_dagster_pipes()` with the default context loader."
        )


def partition_overrides(context: OpExecutionContext) -> dict[str, Any]:
    """Deliver a multi-partition run's key range and time window, which Dagster core omits."""
    try:
        if context.has_partition_key or not context.has_partition_key_range:
            return {}
        key_range = context.partition_key_range
    except Exception:
        return {}
    overrides: dict[str, Any] = {
        "partition_key_range": {"start": key_range.start, "end": key_range.end}
    }
    try:
        window = context.partition_time_window
        overrides["partition_time_window"] = {
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
        }
    except Exception:
        pass  # not time-partitioned
    return overrides
