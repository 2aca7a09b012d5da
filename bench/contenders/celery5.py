"""Celery 5 on Redis: a chord for the swarm, a chain, and ``link`` callbacks.

Workers: ``celery -A bench.celery_app worker -P threads -c 50`` (one process each; 50 threads
match the 50 asyncio slots of a Taskiq worker), with gossip, mingle and heartbeats off. Celery has
no per-workflow concurrency limit, so the chord's members run as fast as the workers take them.
The 10,000-task swarm is left out: a 10,000-member chord takes about a minute per run here, and
the throughput targets it serves compare mageflow with raw Taskiq only.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from celery import chain, chord  # type: ignore[import-untyped]
from celery.result import AsyncResult, ResultSet  # type: ignore[import-untyped]

from bench import celery_app, procs
from bench.celery_app import app, celery_collect, celery_noop
from bench.contenders.base import SETTLE_S, Contender, Env, Probe, clock, set_latency
from bench.model import RunResult, Sizes
from bench.wiring import Wiring

QUEUE = "bench-celery"


def _id() -> str:
    return str(uuid.uuid4())


def _swarm(sizes: Sizes, timeout: float) -> list[str]:
    ids = [_id() for _ in range(sizes.swarm_n)]
    header = [celery_noop.s(1).set(task_id=i) for i in ids]
    body_id = _id()
    value = chord(header)(celery_collect.s().set(task_id=body_id)).get(timeout=timeout)
    if value != sizes.swarm_n:
        raise AssertionError(f"chord callback returned {value!r}")
    return [*ids, body_id]


def _chain(sizes: Sizes, timeout: float) -> list[str]:
    ids = [_id() for _ in range(sizes.chain_n)]
    steps = [celery_noop.s(0).set(task_id=ids[0])]
    steps += [celery_noop.s().set(task_id=i) for i in ids[1:]]
    value = chain(*steps).apply_async().get(timeout=timeout)
    if value != sizes.chain_n:
        raise AssertionError(f"chain returned {value!r}")
    return ids


def _callbacks(sizes: Sizes, timeout: float) -> list[str]:
    ids, callback_ids = [], []
    for i in range(sizes.callbacks_n):
        task_id, callback_id = _id(), _id()
        link = celery_noop.s().set(task_id=callback_id)
        celery_noop.apply_async((i,), task_id=task_id, link=link)
        ids.append(task_id)
        callback_ids.append(callback_id)
    results = ResultSet([AsyncResult(c, app=app) for c in callback_ids])
    values = results.get(timeout=timeout)
    if list(values) != [i + 2 for i in range(sizes.callbacks_n)]:
        raise AssertionError("wrong callback results")
    return ids + callback_ids


def _burst(sizes: Sizes, timeout: float) -> list[str]:
    ids, last = [], []
    for i in range(sizes.burst_n):
        step_ids = [_id() for _ in range(sizes.burst_len)]
        steps = [celery_noop.s(i).set(task_id=step_ids[0])]
        steps += [celery_noop.s().set(task_id=j) for j in step_ids[1:]]
        chain(*steps).apply_async()
        ids += step_ids
        last.append(step_ids[-1])
    values = ResultSet([AsyncResult(j, app=app) for j in last]).get(timeout=timeout)
    if list(values) != [i + sizes.burst_len for i in range(sizes.burst_n)]:
        raise AssertionError("wrong chain results")
    return ids


DRIVERS = {"swarm": _swarm, "chain": _chain, "callbacks": _callbacks, "burst": _burst}


class Celery5(Contender):
    family = "celery"
    label = "Celery 5 (threads, -c 50)"
    result_keys = "celery-task-meta-*"
    workloads = tuple(DRIVERS)

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.env: Env | None = None
        self.wiring: Wiring | None = None
        self.procs: list[procs.Proc] = []
        self.stamp_dir: Path | None = None
        self.pending: list[tuple[RunResult, dict[str, float]]] = []

    def session_wiring(self, wiring: Wiring) -> Wiring:
        """Celery's queue name is fixed per process (the servers are emptied between sessions)."""
        return Wiring(
            wiring.broker_url,
            wiring.state_url,
            QUEUE,
            wiring.namespace,
            wiring.concurrency,
            wiring.done_ttl,
            wiring.stamp_dir,
        )

    def start(self, env: Env, wiring: Wiring) -> None:
        wiring = self.session_wiring(wiring)
        self.env, self.wiring = env, wiring
        celery_app.configure(wiring)
        celery_app.published.clear()
        self.stamp_dir = Path(wiring.stamp_dir)
        self.stamp_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.workers):
            argv = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.celery_app",
                "worker",
                "-P",
                "threads",
                "-c",
                str(wiring.concurrency),
                "-n",
                f"bench{i}@%h",
                "-Q",
                QUEUE,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
            ]
            log = env.workdir / "logs" / f"celery-{self.name}-{i}-{uuid.uuid4().hex[:6]}.log"
            self.procs.append(procs.spawn(f"{self.name}-{i}", argv, log, wiring.to_env()))
        for proc in self.procs:
            proc.wait_for("celery worker ready", timeout=60)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        while self.procs:
            procs.stop(self.procs.pop(), timeout=20)
        sent = dict(celery_app.published)
        if self.stamp_dir is not None:
            for path in self.stamp_dir.glob("celery-published-*.json"):
                sent.update(json.loads(path.read_text()))
                path.unlink()
        for result, done in self.pending:
            set_latency(result, sent, done)
        self.pending.clear()

    def execute(self, workload: str, result: RunResult, probe: Probe, sizes: Sizes) -> None:
        assert self.env is not None
        dead = [p for p in self.procs if not p.alive()]
        if dead:
            raise RuntimeError(f"worker exited:\n{dead[0].text()[-2000:]}")
        probe.begin()
        t0 = clock()
        ids = DRIVERS[workload](sizes, sizes.run_timeout)
        result.e2e_s = clock() - t0
        time.sleep(SETTLE_S)
        probe.end(result)
        self.pending.append((result, self._finished(ids)))

    def _finished(self, ids: list[str]) -> dict[str, float]:
        """When each task's result was stored (``date_done`` of its result meta), in s."""
        assert self.env is not None
        done: dict[str, float] = {}
        client = self.env.state.client
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for task_id, raw in zip(
                chunk, client.mget([f"celery-task-meta-{i}" for i in chunk]), strict=True
            ):
                if raw:
                    stamp = datetime.fromisoformat(json.loads(raw)["date_done"])
                    if stamp.tzinfo is None:
                        stamp = stamp.replace(tzinfo=UTC)
                    done[task_id] = stamp.timestamp()
        return done
