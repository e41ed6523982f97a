"""What the benchmark prints: formatted figures, aligned tables, wrapped lines."""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any


def fmt_seconds(value: float | None) -> str:
    """Seconds as ms below 10 s (``812.4 ms``), else as seconds (``12.31 s``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value < 10:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def fmt_rate(value: float | None) -> str:
    """Messages per second with thousands separators."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f}/s"


def fmt_ratio(value: float | None) -> str:
    """A ratio as ``1.07x``."""
    return "-" if value is None else f"{value:.2f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print an aligned plain-text table (first column left-aligned, the rest right-aligned)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  " + "  ".join(parts)

    print(line(headers))
    print("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    sys.stdout.flush()


def say(text: str = "", width: int = 100) -> None:
    """Print and flush (output interleaves with child processes'); wrap lines over ``width``."""
    lines = []
    for line in text.split("\n"):
        indent = line[: len(line) - len(line.lstrip())]
        if len(line) <= width or " | " in line:  # per-rep lines stay whole
            lines.append(line)
            continue
        lines.append(
            textwrap.fill(
                line.strip(),
                width=width,
                initial_indent=indent,
                subsequent_indent=indent + "  ",
                break_on_hyphens=False,
            )
        )
    print("\n".join(lines), flush=True)


def print_client_table(results: Mapping[str, Mapping[str, Any]], *, rates: bool = False) -> None:
    """Print client, n, min, median, p90, max, (messages/s), ratio and delta to subprocess.

    ``results`` as :func:`benchmarks.bench.client_results` returns them.
    """
    headers = ["client", "n", "min", "median", "p90", "max"]
    if rates:
        headers.append("msg/s (median)")
    headers += ["ratio vs subprocess", "delta median"]
    rows = []
    for name, entry in results.items():
        s = entry["summary_seconds"]
        row = [
            name,
            str(s.get("n", 0)),
            fmt_seconds(s.get("min")),
            fmt_seconds(s.get("median")),
            fmt_seconds(s.get("p90")),
            fmt_seconds(s.get("max")),
        ]
        if rates:
            row.append(fmt_rate(entry.get("messages_per_second_median")))
        delta = entry.get("delta_median_seconds")
        row += [
            fmt_ratio(entry.get("ratio_median_to_subprocess")),
            "-" if delta is None else f"{delta * 1000:+.1f} ms",
        ]
        rows.append(row)
    print_table(headers, rows)
    for name, entry in results.items():
        invalid = entry.get("invalid_runs") or []
        if invalid:
            total = len(invalid) + int(entry["summary_seconds"].get("n", 0))
            say(
                f"  {name}: {len(invalid)} of {total} runs discarded as invalid and re-run "
                "(see the INVALID lines above; their times are in the JSON under invalid_runs)"
            )
