"""Tasks the test holds until it opens a gate: the operating tests (command line and web viewer)
run workflows that must still be running while they look at or steer them."""

from __future__ import annotations

import asyncio
from typing import Any

from mageflow import Mageflow


class Gates:
    """Tasks named "work" wait on ``open`` when told to hold; ``started`` lists their tags."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started: list[str] = []


def register_gated_tasks(mf: Mageflow) -> Gates:
    """Register "work" (records its tag, holds on ``hold``, raises on ``fail``, returns its tag)
    and "report" (a callback that does nothing) on ``mf``."""
    gates = Gates()

    @mf.task(name="work")
    async def work(msg: dict[str, Any]) -> Any:
        gates.started.append(msg.get("tag", ""))
        if msg.get("hold"):
            await asyncio.wait_for(gates.open.wait(), 30)
        if msg.get("fail"):
            raise ValueError(f"bad {msg.get('tag')}")
        return msg.get("tag")

    @mf.task(name="report")
    async def report(msg: dict[str, Any]) -> None:
        return None

    return gates
