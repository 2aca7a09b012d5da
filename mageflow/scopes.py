"""Two context-local scopes that change how signatures are written.

* The run scope: set while a task runs. In a durable task, the signatures it creates are remembered
  in order under the run's signature key, and a retry of the task gets the same ones back instead
  of creating new ones (so a retried task does not start its children twice).
* The batch scope (``abounded_field``): signature writes inside the block are collected and sent in
  one MULTI/EXEC on exit; whatever is started inside the block is dispatched only after that commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mageflow.compose import Plan
    from mageflow.signature import Signature
    from mageflow.workspace import Workspace

S = TypeVar("S", bound="Signature")


@dataclass(slots=True)
class RunScope:
    key: str
    durable: bool
    created: int = 0


_run: ContextVar[RunScope | None] = ContextVar("mageflow_run", default=None)


def enter_run(key: str, durable: bool) -> Any:
    return _run.set(RunScope(key, durable))


def exit_run(token: Any) -> None:
    _run.reset(token)


async def durable(client: Workspace, make: Callable[[], Awaitable[S]]) -> S:
    """Create a signature through ``make``, or inside a retried durable task reuse the one the
    earlier attempt created at the same position."""
    scope = _run.get()
    if scope is None or not scope.durable:
        return await make()
    index, scope.created = scope.created, scope.created + 1
    existing = await client.store.cached(scope.key, index)
    if existing is not None:
        record = await client.store.find(existing)
        if record is not None:
            sig = client.handle(record)
            sig.replayed = True  # an earlier attempt may have started it already
            return sig  # type: ignore[no-any-return, return-value, unused-ignore]
    sig = await make()
    await client.store.remember(scope.key, sig.key)
    return sig


@dataclass
class Batch:
    plans: list[Plan] = field(default_factory=list)
    kwargs: list[tuple[Signature, dict[str, str]]] = field(default_factory=list)
    launches: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


_batch: ContextVar[Batch | None] = ContextVar("mageflow_batch", default=None)


def current_batch() -> Batch | None:
    return _batch.get()


@asynccontextmanager
async def abounded_field(client: Workspace | None = None) -> AsyncIterator[Batch]:
    """Collect signature writes made inside the block into one atomic write at its end.

    Signatures signed, chains and swarms built and kwargs updated inside the block are written
    together in one MULTI/EXEC when the block exits; runs started inside (``aio_run_no_wait``) are
    dispatched only after that write commits. If the block raises, nothing is written or sent.
    ``add_tasks`` on an existing swarm is not batched (it writes at once).
    """
    from mageflow.errors import ConfigurationError
    from mageflow.workspace import current

    client = client or current()
    if client is None:
        raise ConfigurationError("no mageflow client yet: create one first, e.g. mf = Mageflow()")
    await client.ensure_started()
    batch = Batch()
    token = _batch.set(batch)
    try:
        yield batch
    finally:
        _batch.reset(token)
    await commit(client, batch)


async def commit(client: Workspace, batch: Batch) -> None:
    groups = [
        (plan.records, [(sig.key, new, parent, owner) for sig, new, parent, owner in plan.moves])
        for plan in batch.plans
    ]
    moved = {id(sig): new for plan in batch.plans for sig, new, _p, _o in plan.moves}
    updates = [(moved.get(id(sig), sig.key), fields) for sig, fields in batch.kwargs]
    answers = iter(await client.store.create_many(groups, updates))
    for plan in batch.plans:
        for sig, new_key, parent, owner in plan.moves:
            await plan.settle(sig, new_key, parent, owner, next(answers))
    for launch in batch.launches:
        await launch()
