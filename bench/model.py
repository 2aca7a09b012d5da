"""What one benchmark run records, and the workload sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

WORKLOADS = ("swarm", "chain", "callbacks")
WORKLOAD_TITLES = {
    "swarm": "(a) swarm of {swarm_n:,} tasks, max_concurrency {swarm_concurrency}, "
    "success callback",
    "chain": "(b) chain of {chain_n} steps",
    "callbacks": "(c) {callbacks_n:,} signed tasks, one success callback each",
}


@dataclass(frozen=True)
class Sizes:
    swarm_n: int = 2000
    swarm_concurrency: int = 50
    chain_n: int = 100
    callbacks_n: int = 2000
    run_timeout: float = 180.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(swarm_n=200, chain_n=20, callbacks_n=200, run_timeout=40.0)

    def title(self, workload: str) -> str:
        return WORKLOAD_TITLES[workload].format(**asdict(self))

    def task_runs(self, workload: str) -> int:
        """Task executions a workload makes (swarm members + callback, steps, tasks + callbacks)."""
        if workload == "swarm":
            return self.swarm_n + 1
        if workload == "chain":
            return self.chain_n
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
