"""The mageflow side of the benchmark: two trivial tasks, and the clients that run them.

Workers load ``bench.mf_app:worker_client`` (``python -m mageflow.engines.taskiq_worker``); the
bench process builds producers and embedded clients with the same :func:`register`.
"""

from __future__ import annotations

import time
from typing import Annotated

from pydantic import BaseModel

from bench.wiring import Wiring, stream_broker
from mageflow import Mageflow, MageflowConfig, ReturnValue, TTLConfig
from mageflow.engines.base import Runner
from mageflow.engines.inproc import InProcEngine
from mageflow.envelope import Envelope
from mageflow.tasks import TaskDef

NOOP = "bench_noop"
COLLECT = "bench_collect"


class Num(BaseModel):
    # A chain step or a callback gets the previous result here; a first step gets its input.
    x: Annotated[int, ReturnValue()] = 0


class Many(BaseModel):
    values: Annotated[list[int], ReturnValue()]


def register(mf: Mageflow) -> None:
    """Register the two trivial tasks on ``mf``."""

    @mf.task(name=NOOP)
    async def bench_noop(msg: Num) -> int:
        return msg.x + 1

    @mf.task(name=COLLECT)
    async def bench_collect(msg: Many) -> int:
        return len(msg.values)


def config(w: Wiring) -> MageflowConfig:
    ttl = TTLConfig(done_ttl=w.done_ttl) if w.done_ttl > 0 else TTLConfig()
    return MageflowConfig(namespace=w.namespace, ttl=ttl)


def worker_client() -> Mageflow:
    """The app of ``python -m mageflow.engines.taskiq_worker bench.mf_app:worker_client``."""
    w = Wiring.from_env()
    mf = Mageflow(stream_broker(w), w.state_url, config=config(w))
    register(mf)
    return mf


def producer_client(w: Wiring) -> Mageflow:
    mf = Mageflow(stream_broker(w), w.state_url, config=config(w))
    register(mf)
    return mf


class StampedInProc(InProcEngine):
    """mageflow's in-process engine, noting when each signature is handed to it and when its
    run returned (finish committed, follow-ups dispatched), for per-task latency."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[str, float] = {}
        self.done: dict[str, float] = {}

    async def dispatch(self, task: TaskDef | str, envelope: Envelope) -> str | None:
        self.sent.setdefault(envelope.sig, time.time())
        return await super().dispatch(task, envelope)

    async def _run(self, entry: tuple[TaskDef, Runner], envelope: Envelope) -> None:
        await super()._run(entry, envelope)
        self.done[envelope.sig] = time.time()


def embedded_client(w: Wiring) -> tuple[Mageflow, StampedInProc]:
    engine = StampedInProc()
    mf = Mageflow(engine, w.state_url, config=config(w))
    register(mf)
    return mf, engine
