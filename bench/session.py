"""Running contenders: one session (workers up, workloads, workers down) at a time."""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

from bench import procs
from bench.contenders.base import Contender, Env, Probe, StatsProbe
from bench.model import RunResult, Sizes
from bench.stats import fmt
from bench.wiring import Wiring


def wiring_for(env: Env, contender: Contender, tag: str, done_ttl: float = 0.0) -> Wiring:
    return Wiring(
        broker_url=env.broker.url(),
        state_url=env.state.url(),
        queue=f"bench-{contender.name}-{tag}-{uuid.uuid4().hex[:6]}",
        concurrency=env.concurrency,
        done_ttl=done_ttl,
        stamp_dir=str(env.workdir / "stamps"),
    )


def warmup_sizes(sizes: Sizes) -> Sizes:
    return replace(
        sizes, swarm_n=100, chain_n=5, callbacks_n=50, big_swarm_n=100, burst_n=20, run_timeout=60.0
    )


def describe(r: RunResult) -> str:
    if not r.ok:
        return f"FAILED: {r.error}"
    lat = r.latency_ms
    text = f"{fmt(r.throughput)} tasks/s, e2e {r.e2e_s:.3f} s"
    if lat:
        text += f", task latency p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms"
    return text


def run_session(
    env: Env,
    contender: Contender,
    workloads: Sequence[str],
    rep: int,
    *,
    probe_for: Callable[[str], Probe] | None = None,
    warmup: bool = True,
    log: Callable[[str], None] = print,
) -> list[RunResult]:
    """Start the contender's workers on emptied servers, run each workload once, stop them.

    A failed run (a timeout, a crash) ends the session; the remaining workloads run in a fresh
    one, so leftovers of the failed run cannot slow them down.
    """
    results: list[RunResult] = []
    todo = [w for w in workloads if contender.supports(w)]
    while todo:
        env.broker.reset()
        env.state.reset()
        session: list[RunResult] = []
        contender.start(env, wiring_for(env, contender, f"r{rep}"))
        try:
            if warmup:
                for workload in todo:
                    contender.run(workload, -1, Probe(), warmup_sizes(env.sizes))
            while todo:
                workload = todo.pop(0)
                probe = probe_for(workload) if probe_for else StatsProbe(env, contender)
                gc.collect()  # (not inside the timed run: earlier runs left garbage here)
                idle = procs.wait_quiet()
                started = time.monotonic()
                result = contender.run(workload, rep, probe, env.sizes)
                result.extra["wall_s"] = time.monotonic() - started
                result.extra["idle_before"] = round(idle, 2)
                session.append(result)
                if not result.ok:
                    break
        finally:
            contender.stop()  # (Celery's latencies are complete only now)
        for r in session:
            log(f"  {contender.name:<20} {r.workload:<10} {describe(r)}")
        results += session
    return results
