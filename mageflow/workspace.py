"""What the signature layer and the worker runners see of a client: a narrow interface.

Handles (signatures, chains, swarms), composing, lifecycle and the batch scope talk to a
``Workspace``, not to :class:`~mageflow.Mageflow`: the parts of the kernel they use (the store,
the sender, the runtime, the notifier) and the few registry look-ups signing needs. The client
implements it; nothing below the client imports the client. This module imports nothing of
mageflow at run time, so every layer may use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mageflow.config import MageflowConfig
    from mageflow.engines.base import Engine
    from mageflow.runtime import Runtime
    from mageflow.sender import Sender
    from mageflow.signature import Signature
    from mageflow.store.keys import KeySchema
    from mageflow.store.records import Record
    from mageflow.store.redis_store import Store
    from mageflow.tasks import TaskDef
    from mageflow.waiting import Notifier


@runtime_checkable
class Workspace(Protocol):
    keys: KeySchema
    config: MageflowConfig
    engine: Engine

    @property
    def store(self) -> Store: ...

    @property
    def sender(self) -> Sender: ...

    @property
    def runtime(self) -> Runtime: ...

    @property
    def notifier(self) -> Notifier: ...

    async def ensure_started(self) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def resolve_task(self, ref: Any) -> TaskDef: ...

    def task_meta(self, name: str) -> dict[str, Any] | None: ...

    def handle(self, record: Record) -> Signature: ...

    async def load_signature(self, key: str) -> Signature: ...

    async def duplicate(self, sig: Signature, **kwargs: Any) -> Signature: ...

    async def sign(self, task: Any, /, *args: Any, **kwargs: Any) -> Signature: ...


_current: Workspace | None = None


def set_current(workspace: Workspace) -> None:
    global _current
    _current = workspace


def current() -> Workspace | None:
    """The most recently created client, if any (what ``mageflow.sign(...)`` and friends use)."""
    return _current
