"""`make bench` keeps working: a quick run of two scenarios completes and writes its JSON.

No timing is asserted (the figures belong to `make bench`); the run must finish, deliver every
message it counts, and stop every process it started.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_run_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--quick",
            "--only",
            "launch,transport",
            "--reps",
            "1",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    launch = results["scenarios"]["launch"]["clients"]
    assert set(launch) == {"subprocess", "dask-embedded", "dask-separate"}
    assert all(c["summary_seconds"]["n"] == 1 for c in launch.values())
    transport = results["scenarios"]["transport"]
    assert transport["messages"] > 0
    assert set(transport["variants"]) == {
        f"{kind}/{mode}"
        for kind in ("dask-embedded", "dask-separate")
        for mode in ("lines", "parsed")
    }
    assert "total elapsed" in proc.stdout
