"""The targets the report checks: one row each in :data:`TARGETS`, then evaluated and printed.

A row names a figure by its path in the scenario's results (and, for a comparison of two
figures, the path of the one it is divided by), and the goal as it is printed: comparison,
threshold, unit. The threshold is written in the unit, e.g. ``"20"`` with ``MS``; the measured
value is scaled to the unit before the comparison.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

from benchmarks.common import DASK_EMBEDDED, DASK_SEPARATE, RAY
from benchmarks.printing import print_table


@dataclass(frozen=True)
class Unit:
    """How a figure is scaled for its goal, shown when measured, and named after a threshold."""

    scale: float
    shown: str
    suffix: str = ""

    def show(self, value: Any) -> str:
        """The measured value, scaled and formatted."""
        return self.shown.format(value * self.scale)


RATIO = Unit(1, "{:.3f}")
RATE = Unit(1, "{:,.0f}/s", " msg/s")
MS = Unit(1000, "{:.2f} ms", " ms")
MB = Unit(1e-6, "{:+.2f} MB", " MB")
COUNT = Unit(1, "{}")

COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, "==": operator.eq}


@dataclass(frozen=True)
class Target:
    """One target: ``scenario``'s figure at ``metric`` (over ``per``), ``comparison threshold``."""

    what: str
    scenario: str
    metric: tuple[str, ...]
    comparison: str
    threshold: str
    unit: Unit = RATIO
    per: tuple[str, ...] | None = None

    @property
    def goal(self) -> str:
        """The goal as printed, e.g. ``<= 20 ms`` (an equality shows the threshold alone)."""
        shown = f"{self.threshold}{self.unit.suffix}"
        return shown if self.comparison == "==" else f"{self.comparison} {shown}"

    def value(self, scenarios: dict[str, Any]) -> Any:
        """The figure from the scenarios' results, or ``None`` where it was not measured."""
        value = _get(scenarios, self.scenario, *self.metric)
        if self.per is None or value is None:
            return value
        base = _get(scenarios, self.scenario, *self.per)
        return None if base is None else value / base

    def met(self, value: Any) -> bool:
        """Whether a measured value meets the goal."""
        threshold = float(self.threshold.replace(",", ""))
        return bool(COMPARISONS[self.comparison](value * self.unit.scale, threshold))


def _median(client: str) -> tuple[str, ...]:
    return ("clients", client, "summary_seconds", "median")


def _flood(part: str, *path: str, variant: str = DASK_SEPARATE) -> tuple[str, ...]:
    return (part, "clients", variant, *path)


def _flood_rss(
    part: str, process: str, figure: str = "growth_bytes", variant: str = DASK_SEPARATE
) -> tuple[str, ...]:
    return _flood(part, "rss", process, figure, variant=variant)


FLOOD_READER_ONLY = "reader-only"  # the flood scenario's launcher -> reader variant


RATIO_KEY = "ratio_median_to_subprocess"

