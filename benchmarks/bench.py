"""The benchmark session and its Dagster runs: instances, clients, interleaved measurement.

:class:`Bench` holds the options and the shared separate cluster; :func:`measure_interleaved`
times every client's runs, interleaved; :func:`client_results` summarizes them.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.common import CLIENT_LABELS, DASK_EMBEDDED, DASK_SEPARATE, STOP, SUBPROCESS
from benchmarks.printing import fmt_seconds, say
from benchmarks.stats import interleave, ratio, summarize, timed
from dagster_pipes_ext_tests.support.cluster_procs import PlainCluster


@contextlib.contextmanager
def dagster_instance(kind: str) -> Iterator[Any]:
    """A Dagster instance for one scenario: ``local_temp`` (SQLite on disk) or ``ephemeral``."""
    from dagster import DagsterInstance

    if kind == "ephemeral":
        with DagsterInstance.ephemeral() as instance:
            yield instance
        return
    with (
        tempfile.TemporaryDirectory(prefix="pipes-bench-home-") as home,
        DagsterInstance.local_temp(home) as instance,
    ):
        yield instance


def materialization_metadata(result: Any, node: str) -> Mapping[str, Any]:
    """The metadata values of the (single) materialization of ``node`` in ``result``."""
    mats = result.asset_materializations_for_node(node)
    if len(mats) != 1:
        raise RuntimeError(f"expected one materialization of {node}, got {len(mats)}")
    return {k: getattr(v, "value", v) for k, v in mats[0].metadata.items()}


def user_logs(instance: Any, run_id: str, prefix: str) -> list[Any]:
    """The run's plain log entries (not Dagster events) whose message starts with ``prefix``."""
    return [
        e
        for e in instance.all_logs(run_id)
        if not e.is_dagster_event and (e.user_message or "").startswith(prefix)
    ]


@dataclass
class Bench:
    """Options of one benchmark session and the resources its scenarios share.

    ``shared_cluster()`` starts one separate ``dask scheduler`` + ``dask worker`` on first use;
    the launch, throughput, latency, fan-out and Ray scenarios all use it. ``close()`` stops it.
    """

    quick: bool = False
    reps_override: int | None = None
    instance_kind: str = "ephemeral"
    console_log_level: str = "WARNING"
    _shared: PlainCluster | None = None

    def reps(self, default: int, quick: int) -> int:
        """Repetitions for a scenario: ``--reps`` if given, else its quick or full default."""
        if self.reps_override is not None:
            return self.reps_override
        return quick if self.quick else default

    def shared_cluster(self) -> PlainCluster:
        """The session's separate cluster (scheduler + one 4-thread worker), started lazily."""
        if self._shared is None:
            say("  (starting the shared separate cluster: dask scheduler + dask worker)")
            self._shared = PlainCluster.start(nthreads=4, name="bench-shared")
            say(f"  (shared separate cluster at {self._shared.address})")
        return self._shared

    def clients(self, names: Sequence[str]) -> dict[str, Any]:
        """Pipes clients by name (``subprocess``, ``dask-embedded``, ``dask-separate``)."""
        from dagster import PipesSubprocessClient

        from dagster_pipes_ext import PipesDaskClient

        made: dict[str, Any] = {}
        for name in names:
            if name == SUBPROCESS:
                made[name] = PipesSubprocessClient()
            elif name == DASK_EMBEDDED:
                made[name] = PipesDaskClient()
            elif name == DASK_SEPARATE:
                made[name] = PipesDaskClient(scheduler_address=self.shared_cluster().address)
            else:
                raise ValueError(f"unknown client {name!r}")
        return made

    def materialize(self, assets: Sequence[Any], client: Any, instance: Any) -> Any:
        """``materialize(assets)`` with ``client`` as the ``pipes`` resource; raise if it failed."""
        from dagster import materialize

        result = materialize(
            list(assets),
            resources={"pipes": client},
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": self.console_log_level}}}},
        )
        if not result.success:
            raise RuntimeError(f"benchmark run {result.run_id} failed")
        return result

    def close(self) -> None:
        """Close cached Dask clients (and the embedded cluster); stop the shared cluster."""
        from dagster_pipes_ext import close_cached_clients

        try:
            close_cached_clients()
        finally:
            if self._shared is not None:
                self._shared.stop()
                self._shared = None


class InvalidSample(Exception):
    """A run that completed but whose result is wrong (e.g. messages lost): not a valid sample."""


def measure_interleaved(
    clients: Mapping[str, Any],
    reps: int,
    run_once: Callable[[str, Any], Any],
    check: Callable[[str, Any], dict[str, Any] | None] | None = None,
    warmup: Callable[[str, Any], Any] | None = None,
    retries: int = 2,
) -> dict[str, dict[str, Any]]:
    """Time ``run_once(name, client)`` for every client, ``reps`` times, interleaved.

    Each client first gets one untimed ``warmup`` call. ``check(name, value)`` runs after each
    timed call, untimed, to verify the result and may return extra per-sample facts. If it
    raises :class:`InvalidSample`, the run is recorded under ``invalid`` (not as a sample) and
    run again, up to ``retries`` times; any other exception aborts the measurement. Returns
    ``{name: {"samples_seconds": [...], "facts": [...], "invalid": [...]}}``.
    """
    out: dict[str, dict[str, Any]] = {
        n: {"samples_seconds": [], "facts": [], "invalid": []} for n in clients
    }
    if warmup is not None:
        for name, client in clients.items():
            STOP.check()
            warmup(name, client)
    line: list[str] = []
    for rep, name in interleave(reps, list(clients)):
        for _attempt in range(retries + 1):
            STOP.check()
            seconds, value = timed(lambda name=name: run_once(name, clients[name]))
            STOP.check()
            try:
                facts = check(name, value) if check is not None else None
            except InvalidSample as exc:
                out[name]["invalid"].append({"seconds": seconds, "reason": str(exc)})
                say(f"    INVALID {name} run ({fmt_seconds(seconds)}): {exc}")
                continue
            out[name]["samples_seconds"].append(seconds)
            out[name]["facts"].append(facts or {})
            line.append(f"{name} {fmt_seconds(seconds)}")
            break
        else:
            line.append(f"{name} invalid")
        if len(line) == len(clients):
            say(f"    rep {rep + 1}/{reps}: " + " | ".join(line))
            line = []
    return out


def client_results(
    measured: Mapping[str, Mapping[str, Any]],
    *,
    messages: int | None = None,
    baseline: str = SUBPROCESS,
) -> dict[str, dict[str, Any]]:
    """Per-client raw samples, summary, messages/s and ratio of medians to ``baseline``."""
    base = measured.get(baseline)
    base_median = summarize(base["samples_seconds"]).get("median") if base else None
    results: dict[str, dict[str, Any]] = {}
    for name, data in measured.items():
        samples = list(data["samples_seconds"])
        summary = summarize(samples)
        median = summary.get("median")
        entry: dict[str, Any] = {
            "client": CLIENT_LABELS.get(name, name),
            "samples_seconds": samples,
            "summary_seconds": summary,
            "ratio_median_to_subprocess": ratio(median, base_median),
            "delta_median_seconds": (
                None if median is None or base_median is None else median - base_median
            ),
        }
        if messages:
            entry["messages"] = messages
            entry["messages_per_second_samples"] = [messages / s for s in samples]
            entry["messages_per_second_median"] = messages / median if median else None
        if any(data.get("facts") or []):
            entry["facts"] = list(data["facts"])
        if data.get("invalid"):
            entry["invalid_runs"] = list(data["invalid"])
        results[name] = entry
    return results
