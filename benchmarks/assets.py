"""Dagster definitions the scenarios share.

No ``from __future__ import annotations`` here: Dagster reads the real annotations of asset
functions to recognize the context parameter.
"""

from collections.abc import Sequence
from typing import Any

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, asset

from benchmarks.bench import materialization_metadata
from benchmarks.common import command

TRIVIAL = "bench_trivial"


def pipes_asset(name: str, argv: Sequence[str]) -> AssetsDefinition:
    """An asset that runs ``argv`` through whatever Pipes client is bound to ``pipes``.

    ``PipesSubprocessClient`` and ``PipesDaskClient`` share the ``run(context=, command=)`` call,
    so every client runs the very same asset definition. The materialization carries the number
    of custom messages the client received (``bench/custom``), so a scenario can check that
    nothing was lost.
    """
    command_argv = list(argv)

    @asset(name=name, required_resource_keys={"pipes"})
    def _asset(context: AssetExecutionContext) -> MaterializeResult:
        invocation = context.resources.pipes.run(context=context, command=command_argv)
        custom = len(invocation.get_custom_messages())
        result = invocation.get_materialize_result()
        return MaterializeResult(metadata={**(result.metadata or {}), "bench/custom": custom})

    return _asset


def trivial_asset() -> AssetsDefinition:
    """The trivial asset: ``external/trivial.py`` opens Pipes and reports one materialization."""
    return pipes_asset(TRIVIAL, command("trivial.py"))


def check_trivial(_name: str, result: Any) -> dict[str, Any]:
    """A trivial run counts only if its materialization carries the script's metadata."""
    meta = materialization_metadata(result, TRIVIAL)
    if meta.get("bench") != "trivial":
        raise RuntimeError(f"the trivial materialization is missing: {meta}")
    return {"run_id": result.run_id}


def ray_job_asset(name: str, entrypoint: str) -> AssetsDefinition:
    """An asset that runs ``entrypoint`` as a Ray job through ``PipesRayJobClient`` (``pipes``)."""

    @asset(name=name, required_resource_keys={"pipes"})
    def _asset(context: AssetExecutionContext) -> MaterializeResult:
        invocation = context.resources.pipes.run(
            context=context, submit_job_params={"entrypoint": entrypoint}
        )
        return invocation.get_materialize_result()

    return _asset
