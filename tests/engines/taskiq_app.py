"""Worker app of the Taskiq engine tests.

Run as ``python -m mageflow.engines.taskiq_worker taskiq_app:mf``.

Only worker processes import this module; the tests sign its tasks by name. Every task records
what it did under the test's namespace (``<ns>:t:...``), with the worker's pid, so the tests can
check which process ran what and how often.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from pydantic import BaseModel
from taskiq_app_brokers import broker_from_env

from mageflow import Mageflow, MageflowConfig, ReturnValue, TaskError
from mageflow.engines.taskiq import TaskiqEngine, TaskiqTaskContext

NS = os.environ["MFT_NAMESPACE"]
PID = str(os.getpid())

mf = Mageflow(
    TaskiqEngine(broker_from_env(), run_here=os.environ.get("MFT_RUN_HERE", "1") == "1"),
    os.environ["MFT_REDIS_URL"],
    config=MageflowConfig(namespace=NS, lease_seconds=float(os.environ.get("MFT_LEASE", "30"))),
)


def key(*parts: object) -> str:
    return ":".join([NS, "t", *map(str, parts)])


async def record(*parts: object, value: Any = PID) -> None:
    await mf.store.redis.rpush(key(*parts), value if isinstance(value, str) else json.dumps(value))


class Num(BaseModel):
    x: int


class Prev(BaseModel):
    prev: ReturnValue[int]
    amount: int = 0


class Item(BaseModel):
    i: int
    sleep: float = 0.0


class ItemDone(BaseModel):
    value: ReturnValue[int]
    i: int


class Ok(BaseModel):
    value: ReturnValue[Any]
    tag: str


class Failed(BaseModel):
    error: TaskError
    tag: str


class Slow(BaseModel):
    tag: str
    seconds: float


@mf.task(name="double")
async def double(msg: Num) -> int:
    await record("double", msg.x)
    return msg.x * 2


@mf.task(name="add")
async def add(msg: Prev) -> int:
    await record("add", msg.prev)
    return msg.prev + msg.amount


@mf.task(name="boom")
async def boom(msg: Num) -> int:
    await record("boom", msg.x)
    raise ValueError(f"boom {msg.x}")


@mf.task(name="on_ok")
async def on_ok(msg: Ok) -> None:
    await record("ok", msg.tag, value={"value": msg.value, "pid": PID})


@mf.task(name="on_err")
async def on_err(msg: Failed) -> None:
    await record("err", msg.tag, value={"type": msg.error.type, "message": msg.error.message})


@mf.task(name="member")
async def member(msg: Item) -> int:
    await record("member", msg.i)
    await asyncio.sleep(msg.sleep)
    return msg.i * msg.i


@mf.task(name="member_ok")
async def member_ok(msg: ItemDone) -> None:
    await record("member_ok", msg.i, value={"value": msg.value, "pid": PID})


@mf.task(name="flaky", retries=2)
async def flaky(msg: Num, ctx: TaskiqTaskContext) -> int:
    await record("flaky", msg.x, value={"attempt": ctx.attempt, "pid": PID})
    if ctx.attempt < 2:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return msg.x


@mf.task(name="slow")
async def slow(msg: Slow) -> str:
    await mf.store.redis.set(key("started", msg.tag), PID)
    await asyncio.sleep(msg.seconds)
    await mf.store.redis.set(key("finished", msg.tag), PID)
    return msg.tag


class FailWhen(BaseModel):
    tag: str


@mf.task(name="fail_when")
async def fail_when(msg: FailWhen) -> None:
    """Fail as soon as the ``slow`` task tagged ``tag`` has started (on any worker)."""
    await record("fail_when", msg.tag)
    for _ in range(200):
        if await mf.store.redis.exists(key("started", msg.tag)):
            raise RuntimeError(f"{msg.tag} started; failing")
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{msg.tag} never started")


class MapItem(BaseModel):
    value: ReturnValue[int]
    sleep: float = 0.0


@mf.task(name="square_item")
async def square_item(msg: MapItem) -> int:
    await record("square_item", msg.value)
    await asyncio.sleep(msg.sleep)
    return msg.value * msg.value


@mf.task(name="item_done")
async def item_done(msg: Ok) -> None:
    await record("item_done", msg.value, value={"value": msg.value, "pid": PID})


@mf.task(name="limited", rate_limit="10/s")
async def limited(msg: Num) -> int:
    """Rate limited across every worker (tests/engines/test_taskiq_scheduling.py)."""
    await record("limited", value={"x": msg.x, "pid": PID, "at": time.time()})
    return msg.x


class Step(BaseModel):
    prev: ReturnValue[int] = 0
    tag: str
    seconds: float = 0.0


@mf.task(name="step")
async def step(msg: Step, ctx: TaskiqTaskContext) -> int:
    """One step of a chain (tests/engines/test_taskiq_run_here.py): records how many ``step``
    bodies of its tag run at once on this worker, and what taskiq context it got."""
    redis = mf.store.redis
    running = await redis.incr(key("running", msg.tag))
    try:
        message = ctx.taskiq.message if ctx.taskiq is not None else None
        await record(
            "step",
            msg.tag,
            msg.prev,
            value={
                "pid": PID,
                "running": running,
                "task": message.task_name if message else None,
                "kwargs": sorted(message.kwargs) if message else None,
            },
        )
        await asyncio.sleep(msg.seconds)
    finally:
        await redis.decr(key("running", msg.tag))
    return msg.prev + 1
