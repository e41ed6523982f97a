"""Start and stop a real ``dagster dev`` (webserver + daemon) on 127.0.0.1; query its GraphQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from dagster_pipes_ext_tests.support.processes import kill_survivors, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]

# Loopback requests never go through a proxy, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_LOCATIONS = """
query Locations {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name } }
          ... on PythonError { message }
        }
      }
    }
  }
}
"""

_METADATA_FRAGMENT = """
fragment Entry on MetadataEntry {
  label
  __typename
  ... on TextMetadataEntry { text }
  ... on IntMetadataEntry { intValue intRepr }
  ... on FloatMetadataEntry { floatValue }
  ... on BoolMetadataEntry { boolValue }
  ... on UrlMetadataEntry { url }
  ... on PathMetadataEntry { path }
  ... on JsonMetadataEntry { jsonString }
  ... on MarkdownMetadataEntry { mdStr }
}
"""

_RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status tags { key value } }
  }
}
"""

_RUN_EVENTS = """
query RunEvents($runId: ID!, $after: String) {
  logsForRun(runId: $runId, afterCursor: $after, limit: 500) {
    __typename
    ... on EventConnection {
      cursor
      hasMore
      events {
        __typename
        ... on MessageEvent { message level stepKey }
        ... on LogsCapturedEvent { fileKey stepKeys }
      }
    }
  }
}
"""

_LATEST_MATERIALIZATION = (
    _METADATA_FRAGMENT
    + """
query Latest($path: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 1, partitions: $partitions) {
        runId
        partition
        metadataEntries { ...Entry }
      }
    }
  }
}
"""
)

_LATEST_CHECK = (
    _METADATA_FRAGMENT
    + """
query Check($path: [String!]!, $check: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $check, limit: 1) {
    runId
    status
    evaluation { success severity metadataEntries { ...Entry } }
  }
}
"""
)

_CAPTURED_LOGS = """
query Captured($logKey: [String!]!) {
  capturedLogs(logKey: $logKey) { stdout stderr }
}
"""


