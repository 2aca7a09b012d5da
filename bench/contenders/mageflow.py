"""mageflow, on its in-process engine and on Taskiq workers: the same workload code for both."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from bench import procs
from bench.contenders.base import (
    SETTLE_S,
    Contender,
    Env,
    Probe,
    bounded_gather,
    clock,
    redis_ms,
    set_latency,
    stream_sent,
)
from bench.mf_app import COLLECT, NOOP, embedded_client, producer_client
from bench.model import RunResult, Sizes
from bench.wiring import Wiring
from mageflow import Mageflow, SwarmConfig

KeysFn = Callable[[], Awaitable[list[str]]]
WAIT_LIMIT = 50  # client-side launches and waits in progress at once


async def _swarm(mf: Mageflow, sizes: Sizes, timeout: float) -> tuple[float, KeysFn]:
    return await swarm_of(mf, sizes.swarm_n, sizes.swarm_concurrency, timeout)


async def _big_swarm(mf: Mageflow, sizes: Sizes, timeout: float) -> tuple[float, KeysFn]:
    return await swarm_of(mf, sizes.big_swarm_n, sizes.swarm_concurrency, timeout)


async def swarm_of(mf: Mageflow, n: int, concurrency: int, timeout: float) -> tuple[float, KeysFn]:
    """A swarm of ``n`` trivial members and one success callback; wait for the callback."""
    t0 = clock()
    collect = await mf.sign(COLLECT)
    swarm = await mf.swarm(
        [NOOP] * n,
        config=SwarmConfig(max_concurrency=concurrency),
        success_callbacks=[collect],
        is_swarm_closed=True,
    )
    await mf.notifier.watch(collect.key)  # announce the callback's end to this client
    built = clock() - t0
    await swarm.aio_run_no_wait({"x": 1})
    value = await collect.aresult(timeout=timeout)
    if value != n:
        raise AssertionError(f"swarm callback returned {value!r}")

    async def keys() -> list[str]:
        return [*await swarm.tasks(), collect.key]

    return built, keys


async def _chain(mf: Mageflow, sizes: Sizes, timeout: float) -> tuple[float, KeysFn]:
    t0 = clock()
    chain = await mf.chain([NOOP] * sizes.chain_n)
    built = clock() - t0
    value = await chain.aio_run({"x": 0}, timeout=timeout)
    if value != sizes.chain_n:
        raise AssertionError(f"chain returned {value!r}")

    async def keys() -> list[str]:
        return list(chain.tasks)

    return built, keys


async def _callbacks(mf: Mageflow, sizes: Sizes, timeout: float) -> tuple[float, KeysFn]:
    t0 = clock()
    pairs = []
    async with mf.abounded_field():  # every signature in one MULTI/EXEC
        for _ in range(sizes.callbacks_n):
            callback = await mf.sign(NOOP)
            pairs.append((await mf.sign(NOOP, success_callbacks=[callback]), callback))
    built = clock() - t0
    # Launched concurrently, as raw Taskiq's client kicks its tasks (asyncio.gather).
    await bounded_gather(
        (sig.aio_run_no_wait({"x": i}) for i, (sig, _) in enumerate(pairs)), WAIT_LIMIT
    )
    values = await bounded_gather((cb.aresult(timeout=timeout) for _, cb in pairs), WAIT_LIMIT)
    if values != [i + 2 for i in range(sizes.callbacks_n)]:
        raise AssertionError("wrong callback results")

    async def keys() -> list[str]:
        return [k for sig, cb in pairs for k in (sig.key, cb.key)]

    return built, keys


async def _burst(mf: Mageflow, sizes: Sizes, timeout: float) -> tuple[float, KeysFn]:
    """``burst_n`` independent workflows, each a chain of ``burst_len`` steps, written in one
    ``abounded_field()``, all started at once; wait for every chain's result."""
    t0 = clock()
    async with mf.abounded_field():  # every chain in one MULTI/EXEC
        chains = [await mf.chain([NOOP] * sizes.burst_len) for _ in range(sizes.burst_n)]
    built = clock() - t0
    await bounded_gather((c.aio_run_no_wait({"x": i}) for i, c in enumerate(chains)), WAIT_LIMIT)
    values = await bounded_gather((c.aresult(timeout=timeout) for c in chains), WAIT_LIMIT)
    if values != [i + sizes.burst_len for i in range(sizes.burst_n)]:
        raise AssertionError("wrong chain results")

    async def keys() -> list[str]:
        return [k for c in chains for k in c.tasks]

    return built, keys


