"""What one benchmark run records, and the workload sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

WORKLOADS = ("swarm", "chain", "callbacks", "swarm10k", "burst")
#: ``--workloads new``: the scenarios issue 13 added (the size series runs apart, see scaling.py).
NEW_WORKLOADS = ("swarm10k", "burst")
WORKLOAD_TITLES = {
    "swarm": "(a) swarm of {swarm_n:,} tasks, max_concurrency {swarm_concurrency}, "
    "success callback",
    "chain": "(b) chain of {chain_n} steps",
    "callbacks": "(c) {callbacks_n:,} signed tasks, one success callback each",
    "swarm10k": "(d) swarm of {big_swarm_n:,} tasks, max_concurrency {swarm_concurrency}, "
    "success callback",
    "burst": "(e) burst of {burst_n:,} workflows started at once, each a chain of {burst_len}",
}


@dataclass(frozen=True)
class Sizes:
    swarm_n: int = 2000
    swarm_concurrency: int = 50
    chain_n: int = 100
    callbacks_n: int = 2000
    big_swarm_n: int = 10_000
    burst_n: int = 1000
    burst_len: int = 3
    run_timeout: float = 180.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            swarm_n=200, chain_n=20, callbacks_n=200, big_swarm_n=1000, burst_n=100,
            run_timeout=40.0,
        )  # fmt: skip

    def title(self, workload: str) -> str:
        return WORKLOAD_TITLES[workload].format(**asdict(self))

    def task_runs(self, workload: str) -> int:
        """Task executions a workload makes (swarm members + callback, steps, tasks + callbacks)."""
        if workload == "swarm":
            return self.swarm_n + 1
        if workload == "chain":
            return self.chain_n
        if workload == "swarm10k":
            return self.big_swarm_n + 1
        if workload == "burst":
            return self.burst_n * self.burst_len
        return 2 * self.callbacks_n


@dataclass
class RunResult:
    contender: str
    workload: str
    rep: int
    ok: bool = True
    error: str = ""
    task_runs: int = 0
    signatures: int = 0  # mageflow signatures written (tasks, callbacks, chains, swarms)
    e2e_s: float = 0.0  # first client call to last result seen by the client
    build_s: float = 0.0  # part of e2e spent storing the workflow before it starts (mageflow)
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_samples: int = 0
    state_calls: dict[str, int] = field(default_factory=dict)  # INFO commandstats deltas
    broker_calls: dict[str, int] = field(default_factory=dict)
    state_memory: dict[str, int] = field(default_factory=dict)  # INFO memory deltas
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.task_runs / self.e2e_s if self.ok and self.e2e_s > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["throughput"] = self.throughput
        return out
