"""What the client builds: ``sign``, ``chain``, ``swarm``, ``map`` and the handles of stored
signatures, as a mixin of :class:`~mageflow.Mageflow` (kept apart so the client module holds
its life cycle: registration, start, close, rebind).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel

from mageflow import compose
from mageflow.config import SwarmConfig
from mageflow.containers import (
    Callbacks,
    ChainSignature,
    SwarmSignature,
    create_chain,
    create_map,
    create_swarm,
)
from mageflow.errors import InvalidArgumentError
from mageflow.scheduling import checked_delay, longest_wait
from mageflow.scopes import durable
from mageflow.signature import Signature, TaskSignature
from mageflow.store.records import Record
from mageflow.tasks import MageflowTask

if TYPE_CHECKING:
    from mageflow.client import Mageflow


class Building:
    """Mixed into Mageflow; every method takes the client as ``self``."""

    async def sign(
        self,
        task: str | MageflowTask | Signature,
        /,
        success_callbacks: Sequence[Any] | None = None,
        error_callbacks: Sequence[Any] | None = None,
        model_validators: type[BaseModel] | None = None,
        delay: float | timedelta | None = None,
        **kwargs: Any,
    ) -> Signature:
        """Store a signature: ``task`` plus bound ``kwargs`` and callbacks (signatures too).
        ``delay`` (seconds or a timedelta): its message waits that long once it is queued."""
        mf = _client(self)
        delay_ms = checked_delay(delay, longest_wait(mf.config.ttl, "task"))
        await mf.ensure_started()
        await mf._refresh_for([task])
        return await durable(
            mf,
            lambda: compose.sign(
                mf,
                task,
                success_callbacks=success_callbacks,
                error_callbacks=error_callbacks,
                model_validators=model_validators,
                kwargs=kwargs,
                delay_ms=delay_ms,
            ),
        )

    asign = sign

    async def load_signature(self, key: str) -> Signature:
        """The signature stored under ``key`` (raises SignatureNotFoundError)."""
        mf = _client(self)
        check_key(key)
        await mf.ensure_started()
        return mf.handle(await mf.store.load(key))

    def handle(self, record: Record) -> Signature:
        """The handle class for a stored record's kind."""
        mf = _client(self)
        if record.kind == "chain":
            return ChainSignature(mf, record)
        if record.kind == "swarm":
            return SwarmSignature(mf, record)
        return TaskSignature(mf, record)

    async def chain(
        self,
        tasks: Sequence[Any],
        name: str | None = None,
        success: Any = None,
        error: Any = None,
        success_callbacks: Sequence[Any] | None = None,
        error_callbacks: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> ChainSignature:
        """Store a chain: ``tasks`` (signatures, decorated tasks or names) run one after another.

        The first step gets the run's message plus the chain's ``kwargs``; each later step gets
        the previous result in its ReturnValue field. ``success``/``error`` are single callbacks,
        added to ``success_callbacks``/``error_callbacks``.
        """
        mf = _client(self)
        await mf.ensure_started()
        await mf._refresh_for(tasks)
        return await durable(
            mf,
            lambda: create_chain(
                mf,
                tasks,
                name=name,
                success_callbacks=_with(success_callbacks, success),
                error_callbacks=_with(error_callbacks, error),
                kwargs=kwargs,
            ),
        )

    achain = chain

    async def swarm(
        self,
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
        """Store a swarm: ``tasks`` run in parallel within ``config``'s limits.

        Every member gets the run's message plus the swarm's ``kwargs`` and its own bound kwargs.
        The swarm completes once it is closed (``is_swarm_closed=True`` or ``close_swarm()``) and
        every member has finished; its result is the list of member results in the order added.
        ``item_success_callbacks`` / ``item_error_callbacks``: each member gets its own copy of
        each, fired with that member's result (or message and error), once per member.
        """
        mf = _client(self)
        await mf.ensure_started()
        await mf._refresh_for(tasks or [])
        callbacks = Callbacks.of(
            success_callbacks, error_callbacks, item_success_callbacks, item_error_callbacks
        )
        return await durable(
            mf,
            lambda: create_swarm(
                mf,
                list(tasks or []),
                name=task_name,
                callbacks=callbacks,
                config=config or SwarmConfig(),
                closed=is_swarm_closed,
                kwargs=kwargs,
            ),
        )

    aswarm = swarm

    async def map(
        self,
        task: Any,
        *,
        config: SwarmConfig | None = None,
        success_callbacks: Sequence[Any] | None = None,
        error_callbacks: Sequence[Any] | None = None,
        item_success_callbacks: Sequence[Any] | None = None,
        item_error_callbacks: Sequence[Any] | None = None,
        items_field: str = "items",
        name: str | None = None,
        **kwargs: Any,
    ) -> SwarmSignature:
        """Store a map: when it runs, one copy of ``task`` per item of a list, in parallel
        within ``config``'s limits. The list is the previous step's result in a chain, else the
        message's ``items_field``. Each copy gets its item in its ReturnValue field (else
        ``results``) plus the map's ``kwargs``; the map's result is the item results in input
        order. ``task``: a task, its name, a signature or a chain (copied per item)."""
        mf = _client(self)
        await mf.ensure_started()
        await mf._refresh_for([task])
        callbacks = Callbacks.of(
            success_callbacks, error_callbacks, item_success_callbacks, item_error_callbacks
        )
        return await durable(
            mf,
            lambda: create_map(
                mf,
                task,
                name=name,
                callbacks=callbacks,
                config=config or SwarmConfig(),
                items_field=_field_name(items_field),
                kwargs=kwargs,
            ),
        )

    amap = map

    async def _refresh_for(self, refs: Sequence[Any]) -> None:
        mf = _client(self)
        names = [r for r in refs if isinstance(r, str)]
        if any(n not in mf._tasks and n not in mf._remote_meta for n in names):
            await mf.refresh_registry()

    async def duplicate(self, sig: Signature, **kwargs: Any) -> Signature:
        """A new pending signature with ``sig``'s task, kwargs (updated by ``kwargs``) and copies
        of its callbacks."""
        mf = _client(self)
        await sig.aload()
        new_key = mf.keys.new_signature()
        await compose.copy_tree(mf, sig.key, new_key, "", "", move=False)
        copy = await mf.load_signature(new_key)
        if kwargs:
            await copy.kwargs.aupdate(**kwargs)
        return copy


def check_key(key: Any) -> None:
    """Refuse a key that is not a string before it reaches Redis."""
    if not isinstance(key, str):
        raise InvalidArgumentError("a signature key", "a string (Signature.key)", key)


def _field_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError("items_field", "the name of a message field", name)
    return name


def _with(items: Sequence[Any] | None, extra: Any) -> list[Any]:
    out = list(items or [])
    if extra is not None:
        out.append(extra)
    return out


def _client(building: Building) -> Mageflow:
    """The client this mixin is part of (only Mageflow mixes it in)."""
    return cast("Mageflow", building)