# fmt: off
TARGETS = (
    # Target(what,
    #        scenario, metric (path in its results), comparison, threshold[, unit=RATIO][, per])
    Target(
        "launch ratio, embedded cluster",
        "launch", ("clients", DASK_EMBEDDED, RATIO_KEY), "<=", "1.10",
    ),
    Target(
        "launch ratio, separate cluster",
        "launch", ("clients", DASK_SEPARATE, RATIO_KEY), "<=", "1.20",
    ),
    Target(
        "throughput ratio, logs, embedded",
        "throughput", ("logs", "clients", DASK_EMBEDDED, RATIO_KEY), "<=", "1.05",
    ),
    Target(
        "throughput ratio, logs, separate",
        "throughput", ("logs", "clients", DASK_SEPARATE, RATIO_KEY), "<=", "1.05",
    ),
    Target(
        "throughput ratio, custom, embedded",
        "throughput", ("custom", "clients", DASK_EMBEDDED, RATIO_KEY), "<=", "1.05",
    ),
    Target(
        "throughput ratio, custom, separate",
        "throughput", ("custom", "clients", DASK_SEPARATE, RATIO_KEY), "<=", "1.05",
    ),
    Target(
        "raw transport (launcher -> reader)",
        "transport", ("messages_per_second_median",), ">=", "500,000", RATE,
    ),
    Target(
        "latency p50, separate cluster",
        "latency", _median(DASK_SEPARATE), "<=", "20", MS,
    ),
    Target(
        "scheduler RSS growth over the hygiene runs",
        "hygiene", ("rss_growth_bytes",), "<=", "10", MB,
    ),
    Target(
        "session topics left on the scheduler after the hygiene runs",
        "hygiene", ("pipes_topics_end",), "==", "0", COUNT,
    ),
    Target(
        "launch vs PipesRayJobClient, embedded (median / Ray median)",
        "ray", _median(DASK_EMBEDDED), "<", "1", per=_median(RAY),
    ),
    Target(
        "launch vs PipesRayJobClient, separate (median / Ray median)",
        "ray", _median(DASK_SEPARATE), "<", "1", per=_median(RAY),
    ),
    Target(
        "flood stdout (1 GiB): scheduler peak RSS growth",
        "flood", _flood_rss("stdout", "scheduler"), "<=", "64", MB,
    ),
    Target(
        "flood stdout (1 GiB): worker peak RSS growth",
        "flood", _flood_rss("stdout", "worker"), "<=", "64", MB,
    ),
    Target(
        "flood stdout (1 GiB): orchestrator peak RSS growth",
        "flood", _flood_rss("stdout", "orchestrator"), "<=", "64", MB,
    ),
    Target(
        "flood stdout (1 GiB): scheduler RSS after the run - before",
        "flood", _flood_rss("stdout", "scheduler", "after_growth_bytes"), "<=", "16", MB,
    ),
    Target(
        "flood stdout (1 GiB): lines not delivered",
        "flood", _flood("stdout", "lost"), "==", "0", COUNT,
    ),
    Target(
        "flood logs: scheduler peak RSS growth",
        "flood", _flood_rss("logs", "scheduler"), "<=", "64", MB,
    ),
    Target(
        "flood logs: worker peak RSS growth",
        "flood", _flood_rss("logs", "worker"), "<=", "64", MB,
    ),
    Target(
        "flood logs: orchestrator peak RSS growth",
        "flood", _flood_rss("logs", "orchestrator"), "<=", "64", MB,
    ),
    Target(
        "flood logs: scheduler RSS after the run - before",
        "flood", _flood_rss("logs", "scheduler", "after_growth_bytes"), "<=", "16", MB,
    ),
    Target(
        "flood logs: log lines not delivered",
        "flood", _flood("logs", "lost"), "==", "0", COUNT,
    ),
    Target(
        "flood message (48 MiB): orchestrator peak RSS growth / message size",
        "flood", _flood_rss("message", "orchestrator"), "<=", "3", per=("message", "units"),
    ),
    Target(
        "flood message (48 MiB), reader only: orchestrator peak RSS growth / message size",
        "flood", _flood_rss("message", "orchestrator", variant=FLOOD_READER_ONLY), "<=", "3",
        per=("message", "units"),
    ),
    Target(
        "flood message (48 MiB): message not delivered",
        "flood", _flood("message", "lost"), "==", "0", COUNT,
    ),
)
# fmt: on


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def evaluate_targets(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met (``None``: not measured)."""
    out = []
    for target in TARGETS:
        value = target.value(scenarios)
        measured = value is not None and not (isinstance(value, float) and math.isnan(value))
        out.append(
            {
                "target": target.what,
                "goal": target.goal,
                "value": value,
                "shown": target.unit.show(value) if measured else "not measured",
                "met": target.met(value) if measured else None,
            }
        )
    return out


def print_targets(targets: list[dict[str, Any]]) -> None:
    """Print the targets table (as :func:`evaluate_targets` returns it)."""
    rows = [
        [t["target"], t["goal"], t["shown"], {True: "met", False: "MISSED", None: "-"}[t["met"]]]
        for t in targets
    ]
    print_table(["target", "goal", "measured", "status"], rows)
