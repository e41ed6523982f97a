"""Statistics and timing: percentiles, summaries, ratios, interleaving, one timed call."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, min, median, p90, max and mean of a sample."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "median": percentile(values, 50),
        "p90": percentile(values, 90),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or ``None`` when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0 or math.isnan(baseline):
        return None
    return value / baseline


def paired_ratio(values: Sequence[float], baseline: Sequence[float]) -> float | None:
    """The median of the per-rep ratios ``values[i] / baseline[i]`` (samples of the same rep).

    Interleaved clients share each rep's machine state, so this follows what the client adds
    where the machine's speed drifts between reps, which moves a ratio of medians.
    """
    pairs = [v / b for v, b in zip(values, baseline, strict=False) if b > 0]
    return percentile(pairs, 50) if pairs else None


def interleave(reps: int, names: Sequence[T]) -> Iterator[tuple[int, T]]:
    """Yield ``(rep, name)`` for every rep, rotating the order each rep to spread order effects."""
    n = len(names)
    for rep in range(reps):
        for i in range(n):
            yield rep, names[(rep + i) % n]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` after a garbage collection (not timed); return (seconds, its result)."""
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value
