"""The contender interface, the probe that measures Redis around a run, and shared helpers."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench import procs
from bench.model import RunResult, Sizes
from bench.servers import RedisServer
from bench.stats import latency_summary
from bench.wiring import Wiring

T = TypeVar("T")
SETTLE_S = 0.3  # after the last result: let trailing writes (outbox clean-ups, acks) land


@dataclass
class Env:
    broker: RedisServer
    state: RedisServer
    workdir: Path
    sizes: Sizes
    concurrency: int = 50


class Probe:
    """Hooks around a run's timed part: ``begin`` just before the first client call of the
    workload (clients already started), ``end`` after its last result (and a short settle)."""

    def begin(self) -> None:
        return None

    def end(self, result: RunResult) -> None:
        return None


class StatsProbe(Probe):
    """Differences of ``INFO commandstats`` (both servers), ``INFO memory`` (state server) and
    of the CPU time of every process involved (this client, the workers, both servers)."""

    def __init__(self, env: Env, contender: Contender) -> None:
        self.env = env
        self.workers = contender.worker_pids
        self.pattern = contender.result_keys
        self._keys = (0, 0)
        self._calls: dict[str, int] = {}
        self._broker_calls: dict[str, int] = {}
        self._memory: dict[str, int] = {}
        self._cpu: dict[str, float] = {}

    def cpu(self) -> dict[str, float]:
        servers = {"broker": self.env.broker, "state": self.env.state}
        out = {name: procs.tree_cpu([s.proc.pid] if s.proc else []) for name, s in servers.items()}
        out["client"] = time.process_time()
        out["workers"] = procs.tree_cpu(self.workers())
        return out

    def begin(self) -> None:
        if self.pattern:
            self._keys = self.env.state.key_bytes(self.pattern)
        self._calls = self.env.state.command_calls()
        self._broker_calls = self.env.broker.command_calls()
        self._memory = self.env.state.memory()
        self._cpu = self.cpu()

    def end(self, result: RunResult) -> None:
        cpu = self.cpu()
        result.extra["cpu_s"] = {k: v - self._cpu.get(k, 0.0) for k, v in cpu.items()}
        result.state_calls = _diff(self.env.state.command_calls(), self._calls)
        result.broker_calls = _diff(self.env.broker.command_calls(), self._broker_calls)
        after = self.env.state.memory()
        result.state_memory = {k: after[k] - self._memory.get(k, 0) for k in after}
        if self.pattern:
            keys, size = self.env.state.key_bytes(self.pattern)
            result.state_memory["added_keys"] = keys - self._keys[0]
            result.state_memory["added_key_bytes"] = size - self._keys[1]


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in out.items() if v}


class Contender(ABC):
    """One system under test with a fixed number of worker processes (0: in-process)."""

    family: str = ""
    label: str = ""
    result_keys: str = ""  # SCAN pattern of the keys its results/state live in (memory)
    workloads: tuple[str, ...] | None = None  # the workloads it runs (None: every one)

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.spy_prefix: list[str] = []  # run the worker under this (py-spy) when profiling
        self.stop_signal = signal.SIGTERM

    def supports(self, workload: str) -> bool:
        return self.workloads is None or workload in self.workloads

    def worker_pids(self) -> list[int]:
        """Root pids of the session's worker processes (for CPU accounting)."""
        return []

    @property
    def name(self) -> str:
        return f"{self.family}-{self.workers}w" if self.workers else self.family

    @property
    def title(self) -> str:
        if not self.workers:
            return self.label
        return f"{self.label}, {self.workers} worker{'s' if self.workers > 1 else ''}"

    def start(self, env: Env, wiring: Wiring) -> None:
        """Start the session's worker processes (none for in-process contenders)."""

    def stop(self) -> None:
        """Stop the session's workers and finish anything measured from their records."""

    @abstractmethod
    def execute(self, workload: str, result: RunResult, probe: Probe, sizes: Sizes) -> None:
        """Run one workload, filling ``result`` (timings, latencies); raise on failure."""

    def run(self, workload: str, rep: int, probe: Probe, sizes: Sizes) -> RunResult:
        result = RunResult(self.name, workload, rep, task_runs=sizes.task_runs(workload))
        try:
            self.execute(workload, result, probe, sizes)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            result.ok = False
            result.error = f"{type(exc).__name__}: {exc}"
            result.extra["traceback"] = traceback.format_exc(limit=8)
        return result


async def bounded_gather(aws: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """Await all of ``aws`` with at most ``limit`` in progress; results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[T]) -> T:
        async with gate:
            return await aw

    return list(await asyncio.gather(*(one(a) for a in aws)))


def stream_sent(
    server: RedisServer, stream: str, since_ms: int, key: Callable[[Any], str]
) -> dict[str, float]:
    """When each message went onto ``stream`` (the entry id's Redis time, in s), by ``key`` of
    the decoded taskiq message; the first entry wins (retries and re-queues add more)."""
    out: dict[str, float] = {}
    entries: Any = server.client.xrange(stream, min=f"{since_ms}-0") or []
    for entry_id, fields in entries:
        ident = key(json.loads(fields["data"]))
        out.setdefault(ident, int(str(entry_id).split("-")[0]) / 1000)
    return out


def redis_ms(server: RedisServer) -> int:
    seconds, micros = server.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def latencies(sent: dict[str, float], done: dict[str, float]) -> list[float]:
    """Milliseconds from enqueue to completion for every task with both times."""
    return [(done[k] - sent[k]) * 1000 for k in done if k in sent]


def set_latency(result: RunResult, sent: dict[str, float], done: dict[str, float]) -> None:
    """Summarize per-task latency (enqueue to completion) into ``result``."""
    values = latencies(sent, done)
    result.latency_ms = latency_summary(values)
    result.latency_samples = len(values)
    result.extra["latency_missing"] = len(done) - len(values)


def clock() -> float:
    return time.perf_counter()