DRIVERS = {
    "swarm": _swarm,
    "chain": _chain,
    "callbacks": _callbacks,
    "swarm10k": _big_swarm,
    "burst": _burst,
}
SIGNATURES = {
    "swarm": lambda s: s.swarm_n + 2,
    "chain": lambda s: s.chain_n + 1,
    "callbacks": lambda s: 2 * s.callbacks_n,
    "swarm10k": lambda s: s.big_swarm_n + 2,
    "burst": lambda s: s.burst_n * (s.burst_len + 1),
}


async def drive(
    mf: Mageflow, workload: str, sizes: Sizes, probe: Probe, result: RunResult
) -> tuple[dict[str, float], dict[str, float]]:
    """Run one workload on a started client; its tasks' finish and start (claim) times (Redis
    ``ts_f`` and ``ts_s``, in s)."""
    probe.begin()
    t0 = clock()
    built, keys_fn = await asyncio.wait_for(
        DRIVERS[workload](mf, sizes, sizes.run_timeout), sizes.run_timeout
    )
    result.e2e_s = clock() - t0
    result.build_s = built
    result.signatures = SIGNATURES[workload](sizes)
    await asyncio.sleep(SETTLE_S)
    probe.end(result)
    keys = await keys_fn()
    done: dict[str, float] = {}
    started: dict[str, float] = {}
    for rec in await mf.store.load_many(keys):
        if rec is not None and rec.get("ts_f"):
            done[rec.key] = int(rec.get("ts_f")) / 1000
            started[rec.key] = int(rec.get("ts_s") or rec.get("ts_f")) / 1000
    return done, started


class MageflowEmbedded(Contender):
    """The in-process engine (tasks run as asyncio tasks of the client's process)."""

    family = "mageflow-embedded"
    label = "mageflow embedded (in-process)"
    result_keys = "bench:*"

    def __init__(self) -> None:
        super().__init__(0)
        self.env: Env | None = None
        self.wiring: Wiring | None = None

    def start(self, env: Env, wiring: Wiring) -> None:
        self.env, self.wiring = env, wiring

    def execute(self, workload: str, result: RunResult, probe: Probe, sizes: Sizes) -> None:
        asyncio.run(self._execute(workload, result, probe, sizes))

    async def _execute(self, workload: str, result: RunResult, probe: Probe, sizes: Sizes) -> None:
        assert self.env is not None and self.wiring is not None
        mf, engine = embedded_client(self.wiring)
        async with mf:
            await drive(mf, workload, sizes, probe, result)
        set_latency(result, engine.sent, engine.done)


class MageflowTaskiq(Contender):
    """Taskiq workers (``python -m mageflow.engines.taskiq_worker``); the bench is the producer."""

    family = "mageflow-taskiq"
    label = "mageflow on Taskiq"
    result_keys = "bench:*"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.env: Env | None = None
        self.wiring: Wiring | None = None
        self.proc: procs.Proc | None = None

    def worker_argv(self, wiring: Wiring) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mageflow.engines.taskiq_worker",
            "bench.mf_app:worker_client",
            "--workers",
            str(self.workers),
            "--concurrency",
            str(wiring.concurrency),
            "--shutdown-timeout",
            "10",
            "--log-level",
            "INFO",
        ]

    def start(self, env: Env, wiring: Wiring) -> None:
        self.env, self.wiring = env, wiring
        log = env.workdir / "logs" / f"{wiring.queue}.log"
        argv = [*self.spy_prefix, *self.worker_argv(wiring)]
        self.proc = procs.spawn(self.name, argv, log, wiring.to_env())
        self.proc.wait_for("mageflow worker ready", self.workers, timeout=60)

    def worker_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, timeout=20, sig=self.stop_signal)
            self.proc = None

    def execute(self, workload: str, result: RunResult, probe: Probe, sizes: Sizes) -> None:
        asyncio.run(self._execute(workload, result, probe, sizes))

    async def _execute(self, workload: str, result: RunResult, probe: Probe, sizes: Sizes) -> None:
        assert self.env is not None and self.wiring is not None
        if self.proc is not None and not self.proc.alive():
            raise RuntimeError(f"workers exited:\n{self.proc.text()[-2000:]}")
        since = redis_ms(self.env.broker)
        mf = producer_client(self.wiring)
        async with mf:
            done, started = await drive(mf, workload, sizes, probe, result)
        sent = stream_sent(
            self.env.broker, self.wiring.queue, since, lambda m: m["kwargs"]["envelope"]["sig"]
        )
        # A follow-up a worker ran itself never went on the stream: it counts from its claim.
        set_latency(result, {**started, **sent}, done)
