"""Scenario 2 — message throughput through the whole client.

Two measurements, each a whole ``materialize()`` of one asset:

* ``logs``: the external script sends N ``context.log.info`` messages (Dagster turns each into
  an event-log entry, so Dagster's own log handling sets the pace);
* ``custom``: the external script sends M ``context.report_custom_message`` messages (kept in
  memory by Dagster's Pipes handler, so the transport sets the pace).

Each run is checked: the run's event log must hold exactly N ``bench-log`` entries, and the
client must have received exactly M custom messages. A run that lost messages is not a sample:
it is recorded as invalid (with the run's Pipes framework errors) and run again, up to 3 times.
(``PipesSubprocessClient`` does lose custom messages now and then at 100,000: Dagster's
``PipesFileMessageReader`` can read a line the writer has not finished, ``json.loads`` fails,
and its reader thread stops for the rest of the run, which still succeeds.)
"""

from __future__ import annotations

from typing import Any

from benchmarks.assets import pipes_asset, trivial_asset
from benchmarks.bench import (
    Bench,
    InvalidSample,
    client_results,
    dagster_instance,
    materialization_metadata,
    measure_interleaved,
    user_logs,
)
from benchmarks.common import PIPES_CLIENTS, command
from benchmarks.printing import print_client_table, say

TITLE = "2. Message throughput (context.log and custom messages, whole materialize())"


def _framework_errors(instance: Any, run_id: str) -> str:
    """The run's Pipes framework exceptions, briefly (why messages went missing)."""
    found = []
    for entry in instance.all_logs(run_id):
        message = entry.user_message or ""
        if "framework exception" in message:
            found.append(message.splitlines()[0][:120])
    return "; ".join(found)


def _measure(
    bench: Bench, kind: str, count: int, reps: int, clients: dict[str, Any], instance: Any
) -> dict[str, Any]:
    name = f"bench_{kind}"
    script = "logs.py" if kind == "logs" else "custom.py"
    target = pipes_asset(name, command(script, count))
    warm = trivial_asset()

    def once(_client_name: str, client: Any) -> Any:
        return bench.materialize([target], client, instance)

    def warmup(_client_name: str, client: Any) -> Any:
        return bench.materialize([warm], client, instance)

    def check(client_name: str, result: Any) -> dict[str, Any]:
        meta = materialization_metadata(result, name)
        if kind == "logs":
            received = len(user_logs(instance, result.run_id, "bench-log "))
        else:
            received = int(meta.get("bench/custom", -1))
        if received != count:
            cause = _framework_errors(instance, result.run_id)
            raise InvalidSample(
                f"{kind} run {result.run_id[:8]} delivered {received:,} of {count:,} messages"
                + (f" ({cause})" if cause else "")
            )
        return {"run_id": result.run_id, "received": received}

    say(f"  {kind}: {count:,} messages, {reps} reps per client, interleaved")
    measured = measure_interleaved(clients, reps, once, check=check, warmup=warmup, retries=3)
    results = client_results(measured, messages=count)
    print_client_table(results, rates=True)
    return {"messages": count, "reps": reps, "clients": results}


def run(bench: Bench) -> dict[str, Any]:
    """Measure the log and the custom-message floods per client."""
    log_count = 500 if bench.quick else 10_000
    custom_count = 5_000 if bench.quick else 100_000
    log_reps = bench.reps(default=2, quick=1)
    custom_reps = bench.reps(default=3, quick=1)
    clients = bench.clients(PIPES_CLIENTS)
    say("  1 untimed warm-up run (trivial asset) per client first; counts verified per run")
    parts: dict[str, Any] = {}
    with dagster_instance(bench.instance_kind) as instance:
        for kind, count, reps in (
            ("logs", log_count, log_reps),
            ("custom", custom_count, custom_reps),
        ):
            try:
                parts[kind] = _measure(bench, kind, count, reps, clients, instance)
            except Exception as exc:  # keep the other measurement
                say(f"  {kind} FAILED: {type(exc).__name__}: {exc}")
                parts[kind] = {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "title": TITLE,
        "method": (
            "materialize([asset]) whose external script sends N context.log.info messages "
            "(logs) or N context.report_custom_message messages (custom), then reports one "
            "materialization; wall time of the whole call; messages/s = N / time. Every run's "
            "delivered count is checked (event-log entries / get_custom_messages())."
        ),
        "params": {"instance": bench.instance_kind},
        "logs": parts["logs"],
        "custom": parts["custom"],
    }
