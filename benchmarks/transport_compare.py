"""Raw transport, worker task -> reader thread through the scheduler, without Dagster.

- ``push``: today's ``worker.log_event(topic, batch)``; the reader subscribes to the topic.
- ``queue``: the scheduler's Queue extension: ``queue_put`` (blocks when full) / ``queue_get``.
- ``ack``: a tiny bounded buffer installed as scheduler RPC handlers with ``run_on_scheduler``;
  ``ack_get(after=seq)`` drops what the reader handled and returns the rest, so a get lost in
  flight loses nothing.

Run: ``.venv/bin/python benchmarks/transport_compare.py [--quick]`` (separate scheduler + worker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

import psutil
from distributed import Client, get_worker
from distributed.utils import sync

MAX_BATCH = 128 * 1024
CHUNK = 64 * 1024
PAD = "x" * 37  # '{"i":000000001,"p":"' + PAD + '"}\n' = 60 bytes


def _producer(transport, name, mode, total, token="", hb=None, per=1) -> int:
    """The worker task: send ``total`` lines/bytes/batches as sequence-numbered batches.

    ``token`` comes reversed, so that the task's own arguments never hold it.
    """
    w = get_worker()
    done = threading.Event()

    def send(batch: dict) -> None:
        if batch["s"] == 0:
            batch["tok"] = token[::-1]
        if transport == "push":
            return w.log_event(name, batch)
        op = w.scheduler.queue_put if transport == "queue" else w.scheduler.ack_put
        while True:  # a full queue times out the put (nothing inserted): that is backpressure
            try:
                return sync(w.loop, op, name=name, data=batch, timeout=1.0)
            except TimeoutError:
                continue

    def beat() -> None:  # heartbeat: log_event on a topic and a put on its own small queue
        n = 0
        while not done.wait(1.0):
            n += 1
            msg = {"hb": n, "t": time.time()}
            w.log_event(hb[0], msg)
            if hb[1]:
                with contextlib.suppress(TimeoutError):
                    sync(w.loop, w.scheduler.queue_put, name=hb[1], data=msg, timeout=0.5)

    if hb:
        threading.Thread(target=beat, daemon=True).start()
    try:
        return _produce(send, mode, total, per)
    finally:
        done.set()


def _produce(send, mode: str, total: int, per: int) -> int:
    seq = 0
    if mode == "lines":
        per = MAX_BATCH // 60
        for start in range(0, total, per):
            text = "".join(
                f'{{"i":{i:09d},"p":"{PAD}"}}\n' for i in range(start, min(total, start + per))
            )
            send({"s": seq, "k": "m", "t": time.time(), "r": text})
            seq += 1
    elif mode == "stdout":
        base = "y" * CHUNK
        for i in range(0, total // CHUNK, per):  # ``per`` 64 KiB chunks a batch
            chunks = [f"{j:09d}" + base[9:] for j in range(i, min(total // CHUNK, i + per))]
            send({"s": seq, "k": "o", "t": time.time(), "r": chunks})
            seq += 1
    else:  # latency: ``total`` small batches paced every 5 ms
        for _ in range(total):
            send({"s": seq, "k": "l", "t": time.time(), "r": "tick"})
            seq += 1
            time.sleep(0.005)
    send({"s": seq, "end": True})
    return seq + 1


def _install_ack(dask_scheduler=None) -> None:
    """Scheduler side of the ``ack`` transport (runs on the scheduler via run_on_scheduler)."""
    from collections import deque

    from distributed.utils import wait_for

    bufs = dask_scheduler.__dict__.setdefault("_ack_bufs", {})

    def create(name=None, maxsize=8):
        bufs[name] = (deque(), maxsize, asyncio.Condition())

    async def put(name=None, data=None, timeout=None):
        items, maxsize, cond = bufs[name]
        async with cond:
            await wait_for(cond.wait_for(lambda: len(items) < maxsize), timeout)
            items.append(data)
            cond.notify_all()

    async def get(name=None, after=-1, timeout=None):
        items, _, cond = bufs[name]
        async with cond:
            while items and items[0]["s"] <= after:
                items.popleft()
            cond.notify_all()
            await wait_for(cond.wait_for(lambda: bool(items)), timeout)
            return list(items)

    def release(name=None):
        bufs.pop(name, None)

    dask_scheduler.handlers.update(ack_create=create, ack_put=put, ack_get=get, ack_release=release)


def _drop(name: str, dask_scheduler=None) -> None:
    """Remove a session's topic and queue from the scheduler."""
    dask_scheduler._broker._topics.pop(name, None)
    ext = dask_scheduler.extensions["queues"]
    ext.queues.pop(name, None)
    ext.client_refcount.pop(name, None)


