"""Scheduling figures: how late a delayed task starts on an idle in-process client.

``.venv/bin/python -m bench.schedule_figures [--tasks 200] [--low 0.2] [--high 3.0]``

A private ``redis-server`` (loopback, free port, no persistence, stopped by pid) and one
in-process client. ``--tasks`` signatures are started at once, each with its own delay spread
evenly over ``--low``..``--high`` seconds (shuffled, so the delayed index is not filled in due
order). For each task:

- *start lateness*: when the task body started (the local clock, ``time.time()``) minus its due
  time (``Field.DUE``, set by launch.lua from Redis's clock: the same host's clock here);
- *claim lateness*: when its claim was committed (``Field.STARTED``, Redis's clock) minus the due
  time: the scheduler's wake-up, the release script and the claim, without the hand-over to the
  task body.

Median, 95th percentile and maximum of each, in ms. Nothing else runs on the client meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.servers import RedisServer
from mageflow import Mageflow, MageflowConfig
from mageflow.store.schema import Field

NAMESPACE = "schedbench"


def figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"median {statistics.median(ordered):6.1f} ms   p95 {p95:6.1f} ms   "
        f"max {ordered[-1]:6.1f} ms   min {ordered[0]:6.1f} ms"
    )


async def measure(url: str, count: int, low: float, high: float) -> tuple[list[float], ...]:
    mf = Mageflow(None, url, config=MageflowConfig(namespace=NAMESPACE))
    started: dict[str, float] = {}

    @mf.task(name="stamp")
    async def stamp(msg: dict[str, Any]) -> None:
        started[msg["key"]] = time.time() * 1000

    async with mf:
        step = (high - low) / max(count - 1, 1)
        delays = [low + i * step for i in range(count)]
        random.Random(7).shuffle(delays)
        sigs = [await mf.sign("stamp") for _ in delays]
        for sig, delay in zip(sigs, delays, strict=True):
            await sig.aio_run_no_wait({"key": sig.key}, delay=delay)
        for sig in sigs:
            await sig.aresult(timeout=high + 30)
        start_late, claim_late = [], []
        for sig in sigs:
            record = (await sig.aload())._record
            due = int(record.get(Field.DUE))
            start_late.append(started[sig.key] - due)
            claim_late.append(int(record.get(Field.STARTED)) - due)
    return start_late, claim_late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--low", type=float, default=0.2)
    parser.add_argument("--high", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer("schedule", Path(tmp))
        server.start()
        try:
            start_late, claim_late = asyncio.run(
                measure(server.url(), args.tasks, args.low, args.high)
            )
            print(
                f"{args.tasks} delayed tasks, delays {args.low}-{args.high} s, in-process client, "
                f"redis-server {server.version()}"
            )
            print(f"start lateness (body start - due): {figures(start_late)}")
            print(f"claim lateness (claim - due):      {figures(claim_late)}")
            early = sum(1 for x in claim_late if x < 0)
            print(f"claims before their due time: {early}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
