"""Fixtures of the web viewer's tests: an app on the test's namespace, and tasks held on gates
the test opens (helpers are in ui_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from gated import Gates, register_gated_tasks

from mageflow import Mageflow, MageflowConfig


@pytest.fixture
def config(namespace: str) -> MageflowConfig:
    # A short lease: the app's keeper sends what a resume from the viewer queued within ~0.3 s.
    return MageflowConfig(namespace=namespace, lease_seconds=1.0)


@pytest.fixture
async def gates(mf: Mageflow) -> AsyncIterator[Gates]:
    gates = register_gated_tasks(mf)
    yield gates
    gates.open.set()


@pytest.fixture
def make_app(redis_url: str, namespace: str) -> Any:
    from mageflow.ui.app import create_app  # here: the tests skip if the ui extra is missing

    def build(**options: Any) -> Any:
        return create_app(url=redis_url, namespace=namespace, **options)

    return build
