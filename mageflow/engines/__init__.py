"""Task engines. The core talks to them only through :class:`~mageflow.engines.base.Engine`."""

from __future__ import annotations

from typing import Any

from mageflow.engines.base import Engine, Runner, RunOutcome
from mageflow.errors import ConfigurationError

__all__ = ["Engine", "RunOutcome", "Runner", "resolve_engine"]


def resolve_engine(engine_client: Any) -> Engine:
    """Pick the engine for what the user handed to ``Mageflow(...)``.

    Engine libraries are imported only when their objects are passed in, so the core runs without
    Taskiq or Hatchet installed.
    """
    if engine_client is None:
        from mageflow.engines.inproc import InProcEngine

        return InProcEngine()
    if isinstance(engine_client, Engine):
        return engine_client
    module = type(engine_client).__module__
    if module.startswith("taskiq"):
        from mageflow.engines.taskiq import TaskiqEngine  # type: ignore[import-not-found, unused-ignore]

        return TaskiqEngine(engine_client)  # type: ignore[no-any-return, unused-ignore]
    if module.startswith("hatchet_sdk"):
        from mageflow.engines.hatchet import HatchetEngine  # type: ignore[import-not-found, unused-ignore]

        return HatchetEngine(engine_client)  # type: ignore[no-any-return, unused-ignore]
    raise ConfigurationError(
        f"unsupported engine client {type(engine_client).__qualname__}: pass None (in-process), a "
        "taskiq AsyncBroker, a hatchet_sdk.Hatchet, or a mageflow Engine."
    )
