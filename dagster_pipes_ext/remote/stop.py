"""When the launcher stops the command: the stop event, an abandoned task, a closing worker."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from dagster_pipes_ext.remote import dask_compat
from dagster_pipes_ext.remote.process import Supervised, signal_group
from dagster_pipes_ext.remote.sender import ReaderGone, Sender
from dagster_pipes_ext.remote.wire import LaunchSpec

STOP_POLL_SECONDS = 2.0  # one long-poll of the stop event
STOP_RETRY_SECONDS = 1.0  # after the scheduler did not answer it
STOP_OPEN_POLL_SECONDS = 0.05  # then doubling, while the session is not opened on the scheduler
# The watch's first long-poll starts this long after the command: a short command never costs
# the scheduler call, nor its answer at the session's end; a stop asked for meanwhile stays set.
STOP_FIRST_POLL_SECONDS = 0.25


class StopPolicy:
    """When and how the command is stopped.

    Stop when the orchestrator sets the session's stop event (a thread long-polls it), when the
    scheduler released the task (its client, the Dagster step, is gone; with
    ``stop_when_abandoned``), or when the worker starts closing (it lost its scheduler: nobody
    could collect the result or stop the command any more). Stopping is SIGINT to the process
    group, then SIGKILL after ``termination_timeout_seconds``.
    """

    def __init__(self, worker: Any, spec: LaunchSpec) -> None:
        self._worker = worker
        self._when_abandoned = spec["stop_when_abandoned"]
        self._grace = spec["termination_timeout_seconds"]
        self._task_key = dask_compat.current_task_key()
        self._kill_at: float | None = None
        self._proc: Supervised | None = None
        self._sender: Sender | None = None
        self.stop = threading.Event()
        self.abandoned = False
        self.exited = False
        self._done = threading.Event()
        self._stop_event = spec["stop_event"]
        self._topic = spec["topic"]

    def watch(self, proc: Supervised, sender: Sender) -> None:
        """The command started: its supervisor, and where notices go; watch the stop event.

        (A stop requested earlier is seen at once: the event stays set.)
        """
        self._proc = proc
        self._sender = sender
        threading.Thread(
            target=self._watch_stop_event,
            args=(self._stop_event,),
            daemon=True,
            name="pipes-stop-watch",
        ).start()

    def _watch_stop_event(self, name: str) -> None:
        """Long-poll the session's stop event on the scheduler until the launcher is done.

        Through the package's handler, which answers "gone" once the session was removed
        (Dask's ``event_wait`` would create the removed event again, for the wait's length);
        with ``event_wait`` where the scheduler lacks it.
        """
        stock = False
        not_open_wait = STOP_OPEN_POLL_SECONDS
        self._done.wait(STOP_FIRST_POLL_SECONDS)
        while not self._done.is_set():
            try:
                answer = None
                if not stock:
                    answer = dask_compat.worker_rpc(
                        self._worker,
                        dask_compat.STOP_WAIT_HANDLER,
                        topic=self._topic,
                        name=name,
                        timeout=STOP_POLL_SECONDS,
                    )
                    stock = answer is None
                if stock:
                    answer = (
                        "set"
                        if dask_compat.worker_rpc(
                            self._worker, "event_wait", name=name, timeout=STOP_POLL_SECONDS
                        )
                        else "unset"
                    )
                if answer == "set":
                    self.stop.set()
                    return
                if answer == "gone":
                    if self._sender is not None and self._sender.queue_seen:
                        return  # the session was removed: nothing can ask for a stop any more
                    self._done.wait(not_open_wait)  # not opened yet
                    not_open_wait = min(not_open_wait * 2, STOP_RETRY_SECONDS)
            except Exception:
                # The scheduler may be briefly unreachable; the launcher's own loop is unaffected.
                if self._done.wait(STOP_RETRY_SECONDS):
                    return

    def while_blocked(self) -> None:
        """Called while the data queue is full: keep deciding; give up if the step is gone."""
        self.check()
        if self.abandoned:
            raise ReaderGone("the Dagster step is gone")

    def check(self) -> None:
        """Decide whether to stop now, and signal the process group when it is time."""
        if not self.stop.is_set():
            self._notice_reasons()
        if self.exited or self._proc is None:
            return
        if self.stop.is_set() and self._kill_at is None:
            self._kill_at = time.monotonic() + self._grace
            self._proc.stop()  # SIGINT now; the supervisor kills every process after the grace
            self._note("stop requested: sent SIGINT to the process group")
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            signal_group(self._proc.pid, signal.SIGKILL)
            self._note(
                "process did not exit within termination_timeout_seconds: "
                "sent SIGKILL to the process group"
            )
            self._kill_at = float("inf")

    def _notice_reasons(self) -> None:
        if self._when_abandoned and dask_compat.task_released_on_worker(
            self._worker, self._task_key
        ):
            self.abandoned = True
            self.stop.set()
            self._note("the Dagster step is gone: stopping the command")
        elif dask_compat.worker_closing(self._worker):
            self.stop.set()
            self._note("the Dask worker is closing: stopping the command")

    def _note(self, text: str) -> None:
        if self._sender is not None:
            self._sender.note(text)

    def close(self) -> None:
        """End the stop-event watch."""
        self._done.set()
