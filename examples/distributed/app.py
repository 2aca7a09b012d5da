"""The worker app: ``mageflow worker examples.distributed.app:mf --workers 2``.

Until the ``mageflow worker`` command is wired up, the same runs as
``python -m mageflow.engines.taskiq_worker examples.distributed.app:mf --workers 2``.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from examples.distributed.settings import make_client
from mageflow import ReturnValue
from mageflow.engines.taskiq import TaskiqTaskContext

mf = make_client()
WORKER = f"pid {os.getpid()}"


class Order(BaseModel):
    order_id: int


class Priced(BaseModel):
    order: ReturnValue[dict[str, object]]
    vat: float = 0.2


class Notice(BaseModel):
    invoice: ReturnValue[dict[str, object]]
    channel: str


class Image(BaseModel):
    name: str
    size: int


@mf.task(name="fetch-order")
async def fetch_order(msg: Order) -> dict[str, object]:
    await asyncio.sleep(0.2)
    return {"order_id": msg.order_id, "net": 10.0 * msg.order_id, "fetched_by": WORKER}


@mf.task(name="price-order")
async def price_order(msg: Priced) -> dict[str, object]:
    net = float(str(msg.order["net"]))
    return {**msg.order, "total": round(net * (1 + msg.vat), 2), "priced_by": WORKER}


@mf.task(name="send-invoice", retries=2)
async def send_invoice(msg: Notice, ctx: TaskiqTaskContext) -> dict[str, object]:
    if ctx.attempt == 0:  # a busy mail server: attempt 1 goes back through the queue
        raise ConnectionError("mail server busy")
    return {**msg.invoice, "sent_via": msg.channel, "sent_by": WORKER, "attempt": ctx.attempt}


@mf.task(name="resize-image")
async def resize_image(msg: Image) -> str:
    await asyncio.sleep(0.5)
    return f"{msg.name} -> {msg.size}px by {WORKER}"
