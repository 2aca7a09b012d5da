"""What-if measurements behind bench/analysis.md: the embedded swarm's script pipelines.

``.venv/bin/python -m bench.experiments [--members 2000] [--runs 3] [--only CASE,...]``

Each case runs the embedded swarm of workload (a) (``--members`` members, max_concurrency 50,
one success callback) ``--runs`` times, each on a fresh private ``redis-server`` (loopback, no
persistence, stopped by its pid), and reports the median. mageflow's files are never changed:
a case patches a class of the running process only, for the length of the case.

- ``stream``: mageflow as it is: on a single Redis the store streams its script calls over one
  connection (``mageflow/store/streaming.py``);
- ``baseline``: the store made to batch instead (``Store.stream_calls = False``, what mageflow
  did before the stream and still does on a cluster); also counts the pipelines the
  ``ScriptBatcher`` sends (how many EVALSHAs each carries). The two cases below batch too;
- ``two-in-flight``: the batcher may send a second pipeline while the first is unanswered (what
  overlapping the client's work with Redis's would give; answers of one pipeline still come in
  order, but two pipelines may be answered out of order, which mageflow does not allow today);
- ``split``: the same with pipelines of at most 10 calls and up to 5 unanswered, so Redis runs
  the first calls of a wave while the client still packs the rest, and answers come back in
  parts;
- ``evalsha-only``: not a swarm: 20,000 calls of a script that only returns, from 50 callers at
  once through mageflow's ``ScriptBatcher``, with the arguments a ``finish`` call carries (two
  TTL lists, the outbox acks, a 60-byte result): client CPU per script call with no mageflow
  logic around it; ``evalsha-stream`` the same through the ``ScriptStream``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import procs
from bench.contenders.base import clock
from bench.contenders.mageflow import swarm_of
from bench.mf_app import embedded_client
from bench.servers import RedisServer
from bench.wiring import Wiring
from mageflow.store import batching
from mageflow.store.redis_store import Store
from mageflow.store.streaming import ScriptStream


@contextmanager
def counting_pipelines(sizes: Counter[int]) -> Iterator[None]:
    original = batching.ScriptBatcher._send

    async def send(self: Any, calls: list[Any]) -> list[Any]:
        sizes[len(calls)] += 1
        return await original(self, calls)

    batching.ScriptBatcher._send = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        batching.ScriptBatcher._send = original  # type: ignore[method-assign]


@contextmanager
def batching_only() -> Iterator[None]:
    """The store batches its script calls, as it did before streaming (and does on a cluster)."""
    Store.stream_calls = False
    try:
        yield
    finally:
        Store.stream_calls = True


@contextmanager
def in_flight(pipelines: int, batch: int = batching.MAX_BATCH) -> Iterator[None]:
    """Let the batcher have up to ``pipelines`` pipelines of at most ``batch`` calls unanswered."""
    cls: Any = batching.ScriptBatcher
    original_start, original_done = cls._start_flush, cls._flushed

    def start(self: Any) -> None:
        flying: set[Any] = self.__dict__.setdefault("_flying", set())
        while self._queue and len(flying) < pipelines:
            calls, self._queue = self._queue[:batch], self._queue[batch:]
            task = asyncio.get_running_loop().create_task(self._flush(calls))
            flying.add(task)
            task.add_done_callback(self._flushed)
        self._flushing = next(iter(flying), None)

    def done(self: Any, task: Any) -> None:
        self.__dict__.setdefault("_flying", set()).discard(task)
        self._flushing = None
        self._start_flush()

    cls._start_flush, cls._flushed = start, done
    try:
        yield
    finally:
        cls._start_flush, cls._flushed = original_start, original_done


async def one_swarm(url: str, members: int) -> dict[str, float]:
    mf, _ = embedded_client(Wiring(broker_url="", state_url=url, queue="experiments"))
    async with mf:
        await swarm_of(mf, 100, 50, 120.0)  # warm-up
        cpu, t0 = time.process_time(), clock()
        await swarm_of(mf, members, 50, 300.0)
        took, cpu = clock() - t0, time.process_time() - cpu
    return {"tasks_per_s": (members + 1) / took, "client_cpu_us": 1e6 * cpu / (members + 1)}


async def evalsha_only(
    url: str, calls: int = 20_000, callers: int = 50, stream: bool = False
) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    sha = await client.script_load("return 1")
    kind = ScriptStream if stream else batching.ScriptBatcher
    batcher = kind(client, lambda: asyncio.sleep(0))
    ttl = "86400000,86400000,86400000"
    args = ["bench:outbox", "bench:leases", "bench:sig:{abc}:def", ttl, ttl, "", "done", "x" * 60]

    async def caller(n: int) -> None:
        for _ in range(n):
            await batcher.call(sha, 3, args)

    cpu, t0 = time.process_time(), clock()
    await asyncio.gather(*(caller(calls // callers) for _ in range(callers)))
    took, cpu = clock() - t0, time.process_time() - cpu
    await batcher.aclose()
    await client.aclose()
    return {"calls_per_s": calls / took, "client_cpu_us_per_call": 1e6 * cpu / calls}


def on_fresh_server(workdir: Path, run: Callable[[str], Any]) -> Any:
    server = RedisServer(f"exp-{time.monotonic_ns()}", workdir)
    server.start()
    try:
        return asyncio.run(run(server.url()))
    finally:
        server.stop()


def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


CASES = ("stream", "baseline", "two-in-flight", "split", "evalsha-only", "evalsha-stream")


def swarms(workdir: Path, members: int, runs: int) -> dict[str, float]:
    return median_of(
        [on_fresh_server(workdir, lambda u: one_swarm(u, members)) for _ in range(runs)]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(CASES), help="cases to run, comma-separated")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - set(CASES):
        ap.error(f"unknown cases {sorted(only - set(CASES))}; known: {', '.join(CASES)}")
    procs.install_cleanup()
    workdir = Path(tempfile.mkdtemp(prefix="mageflow-experiments-"))
    try:
        if "stream" in only:
            print(f"stream         {swarms(workdir, args.members, args.runs)}")
        if "baseline" in only:
            sizes: Counter[int] = Counter()
            with batching_only(), counting_pipelines(sizes):
                base = swarms(workdir, args.members, args.runs)
            pipelines = sum(sizes.values())
            calls = sum(k * v for k, v in sizes.items())
            tasks = args.runs * (args.members + 101)  # (with the warm-up swarms)
            print(f"baseline       {base}")
            print(
                f"  pipelines: {pipelines} for {calls} script calls ({calls / pipelines:.1f} per "
                f"pipeline, {pipelines / tasks:.2f} pipelines per task); most common sizes "
                f"{sizes.most_common(8)}"
            )
        for name, flying, batch in (("two-in-flight", 2, batching.MAX_BATCH), ("split", 5, 10)):
            if name in only:
                with batching_only(), in_flight(flying, batch):
                    print(f"{name:14} {swarms(workdir, args.members, args.runs)}")
        for name, stream in (("evalsha-only", False), ("evalsha-stream", True)):
            if name in only:
                rows = [
                    on_fresh_server(workdir, lambda u, s=stream: evalsha_only(u, stream=s))
                    for _ in range(args.runs)
                ]
                print(f"{name:14} {median_of(rows)}")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
