"""Suspend, interrupt, resume and cancel: one atomic script per request, then its follow-ups.

The control script changes the status of the signature and (for chains and swarms) of everything
inside it in one step, so a worker finishing a task at the same instant either lands before it (and
the control sees a finished task) or after it (and its finish is ignored, or parked for resume).
What the request sends (resumed messages, a canceled container's callbacks) is in the outbox by
the time the script returns, like every other transition's follow-ups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mageflow.errors import (
    InvalidArgumentError,
    InvalidTransitionError,
    SignatureNotFoundError,
    TaskAlreadyRunningError,
    UnknownActionError,
)
from mageflow.store.schema import Action, Control, Verdict

if TYPE_CHECKING:
    from mageflow.store.redis_store import Store
    from mageflow.workspace import Workspace


async def control(client: Workspace, key: str, action: Control | str) -> None:
    """Apply ``action`` to the signature under ``key``; typed errors when it is not allowed."""
    _request(key, action)  # a bad request is refused before Redis is touched
    await client.ensure_started()
    actions = await apply_control(client.store, key, action)
    await client.sender.send(actions, raise_errors=True)


def _request(key: object, action: Control | str) -> Control:
    try:
        request = Control(action)
    except ValueError:
        raise UnknownActionError(action, [c.value for c in Control]) from None
    if not isinstance(key, str):
        raise InvalidArgumentError("a signature key", "a string (Signature.key)", key)
    return request


async def apply_control(store: Store, key: str, action: Control | str) -> list[Action]:
    """Commit ``action`` on the signature under ``key`` and return its follow-ups, which are
    queued in the outbox already: a caller that cannot send them (the command line, with no
    engine of the app) leaves them to recovery. Typed errors when it is not allowed."""
    request = _request(key, action)
    record = await store.load(key)  # follows forwarding notes to the current key
    answer = await store.control(record.key, request)
    verdict, status = answer.verdict, answer.detail[0]
    if verdict is Verdict.MISSING:
        raise SignatureNotFoundError(key)
    if verdict is Verdict.RUNNING:
        raise TaskAlreadyRunningError(record.key)
    if verdict is Verdict.ORPHAN:  # pending, but what would have started it already finished
        raise InvalidTransitionError(record.key, answer.detail[1], request, parent_status=status)
    if verdict is not Verdict.OK:
        raise InvalidTransitionError(record.key, status, request)
    return answer.actions()
