"""Fixtures of the web viewer's tests: an app on the test's namespace, and tasks held on gates
the test opens (helpers are in ui_harness.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ui_harness import Gates

from mageflow import Mageflow, MageflowConfig


@pytest.fixture
def config(namespace: str) -> MageflowConfig:
    # A short lease: the app's keeper sends what a resume from the viewer queued within ~0.3 s.
    return MageflowConfig(namespace=namespace, lease_seconds=1.0)


@pytest.fixture
async def gates(mf: Mageflow) -> AsyncIterator[Gates]:
    g = Gates()

    @mf.task(name="work")
    async def work(msg: dict[str, Any]) -> Any:
        g.started.append(msg.get("tag", ""))
        if msg.get("hold"):
            await asyncio.wait_for(g.open.wait(), 30)
        if msg.get("fail"):
            raise ValueError(f"bad {msg.get('tag')}")
        return msg.get("tag")

    @mf.task(name="report")
    async def report(msg: dict[str, Any]) -> None:
        return None

    yield g
    g.open.set()


@pytest.fixture
def make_app(redis_url: str, namespace: str) -> Any:
    from mageflow.ui.app import create_app  # here: the tests skip if the ui extra is missing

    def build(**options: Any) -> Any:
        return create_app(url=redis_url, namespace=namespace, **options)

    return build
