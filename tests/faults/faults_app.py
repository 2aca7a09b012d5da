"""Worker app of the fault-injection tests (`mageflow.engines.taskiq_worker faults_app:mf`).

Settings come from ``MFF_*`` environment variables set by ``harness.FaultCluster``: the state
Redis, the broker Redis, and a third URL where tasks *record* what they did. The records live
apart from the state on purpose: a test that destroys state writes (a truncated AOF) must still
see every time a task body ran, so it records on a Redis it does not touch.

Each record is a JSON object with the worker's pid and the wall-clock time the body ended, pushed
to the list ``<ns>:t:<part>:<part>...`` on the record Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import redis.asyncio as aioredis
from faults_brokers import make_broker
from pydantic import BaseModel

from mageflow import Mageflow, MageflowConfig, ReturnValue, TaskError
from mageflow.engines.taskiq import TaskiqEngine

NS = os.environ["MFF_NAMESPACE"]
PID = str(os.getpid())

mf = Mageflow(
    TaskiqEngine(
        make_broker(
            os.environ["MFF_BROKER_URL"],
            os.environ["MFF_QUEUE"],
            idle_ms=int(os.environ.get("MFF_IDLE_MS", "3000")),
            xread_count=int(os.environ.get("MFF_XREAD_COUNT", "4")),
        ),
        run_here=os.environ.get("MFF_RUN_HERE", "1") == "1",
    ),
    os.environ["MFF_STATE_URL"],
    config=MageflowConfig(
        namespace=NS,
        lease_seconds=float(os.environ.get("MFF_LEASE", "2")),
        accepted_grace_seconds=float(os.environ.get("MFF_GRACE", "2")),
    ),
)

_records = aioredis.Redis.from_url(os.environ["MFF_RECORD_URL"], decode_responses=True)


def key(*parts: object) -> str:
    return ":".join([NS, "t", *map(str, parts)])


async def record(*parts: object, **extra: Any) -> None:
    entry = {"pid": PID, "t": time.time(), **extra}
    await _records.rpush(key(*parts), json.dumps(entry))


class Num(BaseModel):
    x: int


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


@mf.task(name="member")
async def member(msg: Item) -> int:
    await asyncio.sleep(msg.sleep)
    await record("member", msg.i)
    return msg.i * msg.i


@mf.task(name="member_ok")
async def member_ok(msg: ItemDone) -> None:
    await record("member_ok", msg.i, value=msg.value)


@mf.task(name="swarm_ok")
async def swarm_ok(msg: Ok) -> None:
    await record("swarm_ok", msg.tag, value=msg.value)


@mf.task(name="on_err")
async def on_err(msg: Failed) -> None:
    await record("err", msg.tag, type=msg.error.type, message=msg.error.message)


@mf.task(name="slow")
async def slow(msg: Slow) -> str:
    await record("slow_started", msg.tag)
    await asyncio.sleep(msg.seconds)
    await record("slow_finished", msg.tag)
    return msg.tag