def _find_token(rev: str, dask_scheduler=None, dask_worker=None) -> list[str]:
    """Where a process still holds the token (passed reversed so the call itself holds none)."""
    import gc
    from collections import deque

    token = rev[::-1]
    tb = token.encode()

    def has(o, d=0) -> bool:
        if isinstance(o, str):
            return o is not token and token in o
        if isinstance(o, (bytes, bytearray)):
            return o is not tb and tb in o
        if isinstance(o, memoryview):
            with contextlib.suppress(ValueError):  # released
                return tb in o.tobytes()
            return False
        if d < 8 and isinstance(o, dict):
            return any(has(k, d + 1) or has(v, d + 1) for k, v in list(o.items()))
        if d < 8 and isinstance(o, (list, tuple, set, frozenset, deque)):
            return any(has(v, d + 1) for v in list(o))
        return False

    spots: dict[str, Any] = {}
    if hasattr(dask_scheduler, "client_comms"):  # run() passes the worker as both
        sc = dask_scheduler
        for k, bs in sc.client_comms.items():
            spots[f"client_comms[{k[:12]}].recent_message_log"] = list(bs.recent_message_log)
        for k, t in sc._broker._topics.items():
            spots[f"_broker._topics[{k[:16]}]"] = list(t.events)
        spots["transition_log"], spots["events"] = sc.transition_log, getattr(sc, "events", None)
        spots["QueueExtension.queues"] = [q._queue for q in sc.extensions["queues"].queues.values()]
        spots["ack buffers"] = getattr(sc, "_ack_bufs", None)
    if hasattr(dask_worker, "batched_stream"):
        spots["worker.batched_stream.recent_message_log"] = list(
            dask_worker.batched_stream.recent_message_log
        )
    found = [k for k, v in spots.items() if has(v)]
    gc.collect()
    holders: dict[str, int] = {}
    for o in gc.get_objects():
        for r in gc.get_referents(o):
            if isinstance(r, (str, bytes, bytearray, memoryview)) and has(r):
                holders[type(o).__name__] = holders.get(type(o).__name__, 0) + 1
    return found + [f"gc:{k}x{v}" for k, v in sorted(holders.items())]


class Cluster:
    """A ``dask scheduler`` + one ``dask worker --nthreads 4`` on 127.0.0.1, stopped by PID."""

    def __enter__(self) -> Cluster:
        d = tempfile.mkdtemp(prefix="transport-compare-")
        sf, py, self.procs = os.path.join(d, "scheduler.json"), sys.executable, []
        try:
            self._start(d, [py, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                            "--port", "0", "--scheduler-file", sf, "--no-dashboard",
                            "--dashboard-address", "127.0.0.1:0"])  # fmt: skip
            deadline = time.monotonic() + 30
            while not os.path.exists(sf) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.1)
            with open(sf) as f:
                addr = json.load(f)["address"]
            self._start(d, [py, "-m", "distributed.cli.dask_worker", addr, "--no-nanny",
                            "--nthreads", "4", "--host", "127.0.0.1",
                            "--no-dashboard"])  # fmt: skip
            self.client = Client(addr, timeout=30)
            self.client.wait_for_workers(1, timeout=30)
            self.client.run_on_scheduler(_install_ack)
        except BaseException:
            self._stop()
            raise
        self.pids = {"sched": self.procs[0].pid, "worker": self.procs[1].pid, "reader": os.getpid()}
        return self

    def _start(self, d: str, argv: list[str]) -> None:
        log = open(os.path.join(d, f"{len(self.procs)}.log"), "w")  # noqa: SIM115
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))

    def _stop(self) -> None:
        if getattr(self, "client", None) is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=10)
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def __exit__(self, *exc: Any) -> None:
        self._stop()


