"""Rate-limit figures: the rate two Taskiq workers achieve under ``rate_limit="100/s"``.

``.venv/bin/python -m bench.rate_figures [--tasks 1200] [--limit 100/s] [--window 10]``

A private ``redis-server`` (loopback, free port, no persistence, stopped by pid) holds the state
and the broker's stream; two worker processes (``python -m mageflow.engines.taskiq_worker
bench.rate_app:worker_client``, one worker each, concurrency 50) run the rate-limited task, which
notes the time its body starts. The bench process signs ``--tasks`` signatures and starts them
all at once, then waits until every one has run.

Reported over the ``--window`` seconds from the first start: starts in each second, the most in
any sliding 1-second window, and the total (its rate against the configured one); the same from
the claims (``Field.STARTED``, Redis's clock: what the limiter holds exactly), and how the starts
split between the two workers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import procs
from bench.rate_app import TASK, broker, starts_key
from bench.servers import RedisServer
from mageflow import Mageflow, MageflowConfig
from mageflow.store.schema import Field
from tests.rates import most_in_window

NAMESPACE = "ratebench"
QUEUE = "ratebench-queue"


def report(name: str, times: list[float], window: int, limit: float) -> None:
    """``times`` in seconds."""
    t0 = min(times)
    inside = [t for t in times if t < t0 + window]
    per_second = Counter(int(t - t0) for t in inside)
    print(f"{name}:")
    print("  starts per second: " + " ".join(str(per_second[s]) for s in range(window)))
    print(f"  most in any 1-s window: {most_in_window(times, 1.0)} (limit {limit:g})")
    print(
        f"  total in the first {window} s: {len(inside)} = {len(inside) / window:.1f}/s "
        f"({len(inside) / window / limit:.1%} of the limit); all {len(times)} took "
        f"{max(times) - t0:.2f} s"
    )


def start_workers(url: str, folder: Path, limit: str) -> list[procs.Proc]:
    env = {"RATE_REDIS_URL": url, "RATE_NAMESPACE": NAMESPACE, "RATE_QUEUE": QUEUE}
    env["RATE_LIMIT"] = limit
    argv = [sys.executable, "-m", "mageflow.engines.taskiq_worker", "bench.rate_app:worker_client"]
    argv += ["--workers", "1", "--concurrency", "50"]
    workers = [
        procs.spawn(f"rate-worker-{i}", argv, folder / f"worker-{i}.log", env) for i in range(2)
    ]
    for w in workers:
        w.wait_for("mageflow worker ready", timeout=60)
    return workers


async def submit(url: str, count: int) -> list[int]:
    """Start ``count`` signatures at once; wait for them; their claim times (ms)."""
    mf = Mageflow(broker(url, QUEUE), url, config=MageflowConfig(namespace=NAMESPACE))
    async with mf:
        await mf.refresh_registry()
        sigs = []
        async with mf.abounded_field():
            sigs = [await mf.sign(TASK) for _ in range(count)]
        began = time.time()
        await asyncio.gather(*(s.aio_run_no_wait({}) for s in sigs))
        print(f"submitted {count} in {time.time() - began:.2f} s")
        for sig in sigs:
            await sig.aresult(timeout=count / 10 + 60)
        pipe = mf.store.redis.pipeline(transaction=False)
        for sig in sigs:
            pipe.hget(sig.key, Field.STARTED)
        return [int(v) for v in await pipe.execute()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1200)
    parser.add_argument("--limit", default="100/s")
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args()
    count, unit = args.limit.split("/")
    per_second = int(count) / {"s": 1, "m": 60, "h": 3600}[unit]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer("rate", Path(tmp))
        server.start()
        workers: list[procs.Proc] = []
        try:
            url = server.url()
            workers = start_workers(url, Path(tmp), args.limit)
            claims = asyncio.run(submit(url, args.tasks))
            noted = [x.split() for x in server.client.lrange(starts_key(NAMESPACE), 0, -1)]
            starts = [float(at) for at, _pid in noted]
            print(f"{args.tasks} tasks, rate_limit={args.limit!r}, 2 Taskiq workers (streams)")
            report("task starts (body, local clock)", starts, args.window, per_second)
            seconds = [c / 1000 for c in claims]
            report("claims (Field.STARTED, Redis clock)", seconds, args.window, per_second)
            split = Counter(pid for _at, pid in noted)
            print(f"ran {len(starts)} bodies for {args.tasks} signatures; per worker {dict(split)}")
        finally:
            for w in workers:
                procs.stop(w, timeout=15)
            server.stop()


if __name__ == "__main__":
    main()
