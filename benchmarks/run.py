"""Run the PipesDaskClient benchmark suite: ``make bench`` or ``python benchmarks/run.py``.

Every scenario runs every client in this one process, interleaved, and prints min/median (and
p90/max where relevant) per client and the ratio to ``PipesSubprocessClient``; then the targets
and whether each is met. The results (machine description, raw samples, summaries, targets) are
written as JSON (``benchmarks/results/latest.json`` by default). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from benchmarks.bench import Bench
from benchmarks.printing import say
from benchmarks.targets import evaluate_targets, print_targets

MODULES = {
    "launch": "benchmarks.scenarios.launch",
    "throughput": "benchmarks.scenarios.throughput",
    "transport": "benchmarks.scenarios.transport",
    "latency": "benchmarks.scenarios.latency",
    "fanout": "benchmarks.scenarios.fanout",
    "hygiene": "benchmarks.scenarios.hygiene",
    "ray": "benchmarks.scenarios.ray_peer",
    "flood": "benchmarks.scenarios.flood",
}
SCENARIOS = tuple(MODULES)  # in the order they run
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark PipesDaskClient against PipesSubprocessClient (and dagster-ray)."
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="repetitions per client for every scenario (hygiene: number of runs), "
        "overriding each scenario's default",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a ~3-minute smoke run with tiny sizes and few reps (figures indicative only)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON results path (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--instance",
        choices=("ephemeral", "local_temp"),
        default="ephemeral",
        help="Dagster instance for the in-process scenarios: ephemeral (in memory, what "
        "materialize() uses without an instance; default) or local_temp (SQLite on disk with "
        "compute log capture, like `dagster dev`: ~8 ms per event-log write here, so the 10,000 "
        "logs take over a minute per run). Fan-out always uses local_temp.",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as set: every new Python process (step processes, "
        "Dask, Ray) then compiles Dagster from source",
    )
    parser.add_argument(
        "--console-log-level",
        default="WARNING",
        help="level of Dagster's console logger in the benchmarked runs (default WARNING, so "
        "runs do not print every event; the event log gets everything regardless)",
    )
    parser.add_argument(
        "--flood-log-lines",
        type=int,
        default=None,
        metavar="N",
        help="context.log lines of the flood scenario's log workload (default 2,000,000; "
        "5,000 with --quick). Dagster writes each to the SQLite event log at ~200-500 per "
        "second here, so the default takes about 1-3 hours per client",
    )
    parser.add_argument(
        "--flood-workloads",
        default=None,
        metavar="LIST",
        help="comma-separated workloads of the flood scenario (stdout,message,logs; default all)",
    )
    parser.add_argument(
        "--flood-variants",
        default=None,
        metavar="LIST",
        help="comma-separated variants of the flood scenario (subprocess, dask-separate, "
        "reader-only, dagster-only; default all): e.g. the 2,000,000-line log workload for "
        "dask-separate alone, without the hours subprocess takes to write the same lines",
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {','.join(SCENARIOS)}")
    args.only = [s for s in SCENARIOS if s in chosen]
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.flood_log_lines is not None and args.flood_log_lines < 1:
        parser.error("--flood-log-lines must be at least 1")
    return args


# -- main ---------------------------------------------------------------------------------------


def _write(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str, allow_nan=True))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, print the tables and targets, write the JSON."""
    args = parse_args(argv)
    env_changes = common.prepare_environment(bytecode_cache=not args.no_bytecode_cache)
    from dagster import DagsterExecutionInterruptedError

    warnings.filterwarnings("ignore")  # Dagster's preview/beta warnings, once per run
    common.STOP.install()

    bench = Bench(
        quick=args.quick,
        reps_override=args.reps,
        instance_kind=args.instance,
        console_log_level=args.console_log_level,
    )
    machine = common.machine_info()
    began = time.monotonic()
    payload: dict[str, Any] = {
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "argv": sys.argv[1:] if argv is None else argv,
        "options": {
            "scenarios": args.only,
            "reps_override": args.reps,
            "quick": args.quick,
            "instance": args.instance,
            "console_log_level": args.console_log_level,
            "flood_log_lines": args.flood_log_lines,
            "flood_workloads": args.flood_workloads,
            "flood_variants": args.flood_variants,
            "environment_changes": env_changes,
        },
        "machine": machine,
        "scenarios": {},
        "targets": [],
    }
    versions = machine["versions"]
    say(
        f"PipesDaskClient benchmarks — {machine['cpu_count']} CPU ({machine['cpu_model']}), "
        f"{machine['ram_bytes'] / 2**30:.1f} GiB RAM, Python {machine['python']}, "
        f"dagster {versions['dagster']}, distributed {versions['distributed']}, "
        f"ray {versions['ray'] or '-'}, dagster-ray {versions['dagster-ray'] or '-'}"
    )
    say(
        f"scenarios: {', '.join(args.only)}; instance: {args.instance}; console log level: "
        f"{args.console_log_level}{'; QUICK smoke run' if args.quick else ''}"
    )
    say(
        "all clients run in this process, interleaved (order rotated each rep); times are "
        "wall-clock (time.perf_counter) of whole runs; ratio = client median / subprocess median"
    )
    if "bytecode_cache" in env_changes:
        say(
            "PYTHONDONTWRITEBYTECODE was set: bytecode is cached under "
            f"{env_changes['bytecode_cache']} for this run and its child processes"
        )
    interrupted = False
    try:
        for name in args.only:
            module_name = MODULES[name]
            say()
            started = time.monotonic()
            try:
                module = importlib.import_module(module_name)
                configure = getattr(module, "configure", None)
                if configure is not None:  # a scenario's own command-line options
                    configure(args)
                say(f"== {module.TITLE}")
                result: dict[str, Any] = module.run(bench)
            except (KeyboardInterrupt, DagsterExecutionInterruptedError):
                raise
            except Exception as exc:
                traceback.print_exc()
                say(f"  FAILED: {type(exc).__name__}: {exc}")
                result = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
            result["elapsed_seconds"] = time.monotonic() - started
            payload["scenarios"][name] = result
            say(f"  ({name}: {result['elapsed_seconds']:.1f} s)")
            _write(args.out, payload)
            common.STOP.check()
    except (KeyboardInterrupt, DagsterExecutionInterruptedError):
        # Inside a run, Dagster turns SIGINT/SIGTERM into DagsterExecutionInterruptedError.
        interrupted = True
        say("\ninterrupted: stopping every process the benchmark started")
    finally:
        bench.close()
        payload["elapsed_seconds"] = time.monotonic() - began
        payload["interrupted"] = interrupted
        payload["targets"] = evaluate_targets(payload["scenarios"])
        _write(args.out, payload)

    say()
    say("== Targets")
    if args.quick or args.reps is not None:
        say(
            "  (sizes or reps differ from the defaults the targets are defined for: "
            "indicative only)"
        )
    print_targets(payload["targets"])
    say()
    say(f"results written to {args.out}")
    say(f"total elapsed: {payload['elapsed_seconds']:.1f} s")
    failed = [n for n, r in payload["scenarios"].items() if "error" in r]
    if failed:
        say(f"scenarios that failed: {', '.join(failed)}")
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