class Rss(threading.Thread):
    """Samples the RSS (MiB) of the scheduler, worker and reader every 50 ms."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.procs, self.stop = {k: psutil.Process(p) for k, p in pids.items()}, threading.Event()
        self.now = lambda: {k: p.memory_info().rss >> 20 for k, p in self.procs.items()}
        self.base = self.now()
        self.peak = dict(self.base)

    def run(self) -> None:  # noqa: D102
        while not self.stop.wait(0.05):
            self.peak = {k: max(v, self.peak[k]) for k, v in self.now().items()}


def run(cl, transport, mode, total, slow=0.0, maxsize=8, token="", rss=None, per=1) -> dict:
    """One transfer; returns counts, latencies and elapsed seconds (submit -> end batch)."""
    c, name = cl.client, f"tc-{transport}-{uuid.uuid4().hex[:8]}"
    if transport == "queue":
        c.sync(c.scheduler.queue_create, name=name, maxsize=maxsize)
    elif transport == "ack":
        c.sync(c.scheduler.ack_create, name=name, maxsize=maxsize)
    st, last, q = {"lines": 0, "bytes": 0, "lat": [], "err": 0}, [-1], queue.Queue()
    if transport == "push":  # today: the handler fills an unbounded local queue
        c.subscribe_topic(name, lambda ev: q.put(ev[1]))

    def recv() -> list:
        if transport == "push":
            return [q.get(timeout=0.5)]
        if transport == "queue":
            return [c.sync(c.scheduler.queue_get, name=name, timeout=0.5)["value"]]
        items = c.sync(c.scheduler.ack_get, name=name, after=last[0], timeout=0.5)
        last[0] = items[-1]["s"]  # acknowledged by the next get, after they were handled
        return items

    deadline = time.monotonic() + 600

    def read() -> None:
        nxt = 0
        while time.monotonic() < deadline:
            try:
                batches = recv()
            except (TimeoutError, queue.Empty):
                continue
            for b in batches:
                st["err"] += b["s"] != nxt
                nxt += 1
                if b.get("end"):
                    st["end"], st["batches"] = time.perf_counter(), nxt
                    return
                if b["k"] == "m":
                    parts = b["r"].split("\n")
                    parts.pop()
                    st["err"] += int(parts[0][5:14]) != st["lines"]
                    st["lines"] += len(parts)
                elif b["k"] == "o":
                    st["bytes"] += sum(map(len, b["r"]))
                else:
                    st["lat"].append(time.time() - b["t"])
                if slow:
                    time.sleep(slow)

    t0, reader = time.perf_counter(), threading.Thread(target=read, daemon=True)
    reader.start()
    fut = c.submit(_producer, transport, name, mode, total, token, per=per, pure=False)
    sent = fut.result(600)
    reader.join(timeout=600)
    st["secs"] = st.get("end", float("nan")) - t0
    assert st.get("batches") == sent and not st["err"], (transport, mode, sent, st["err"])
    if transport == "push":
        c.unsubscribe_topic(name)
    elif transport == "ack":
        c.sync(c.scheduler.ack_release, name=name)
    c.run_on_scheduler(_drop, name)
    if rss is not None:
        time.sleep(1.0)
        st["after"] = rss.now()
    return st


def semantics(cl: Cluster) -> dict[str, Any]:
    """Timeouts, creation, removal and a get in flight when its client closes."""
    c, s, out, n = cl.client, cl.client.scheduler, {}, f"sem-{uuid.uuid4().hex[:8]}"

    def attempt(key: str, fn) -> Any:
        t = time.perf_counter()
        try:
            out[key] = f"ok {fn()!r:.40}"
        except Exception as e:
            out[key] = f"{type(e).__name__}({e!s:.40}) after {time.perf_counter() - t:.2f}s"

    attempt("put without create", lambda: c.sync(s.queue_put, name=n, data=1, timeout=0.1))
    attempt("get without create", lambda: c.sync(s.queue_get, name=n, timeout=0.1))
    c.sync(s.queue_create, name=n, maxsize=1)
    attempt("get on empty, timeout=0.2", lambda: c.sync(s.queue_get, name=n, timeout=0.2))
    attempt("get batch=True on empty", lambda: c.sync(s.queue_get, name=n, batch=True))
    c.sync(s.queue_put, name=n, data="a", timeout=1)
    attempt("put on full, timeout=0.2", lambda: c.sync(s.queue_put, name=n, data="b", timeout=0.2))
    out["qsize after timed-out put"] = c.sync(s.queue_qsize, name=n)
    c.sync(s.queue_get, name=n, timeout=1)
    got, sent, stop = [], [], threading.Event()  # gets timing out while puts race in: any loss?

    def getter() -> None:
        while not stop.is_set() or c.sync(s.queue_qsize, name=n):
            with contextlib.suppress(TimeoutError):
                got.append(c.sync(s.queue_get, name=n, timeout=0.003)["value"])

    th = threading.Thread(target=getter, daemon=True)
    th.start()
    for i in range(400):
        try:
            c.sync(s.queue_put, name=n, data=i, timeout=0.5)
            sent.append(i)
        except TimeoutError:
            pass
        time.sleep(0.002 * (i % 4))
    stop.set()
    th.join(30)
    out["race 400 puts vs 3 ms gets"] = f"put {len(sent)}, got {len(got)}, in order {got == sent}"
    for kind in ("queue", "ack"):  # a get in flight when the reader's client closes
        c2 = Client(c.scheduler.address, timeout=30)
        op = c2.scheduler.queue_get if kind == "queue" else c2.scheduler.ack_get
        if kind == "ack":
            c.sync(s.ack_create, name=n, maxsize=4)
        asyncio.run_coroutine_threadsafe(op(name=n, timeout=3), c2.loop.asyncio_loop)
        time.sleep(0.3)
        c2.close(timeout=10)
        put = s.queue_put if kind == "queue" else s.ack_put
        c.sync(put, name=n, data={"s": 0, "v": "after close"}, timeout=1)
        time.sleep(3.5)
        if kind == "queue":
            left = c.sync(s.queue_qsize, name=n)
        else:
            left = len(c.sync(s.ack_get, name=n, after=-1, timeout=1))
            c.sync(s.ack_release, name=n)
        out[f"{kind}: get in flight, client closed, then put"] = f"{left} item(s) left"
    c.sync(s.queue_create, name=n)  # refcount 2 (create ignores maxsize when it exists)
    refs = lambda dask_scheduler=None: (  # noqa: E731
        n in dask_scheduler.extensions["queues"].queues,
        dask_scheduler.extensions["queues"].client_refcount.get(n),
    )
    for i in (1, 2):
        c._send_to_scheduler({"op": "queue_release", "name": n})
        time.sleep(0.2)
        out[f"after queue_release #{i}: (in queues, refcount)"] = c.run_on_scheduler(refs)
    return out


def heartbeat(cl: Cluster, transport: str, stall: float) -> str:
    """Heartbeats during a 512 MiB stdout run (queue: nobody reads data, so the queue is full)."""
    c, name, ev, qd = cl.client, f"hb-{uuid.uuid4().hex[:8]}", [], []
    c.subscribe_topic(name + "-ev", lambda e: ev.append(time.time() - e[1]["t"]))
    hbq = name + "-q" if transport == "queue" else ""
    if hbq:
        c.sync(c.scheduler.queue_create, name=name, maxsize=4)
        c.sync(c.scheduler.queue_create, name=hbq, maxsize=100)
    else:
        c.subscribe_topic(name, lambda e: None)  # handled at once: only the flood is ahead
    fut = c.submit(_producer, transport, name, "stdout", 512 << 20, hb=(name + "-ev", hbq), per=2)
    t_end = time.monotonic() + stall
    while time.monotonic() < t_end:
        if not hbq:
            time.sleep(0.5)
            continue
        with contextlib.suppress(TimeoutError):
            sent = c.sync(c.scheduler.queue_get, name=hbq, timeout=0.5)["value"]["t"]
            qd.append(time.time() - sent)
    full, in_window = (c.sync(c.scheduler.queue_qsize, name=name) if hbq else "-"), len(ev)
    if hbq:
        c.cancel(fut)  # the producer then fails on the dropped queue (KeyError)
    else:
        fut.result(300)  # a topic dropped while events still come is re-created (defaultdict)
        time.sleep(1.0)
    for x in (name, name + "-ev", hbq):
        if x in c._event_handlers:
            c.unsubscribe_topic(x)  # popping the handler instead makes later events raise
        c.run_on_scheduler(_drop, x)
    fmt = lambda xs: f"{len(xs)} hb, max {max(xs) * 1e3:.0f} ms" if xs else "0 hb"  # noqa: E731
    return (
        f"data qsize {full}; log_event: {in_window} hb in the {stall:g} s window, all: {fmt(ev)}"
        f"; queue_put: {fmt(qd) if hbq else '-'}"
    )


def main() -> None:
    """Run every measurement and print the tables."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    q = ap.parse_args().quick
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the clusters are stopped
    n_lines, n_bytes, reps = (100_000, 100 << 20, 1) if q else (1_000_000, 1 << 30, 3)
    transports = ("push", "queue", "ack")
    print(f"lines={n_lines:,} bytes={n_bytes >> 20} MiB reps={reps}")
    with Cluster() as cl:
        print(f"{'transport':9} {'lines/s':>9} {'lines MB/s':>10} {'stdout MB/s 128K':>16} "
              f"{'512K':>6} {'lat p50 ms':>10} {'p90':>6} {'max':>6}")  # fmt: skip
        for t in transports:
            secs = [[run(cl, t, *a, **k)["secs"] for _ in range(reps)]
                    for a, k in [(("lines", n_lines), {}), (("stdout", n_bytes), {"per": 2}),
                                 (("stdout", n_bytes), {"per": 8})]]  # fmt: skip
            lm, s2, s8 = (statistics.median(x) for x in secs)
            lat = sorted(run(cl, t, "latency", 300)["lat"])
            print(f"{t:9} {n_lines / lm:9,.0f} {n_lines * 60 / lm / 1e6:10.1f} "
                  f"{n_bytes / s2 / 1e6:16.1f} {n_bytes / s8 / 1e6:6.1f} {lat[150] * 1e3:10.2f} "
                  f"{lat[270] * 1e3:6.2f} {lat[-1] * 1e3:6.2f}")  # fmt: skip
        print("\nretention after the topic/queue was removed (token in the first batch):")
        for t, mode, n in [
            (t, m, n) for t in transports for m, n in [("latency", 50), ("lines", n_lines // 20)]
        ]:
            tok = uuid.uuid4().hex
            run(cl, t, mode, n, token=tok[::-1])
            where = cl.client.run_on_scheduler(_find_token, tok[::-1])
            print(f"  {t:5} {mode:7} scheduler: {where}")
            where = next(iter(cl.client.run(_find_token, tok[::-1]).values()))
            print(f"  {t:5} {mode:7} worker:    {where}")
        print("\nqueue semantics:")
        for k, v in semantics(cl).items():
            print(f"  {k:45} {v}")
        print("\nheartbeat (every 1 s) during a 512 MiB stdout run, reader stalled / flooded:")
        for t in ("queue", "push"):
            print(f"  {t:6} {heartbeat(cl, t, 3.0 if q else 5.0)}")
    print(f"\nmemory, {n_bytes >> 20} MiB stdout, reader sleeps 1 ms/batch, fresh cluster, RSS MiB")
    print(f"{'config batch':12} {'sched base/peak/after':>21} {'worker':>18} {'reader':>18} secs")
    for t, m, per in [("queue", 4, 2), ("queue", 8, 2), ("queue", 16, 2), ("queue", 8, 8),
                      ("ack", 8, 2), ("push", 0, 2)]:  # fmt: skip
        with Cluster() as cl:
            rss = Rss(cl.pids)
            rss.start()
            st = run(cl, t, "stdout", n_bytes, slow=0.001, maxsize=m, rss=rss, per=per)
            rss.stop.set()
            c3 = [f"{rss.base[k]}/{rss.peak[k]}/{st['after'][k]}" for k in rss.base]
            cfg = f"{t}{m or ''} {per * 64}K"
            print(f"{cfg:12} {c3[0]:>21} {c3[1]:>18} {c3[2]:>18} {st['secs']:5.1f}")


if __name__ == "__main__":
    main()