class GraphQLError(RuntimeError):
    """The webserver answered a GraphQL request with errors."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metadata_values(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """GraphQL metadata entries as ``{label: python value}``."""
    values: dict[str, Any] = {}
    for entry in entries:
        kind = entry["__typename"]
        if kind == "IntMetadataEntry":
            value = entry["intValue"] if entry["intValue"] is not None else int(entry["intRepr"])
        elif kind == "JsonMetadataEntry":
            value = json.loads(entry["jsonString"])
        else:
            value = next((v for k, v in entry.items() if k not in ("label", "__typename")), None)
        values[entry["label"]] = value
    return values


@dataclass
class DagsterDev:
    """A ``dagster dev`` process tree started by the tests, with its home and data folder."""

    proc: subprocess.Popen
    port: int
    home: Path
    data_dir: Path
    log_path: Path
    location_name: str = ""
    repository_name: str = ""
    _seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- GraphQL ------------------------------------------------------------------------------

    def graphql(
        self, query: str, variables: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """POST a query to ``/graphql``; return its ``data`` (raise GraphQLError on errors)."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with _OPENER.open(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise GraphQLError(json.dumps(payload["errors"])[:2000])
        return payload["data"]

    def run(self, run_id: str) -> dict[str, Any]:
        """``{"status": ..., "tags": {key: value}}`` of a run."""
        run = self.graphql(_RUN, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return {"status": run["status"], "tags": {t["key"]: t["value"] for t in run["tags"]}}

    def run_events(self, run_id: str) -> list[dict[str, Any]]:
        """Every event of a run's event log, in order."""
        events: list[dict[str, Any]] = []
        after = None
        for _ in range(100):
            page = self.graphql(_RUN_EVENTS, {"runId": run_id, "after": after})["logsForRun"]
            assert page["__typename"] == "EventConnection", page
            events += page["events"]
            after = page["cursor"]
            if not page["hasMore"]:
                return events
        raise AssertionError(f"run {run_id} has more than 100 pages of events")

    def latest_materialization(
        self, asset: str, partition: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The asset's (partition's) latest materialization and its metadata values."""
        data = self.graphql(
            _LATEST_MATERIALIZATION,
            {"path": [asset], "partitions": [partition] if partition else None},
        )["assetOrError"]
        assert data["__typename"] == "Asset", data
        [latest] = data["assetMaterializations"]
        return latest, metadata_values(latest["metadataEntries"])

    def latest_check_execution(self, asset: str, check: str) -> dict[str, Any]:
        """The latest execution of an asset check, its metadata as ``metadata`` values."""
        [execution] = self.graphql(_LATEST_CHECK, {"path": [asset], "check": check})[
            "assetCheckExecutions"
        ]
        evaluation = execution["evaluation"] or {}
        return {
            **execution,
            "metadata": metadata_values(evaluation.get("metadataEntries", [])),
        }

    def captured_logs(self, run_id: str, step_key: str) -> tuple[str, str]:
        """The (stdout, stderr) compute logs of a step's process."""
        [file_key] = [
            e["fileKey"]
            for e in self.run_events(run_id)
            if e["__typename"] == "LogsCapturedEvent" and step_key in e["stepKeys"]
        ]
        logs = self.graphql(_CAPTURED_LOGS, {"logKey": [run_id, "compute_logs", file_key]})
        return logs["capturedLogs"]["stdout"] or "", logs["capturedLogs"]["stderr"] or ""

    def mark_community_dialog_seen(self) -> None:
        """What the UI's "Skip" on its one-time "Join the Dagster community" dialog does."""
        self.graphql("mutation { setNuxSeen }")

    # -- start-up -----------------------------------------------------------------------------

    def _location_loaded(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"dagster dev exited with code {self.proc.returncode}:\n{self.log_tail()}"
            )
        self.remember_processes()
        try:
            data = self.graphql(_LOCATIONS, timeout=10)
        except (OSError, urllib.error.URLError, GraphQLError, ValueError):
            return False
        for entry in data["workspaceOrError"].get("locationEntries", []):
            location = entry.get("locationOrLoadError") or {}
            if location.get("__typename") == "PythonError":
                raise RuntimeError(f"code location {entry['name']} failed: {location['message']}")
            if (
                entry["loadStatus"] == "LOADED"
                and location.get("__typename") == "RepositoryLocation"
            ):
                self.location_name = entry["name"]
                self.repository_name = location["repositories"][0]["name"]
                return True
        return False

    def wait_until_loaded(self, timeout: float = 180.0) -> None:
        """Wait for the webserver to answer and the code location to be loaded."""
        try:
            wait_for(self._location_loaded, timeout=timeout, what="the code location", interval=1)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; dagster dev log:\n{self.log_tail()}") from None

    # -- processes ----------------------------------------------------------------------------

    def remember_processes(self) -> None:
        """Record every process now in the ``dagster dev`` tree, for stop() to check on."""
        try:
            root = psutil.Process(self.proc.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in family:
            self._seen.setdefault(p.pid, p)

    def processes_with_home(self) -> list[psutil.Process]:
        """Live processes whose environment has this instance's DAGSTER_HOME.

        Everything ``dagster dev`` starts inherits it: webserver, daemon, code server, run and
        step processes and the external commands, even those orphaned or in their own session.
        """
        home = str(self.home)
        found = []
        for p in psutil.process_iter():
            try:
                if p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                if p.environ().get("DAGSTER_HOME") == home:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def _leftovers(self) -> list[psutil.Process]:
        alive = {p.pid: p for p in self.processes_with_home()}
        for p in self._seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.setdefault(p.pid, p)
            except psutil.NoSuchProcess:
                pass
        return list(alive.values())

    def stop(self, timeout: float = 45.0) -> list[str]:
        """SIGINT to the process group, wait; then SIGKILL what is left of it, each by PID.

        Returns descriptions of the processes that needed SIGKILL.
        """
        self.remember_processes()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        # Children get a moment after their parent to finish their own shutdown.
        _, alive = psutil.wait_procs(self._leftovers(), timeout=10)
        killed = kill_survivors(alive)
        psutil.wait_procs(alive, timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        return killed


def start_dagster_dev(
    workdir: Path, module: str = "example_project.definitions", env: dict[str, str] | None = None
) -> DagsterDev:
    """Start ``dagster dev -m <module>`` on a free 127.0.0.1 port with a fresh DAGSTER_HOME.

    ``workdir`` receives ``dagster_home/`` (telemetry off), ``data/`` (the example's
    ``EXAMPLE_PROJECT_DATA_DIR``) and ``dagster_dev.log``. The process leads its own process
    group, so ``stop()`` can interrupt the whole tree at once. Does not wait for it to load.
    """
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    log_path = workdir / "dagster_dev.log"
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    full_env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "EXAMPLE_PROJECT_DATA_DIR": str(data_dir),
        # External commands say "python": this environment's interpreter.
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        **(env or {}),
    }
    full_env.pop("DASK_SCHEDULER_ADDRESS", None)
    args = [sys.executable, "-m", "dagster", "dev", "-m", module]
    args += ["-h", "127.0.0.1", "-p", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return DagsterDev(proc=proc, port=port, home=home, data_dir=data_dir, log_path=log_path)
