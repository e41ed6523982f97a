"""What a Dask scheduler process holds: its RSS, topics, events, tasks, clients, Dask's logs.

:func:`read_scheduler` is the one reading the scenarios take. Its scheduler half,
:func:`scheduler_state`, runs on the scheduler (``run_on_scheduler``) and uses only the standard
library: the scheduler process cannot import this repository, so this module travels by value.
"""

import ctypes
import gc
import os
import sys
import time
from typing import Any

import cloudpickle
import psutil

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def scheduler_state(dask_scheduler=None, collect: bool = True, trim: bool = False) -> dict:
    """Topics, events, tasks and clients the scheduler holds; optionally gc/malloc_trim first.

    Topics are the keys of ``scheduler._broker._topics`` (every name ever published or
    subscribed to, each with its retained events); the Pipes sessions' are those starting with
    ``dagster-pipes/``.
    """
    if collect:
        gc.collect()
    trimmed = None
    if trim:
        try:
            trimmed = bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
        except (OSError, AttributeError):
            trimmed = None
    broker = getattr(dask_scheduler, "_broker", None)
    topics = dict(getattr(broker, "_topics", {}) or {})
    events_ext = getattr(dask_scheduler, "extensions", {}).get("events")
    event_names = list(getattr(events_ext, "_events", {}) or {})
    retained_by_topic = {
        str(name): len(getattr(topic, "events", ()) or ()) for name, topic in topics.items()
    }
    retained = sum(retained_by_topic.values())
    spans = getattr(dask_scheduler, "extensions", {}).get("spans")

    def logged(comms: Any) -> int:
        return sum(len(getattr(b, "recent_message_log", ())) for b in (comms or {}).values())

    return {
        "pid": os.getpid(),
        # Dask's own bounded debug logs (distributed.admin.low-level-log-length entries each;
        # the transition log: distributed.admin.transition-log-length) and its spans.
        "batched_log_to_workers": logged(getattr(dask_scheduler, "stream_comms", None)),
        "batched_log_to_clients": logged(getattr(dask_scheduler, "client_comms", None)),
        "transition_log": len(getattr(dask_scheduler, "transition_log", ()) or ()),
        "computations": len(getattr(dask_scheduler, "computations", ()) or ()),
        "spans": len(getattr(spans, "spans", {}) or {}),
        "topics_total": len(topics),
        "topics_pipes": sum(1 for t in topics if str(t).startswith("dagster-pipes/")),
        "topic_names_non_pipes": sorted(
            str(t) for t in topics if not str(t).startswith("dagster-pipes/")
        ),
        "retained_events_total": retained,
        "retained_events_non_pipes": {
            k: v for k, v in retained_by_topic.items() if not k.startswith("dagster-pipes/")
        },
        "events_extension_names": len(event_names),
        "events_extension_pipes": sum(1 for e in event_names if "dagster-pipes" in str(e)),
        "tasks": len(getattr(dask_scheduler, "tasks", {}) or {}),
        "clients": len(getattr(dask_scheduler, "clients", {}) or {}),
        "malloc_trimmed": trimmed,
    }


def read_scheduler(
    dask_client: Any, pid: int, label: str, runs: int, *, trim: bool = False
) -> dict[str, Any]:
    """One reading: :func:`scheduler_state` (after a ``gc.collect()``) and the RSS of ``pid``.

    ``pid`` is the scheduler's process (psutil reads its RSS from here, after the collection);
    ``label`` and ``runs`` say where in the scenario the reading was taken.
    """
    state = dask_client.run_on_scheduler(scheduler_state, collect=True, trim=trim)
    rss = psutil.Process(pid).memory_info().rss
    return {"label": label, "runs": runs, "rss_bytes": rss, "time": time.time(), **state}
