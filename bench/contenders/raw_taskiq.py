"""Raw Taskiq: the trivial tasks kicked straight from the client, with no orchestration.

The client plays the orchestrator, as closely as Taskiq alone allows:

* swarm: kick the members with at most ``max_concurrency`` waiting for a result at once, then
  kick the collect task with the list of results;
* chain: kick each step when the previous step's result arrives (the client drives the chain);
* callbacks: kick each task, and kick its callback with the task's result when that arrives;
* burst: run every chain of the burst at once, each driven step by step as in ``chain``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from taskiq import AsyncBroker

from bench import procs
from bench.contenders.base import (
    SETTLE_S,
    Contender,
    Env,
    Probe,
    clock,
    redis_ms,
    set_latency,
    stream_sent,
)
from bench.model import RunResult, Sizes
from bench.raw_app import COLLECT, NOOP, ResultWaiter, make_broker
from bench.wiring import Wiring


class Client:
    def __init__(self, broker: AsyncBroker, waiter: ResultWaiter) -> None:
        self.noop = _task(broker, NOOP)
        self.collect = _task(broker, COLLECT)
        self.waiter = waiter

    async def call(self, task: Any, **kwargs: Any) -> Any:
        sent = await task.kiq(**kwargs)
        return await self.waiter.wait(sent.task_id)


def _task(broker: AsyncBroker, name: str) -> Any:
    task = broker.find_task(name)
    if task is None:
        raise LookupError(name)
    return task


async def _swarm(c: Client, sizes: Sizes) -> None:
    await _swarm_of(c, sizes.swarm_n, sizes.swarm_concurrency)


async def _big_swarm(c: Client, sizes: Sizes) -> None:
    await _swarm_of(c, sizes.big_swarm_n, sizes.swarm_concurrency)


async def _swarm_of(c: Client, n: int, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def member() -> int:
        async with gate:
            return int(await c.call(c.noop, x=1))

    values = await asyncio.gather(*(member() for _ in range(n)))
    if await c.call(c.collect, values=list(values)) != n:
        raise AssertionError("collect returned the wrong count")


async def _chain(c: Client, sizes: Sizes) -> None:
    x = 0
    for _ in range(sizes.chain_n):
        x = int(await c.call(c.noop, x=x))
    if x != sizes.chain_n:
        raise AssertionError(f"chain ended with {x}")


async def _callbacks(c: Client, sizes: Sizes) -> None:
    async def pair(i: int) -> int:
        value = await c.call(c.noop, x=i)
        return int(await c.call(c.noop, x=value))

    values = await asyncio.gather(*(pair(i) for i in range(sizes.callbacks_n)))
    if list(values) != [i + 2 for i in range(sizes.callbacks_n)]:
        raise AssertionError("wrong callback results")


async def _burst(c: Client, sizes: Sizes) -> None:
    async def one(i: int) -> int:
        x = i
        for _ in range(sizes.burst_len):
            x = int(await c.call(c.noop, x=x))
        return x

    values = await asyncio.gather(*(one(i) for i in range(sizes.burst_n)))
    if list(values) != [i + sizes.burst_len for i in range(sizes.burst_n)]:
        raise AssertionError("wrong chain results")


DRIVERS = {
    "swarm": _swarm,
    "chain": _chain,
    "callbacks": _callbacks,
    "swarm10k": _big_swarm,
    "burst": _burst,
}


class RawTaskiq(Contender):
    """Taskiq's ``Receiver`` in ``python -m bench.raw_worker`` processes, one per worker."""

    family = "raw-taskiq"
    label = "raw Taskiq"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.env: Env | None = None
        self.wiring: Wiring | None = None
        self.procs: list[procs.Proc] = []

    def start(self, env: Env, wiring: Wiring) -> None:
        self.env, self.wiring = env, wiring
        for i in range(self.workers):
            log = env.workdir / "logs" / f"{wiring.queue}-{i}.log"
            argv = [*self.spy_prefix, sys.executable, "-m", "bench.raw_worker"]
            self.procs.append(procs.spawn(f"{self.name}-{i}", argv, log, wiring.to_env()))
        for proc in self.procs:
            proc.wait_for("raw taskiq worker ready", timeout=60)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        while self.procs:
            procs.stop(self.procs.pop(), timeout=15, sig=self.stop_signal)

    def execute(self, workload: str, result: RunResult, probe: Probe, sizes: Sizes) -> None:
        asyncio.run(self._execute(workload, result, probe, sizes))

    async def _execute(self, workload: str, result: RunResult, probe: Probe, sizes: Sizes) -> None:
        assert self.env is not None and self.wiring is not None
        dead = [p for p in self.procs if not p.alive()]
        if dead:
            raise RuntimeError(f"worker exited:\n{dead[0].text()[-2000:]}")
        since = redis_ms(self.env.broker)
        broker = make_broker(self.wiring)
        await broker.startup()
        waiter = ResultWaiter(self.wiring.state_url, self.wiring.results_key)
        waiter.start()
        try:
            probe.begin()
            t0 = clock()
            driver = DRIVERS[workload](Client(broker, waiter), sizes)
            await asyncio.wait_for(driver, sizes.run_timeout)
            result.e2e_s = clock() - t0
            await asyncio.sleep(SETTLE_S)
            probe.end(result)
        finally:
            await waiter.close()
            await broker.shutdown()
        sent = stream_sent(self.env.broker, self.wiring.queue, since, lambda m: m["task_id"])
        set_latency(result, sent, waiter.done_at)
