"""Suspend, interrupt, resume and cancel: one atomic script per request, then its actions.

The control script changes the status of the signature and (for chains and swarms) of everything
inside it in one step, so a worker finishing a task at the same instant either lands before it (and
the control sees a finished task) or after it (and its finish is ignored, or parked for resume).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mageflow.errors import InvalidTransitionError, SignatureNotFoundError, TaskAlreadyRunningError

if TYPE_CHECKING:
    from mageflow.client import Mageflow

ACTIONS = ("suspend", "interrupt", "resume", "cancel")


async def control(client: Mageflow, key: str, action: str) -> None:
    """Apply ``action`` to the signature under ``key``; typed errors when it is not allowed."""
    if action not in ACTIONS:
        raise ValueError(f"unknown lifecycle action {action!r}; use one of {ACTIONS}")
    await client.ensure_started()
    record = await client.store.load(key)  # follows forwarding notes to the current key
    answer = await client.store.control(record.key, action)
    if isinstance(answer, tuple):
        reason, status = answer[0], answer[1]
        if reason == "missing":
            raise SignatureNotFoundError(key)
        if reason == "running":
            raise TaskAlreadyRunningError(record.key)
        if reason == "orphan":  # pending, but what would have started it already finished
            raise InvalidTransitionError(record.key, answer[2], action, parent_status=status)
        raise InvalidTransitionError(record.key, status, action)
    await client.runtime.carry_out(answer)
