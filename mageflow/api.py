"""Module-level shortcuts: ``mageflow.sign(...)`` and friends act on the most recent client."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from mageflow.client import current_client
from mageflow.config import SwarmConfig
from mageflow.containers import ChainSignature, SwarmSignature
from mageflow.lifecycle import control
from mageflow.signature import Signature


async def sign(
    task: Any,
    /,
    success_callbacks: Sequence[Any] | None = None,
    error_callbacks: Sequence[Any] | None = None,
    model_validators: type[BaseModel] | None = None,
    delay: float | timedelta | None = None,
    **kwargs: Any,
) -> Signature:
    """Store a signature for ``task`` (a registered name or a decorated task); see Mageflow.sign."""
    return await current_client().sign(
        task,
        success_callbacks=success_callbacks,
        error_callbacks=error_callbacks,
        model_validators=model_validators,
        delay=delay,
        **kwargs,
    )


asign = sign


async def load_signature(key: str) -> Signature:
    """The signature stored under ``key``."""
    return await current_client().load_signature(key)


async def chain(
    tasks: Sequence[Any],
    name: str | None = None,
    success: Any = None,
    error: Any = None,
    success_callbacks: Sequence[Any] | None = None,
    error_callbacks: Sequence[Any] | None = None,
    **kwargs: Any,
) -> ChainSignature:
    """Store a chain of ``tasks``; see Mageflow.chain."""
    return await current_client().chain(
        tasks,
        name=name,
        success=success,
        error=error,
        success_callbacks=success_callbacks,
        error_callbacks=error_callbacks,
        **kwargs,
    )


achain = chain


async def swarm(
    tasks: Sequence[Any] | None = None,
    task_name: str | None = None,
    success_callbacks: Sequence[Any] | None = None,
    error_callbacks: Sequence[Any] | None = None,
    config: SwarmConfig | None = None,
    is_swarm_closed: bool = False,
    item_success_callbacks: Sequence[Any] | None = None,
    item_error_callbacks: Sequence[Any] | None = None,
    **kwargs: Any,
) -> SwarmSignature:
    """Store a swarm of ``tasks``; see Mageflow.swarm."""
    return await current_client().swarm(
        tasks,
        task_name=task_name,
        success_callbacks=success_callbacks,
        error_callbacks=error_callbacks,
        config=config,
        is_swarm_closed=is_swarm_closed,
        item_success_callbacks=item_success_callbacks,
        item_error_callbacks=item_error_callbacks,
        **kwargs,
    )


aswarm = swarm


async def map(
    task: Any,
    /,
    config: SwarmConfig | None = None,
    success_callbacks: Sequence[Any] | None = None,
    error_callbacks: Sequence[Any] | None = None,
    item_success_callbacks: Sequence[Any] | None = None,
    item_error_callbacks: Sequence[Any] | None = None,
    items_field: str = "items",
    name: str | None = None,
    **kwargs: Any,
) -> SwarmSignature:
    """Store a map of ``task`` over a list known only when it runs; see Mageflow.map."""
    return await current_client().map(
        task,
        config=config,
        success_callbacks=success_callbacks,
        error_callbacks=error_callbacks,
        item_success_callbacks=item_success_callbacks,
        item_error_callbacks=item_error_callbacks,
        items_field=items_field,
        name=name,
        **kwargs,
    )


amap = map


async def suspend(key: str) -> None:
    """Suspend the signature under ``key`` (see Signature.suspend)."""
    await control(current_client(), key, "suspend")


async def interrupt(key: str) -> None:
    """Interrupt the signature under ``key`` (see Signature.interrupt)."""
    await control(current_client(), key, "interrupt")


async def resume(key: str) -> None:
    """Resume the signature under ``key`` (see Signature.resume)."""
    await control(current_client(), key, "resume")


async def cancel(key: str) -> None:
    """Cancel the signature under ``key`` (see Signature.cancel)."""
    await control(current_client(), key, "cancel")
