"""The flood scenario's tables: time and delivery per variant, then memory per process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.printing import fmt_rate, fmt_ratio, fmt_seconds, print_table


def _mb(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:+.1f} MB" if signed else f"{value / 1e6:.1f} MB"


def print_part(part: Mapping[str, Any], unit_name: str) -> None:
    """Print one workload's result: the times table, then the memory table."""
    _print_times(part, unit_name)
    # the message (in bytes): growth also as a multiple of its size
    _print_memory(part, per_size=unit_name == "bytes")


def _print_times(part: Mapping[str, Any], unit_name: str) -> None:
    """Per variant: runs, median wall time, rate, ratio to subprocess, delivery, failed runs."""
    rate_header = "MB/s" if unit_name == "bytes" else "lines/s"
    rows = []
    for name, entry in part["clients"].items():
        rate = entry.get("messages_per_second_median")
        if rate is None:
            shown_rate = "-"
        else:
            shown_rate = f"{rate / 1e6:.1f}" if unit_name == "bytes" else fmt_rate(rate)
        facts = entry.get("facts") or [{}]
        delivered = facts[-1].get("delivered")
        expected = facts[-1].get("expected")
        rows.append(
            [
                name,
                str(entry["summary_seconds"].get("n", 0)),
                fmt_seconds(entry["summary_seconds"].get("median")),
                shown_rate,
                fmt_ratio(entry.get("ratio_median_to_subprocess")),
                "-" if delivered is None else f"{delivered:,}/{expected:,}",
                str(entry.get("failed_runs", 0)),
            ]
        )
    print_table(
        [
            "client",
            "n",
            "wall (median)",
            rate_header,
            "ratio vs subprocess",
            "delivered (last run)",
            "failed runs",
        ],
        rows,
    )


def _print_memory(part: Mapping[str, Any], *, per_size: bool) -> None:
    """Per variant and process, the RSS readings (and, ``per_size``, growth / size)."""
    rows = []
    for name, entry in part["clients"].items():
        for process, r in entry["rss"].items():
            row = [
                f"{name} / {process}",
                _mb(r["base_bytes"]),
                _mb(r["peak_bytes"]),
                _mb(r["growth_bytes"], signed=True),
                _mb(r["hwm_growth_bytes"], signed=True),
                _mb(r["after_growth_bytes"], signed=True),
                _mb(r.get("after_trim_growth_bytes"), signed=True),
            ]
            if per_size:
                row.append(f"{r['growth_bytes'] / part['units']:.2f}x")
            rows.append(row)
    headers = [
        "client / process",
        "base RSS",
        "peak (50 ms)",
        "growth",
        "growth (VmHWM)",
        "after - base",
        "after trim",
    ]
    print_table([*headers, "growth / size"] if per_size else headers, rows)
