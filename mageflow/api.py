"""Module-level shortcuts: ``mageflow.sign(...)`` and friends act on the most recent client."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from mageflow.client import current_client
from mageflow.signature import Signature


async def sign(
    task: Any,
    success_callbacks: Sequence[Any] | None = None,
    error_callbacks: Sequence[Any] | None = None,
    model_validators: type[BaseModel] | None = None,
    **kwargs: Any,
) -> Signature:
    """Store a signature for ``task`` (a registered name or a decorated task); see Mageflow.sign."""
    return await current_client().sign(
        task,
        success_callbacks=success_callbacks,
        error_callbacks=error_callbacks,
        model_validators=model_validators,
        **kwargs,
    )


asign = sign


async def load_signature(key: str) -> Signature:
    """The signature stored under ``key``."""
    return await current_client().load_signature(key)
