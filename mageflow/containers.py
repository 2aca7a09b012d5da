"""Chains and swarms: signatures that contain other signatures.

A chain runs its steps one after another, each receiving the previous result; a swarm runs its
members in parallel under a concurrency limit. Both are signatures, so they take callbacks and
nest anywhere. Their progress is driven by the same completion script as plain tasks (lua/flow.lua).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mageflow.compose import Plan, check_callbacks, new_fields, new_parent_key
from mageflow.config import SwarmConfig
from mageflow.errors import (
    ConfigurationError,
    InvalidTransitionError,
    InvalidValueError,
    SignatureNotFoundError,
    SwarmClosedError,
    SwarmFullError,
)
from mageflow.mapping import attach_item_callbacks
from mageflow.models.message import TaskError
from mageflow.signature import Message, Signature
from mageflow.store import keys as K
from mageflow.store.records import NewRecord, Record, kwarg_fields, loads, message_dict
from mageflow.store.schema import FAILED_MARK, Answer, Field, Kind, SignatureStatus, Verdict

if TYPE_CHECKING:
    from mageflow.workspace import Workspace


def is_failed_result(value: Any) -> bool:
    """True for a swarm result slot that stands for a failed (or stopped) member."""
    return isinstance(value, dict) and FAILED_MARK in value


class ChainSignature(Signature):
    """Steps run in order; each gets the previous step's result in its ReturnValue field."""

    kind = "chain"

    @property
    def tasks(self) -> list[str]:
        """Keys of the steps, in order."""
        return self._record.key_list("steps")


class SwarmSignature(Signature):
    """Members run in parallel, at most ``config.max_concurrency`` at a time."""

    kind = "swarm"

    @property
    def config(self) -> SwarmConfig:
        r = self._record
        return SwarmConfig(
            max_concurrency=int(r.get(Field.MAX_CONCURRENCY, "30")),
            stop_after_n_failures=int(r.get(Field.FAIL_LIMIT)) if r.get(Field.FAIL_LIMIT) else None,
            max_task_allowed=int(r.get(Field.MAX_TASKS)) if r.get(Field.MAX_TASKS) else None,
        )

    @property
    def is_swarm_closed(self) -> bool:
        return self._record.get(Field.CLOSED) == "1"

    async def tasks(self) -> list[str]:
        """Keys of the members, in the order they were added."""
        return await self.client.store.member_keys(self.key)

    async def add_tasks(
        self, tasks: Sequence[Any], *, close: bool = False, **kwargs: Any
    ) -> list[Signature]:
        """Add members (signatures, decorated tasks or names); ``kwargs`` are bound to each new
        member. A running swarm starts them as slots free up; returns their signatures."""
        if self._record.get(Field.TEMPLATE):
            raise InvalidTransitionError(self.key, self.status.value, "add tasks to a map")
        plan = Plan(self.client, K.workflow_of(self.key))
        member_keys = [plan.child(t, self.key, self.key) for t in tasks]
        if kwargs:
            for rec in plan.records:
                rec.fields.update(kwarg_fields(kwargs))
        await plan.commit(immediate=True)
        if kwargs:
            for _sig, new_key, _p, _o in plan.moves:
                await self.client.store.update_kwargs(new_key, kwarg_fields(kwargs))
        await attach_item_callbacks(self.client, self._record, member_keys)
        answer = await self.client.store.swarm_add(self.key, member_keys, close)
        if answer.verdict is not Verdict.OK:
            await self.client.store.write_raw([], {r.key: "" for r in plan.records})
            raise _rejection(self.key, answer)
        if close:
            self._record.fields[Field.CLOSED] = "1"
        # The members' messages are in the outbox already; a failed send raises DispatchError
        # here and is retried.
        await self.client.sender.send(answer.actions(), raise_errors=True)
        return [self.client.handle(r) for r in await _records(self.client, member_keys)]

    async def aio_run_in_swarm(
        self, task: Any, msg: Message = None, *, close: bool = False
    ) -> list[Signature]:
        """Add one task (or a list) with ``msg`` bound to it, and start the swarm if it is not
        running yet."""
        tasks = list(task) if isinstance(task, list | tuple) else [task]
        added = await self.add_tasks(tasks, close=close, **message_dict(msg))
        await self._start_if_pending()
        return added

    async def aio_run_tasks_in_swarm(
        self, tasks: Sequence[Any], msgs: Sequence[Message], *, close: bool = False
    ) -> list[Signature]:
        """Add tasks paired with their own messages; start the swarm if it is not running yet."""
        if len(tasks) != len(msgs):
            raise InvalidValueError(
                "msgs", f"{len(msgs)} messages", f"pass one message per task ({len(tasks)} tasks)"
            )
        added: list[Signature] = []
        for i, (t, m) in enumerate(zip(tasks, msgs, strict=True)):
            last = i == len(tasks) - 1
            added += await self.add_tasks([t], close=close and last, **message_dict(m))
        await self._start_if_pending()
        return added

    async def _start_if_pending(self) -> None:
        await self.aload()
        if self.status is SignatureStatus.PENDING and not self._launched:
            await self.aio_run_no_wait(None)

    async def close_swarm(self) -> None:
        """No more members; once all have finished the swarm completes."""
        answer = await self.client.store.swarm_close(self.key)
        if answer.verdict is Verdict.MISSING:
            raise SignatureNotFoundError(self.key)
        self._record.fields[Field.CLOSED] = "1"
        await self.client.sender.send(answer.actions(), raise_errors=True)

    async def results(self) -> dict[str, Any]:
        """Each member's result by signature key (a TaskError for a failed member, None for one
        that has not finished)."""
        member_keys = await self.tasks()
        out: dict[str, Any] = {}
        for key, rec in zip(
            member_keys, await self.client.store.load_many(member_keys), strict=True
        ):
            out[key] = _member_result(rec)
        return out


def _member_result(rec: Record | None) -> Any:
    if rec is None:
        return None
    if rec.status == SignatureStatus.DONE:
        return loads(rec.get(Field.RESULT, "null"))
    if rec.get(Field.ERROR):
        return TaskError.model_validate_json(rec.get(Field.ERROR))
    return None


def _rejection(key: str, answer: Answer) -> Exception:
    if answer.verdict is Verdict.CLOSED:
        return SwarmClosedError(key)
    if answer.verdict is Verdict.FULL:
        return SwarmFullError(key, int(answer.detail[0]))
    if answer.verdict is Verdict.MISSING:
        return SignatureNotFoundError(key)
    return InvalidTransitionError(key, answer.detail[0] or answer.verdict.value, "add tasks to")


async def _records(client: Workspace, key_list: list[str]) -> list[Record]:
    return [r for r in await client.store.load_many(key_list) if r is not None]


def _callbacks(plan: Plan, key: str, ok: Sequence[Any], err: Sequence[Any]) -> dict[Field, str]:
    check_callbacks(plan.client, ok)
    return {
        Field.SUCCESS: _key_list([plan.child(cb, "", key) for cb in ok]),
        Field.ERRORS: _key_list([plan.child(cb, "", key) for cb in err]),
    }


def _key_list(keys: list[str]) -> str:
    return json.dumps(keys) if keys else ""  # an empty list is not stored at all


async def create_chain(
    client: Workspace,
    tasks: Sequence[Any],
    *,
    name: str | None,
    success_callbacks: Sequence[Any],
    error_callbacks: Sequence[Any],
    kwargs: dict[str, Any],
) -> ChainSignature:
    if not tasks:
        raise ConfigurationError("a chain needs at least one task")
    key = new_parent_key(client, tasks, success_callbacks, error_callbacks)
    plan = Plan(client, K.workflow_of(key))
    steps = [plan.child(t, key, key) for t in tasks]
    fields = new_fields(
        Kind.CHAIN,
        "",
        kwargs,
        {Field.NAME: name or "chain", Field.STEPS: json.dumps(steps)},
        _callbacks(plan, key, success_callbacks, error_callbacks),
    )
    plan.records.insert(0, NewRecord(key, fields))
    await plan.commit()
    return ChainSignature(client, Record(key, fields))


@dataclass(frozen=True, slots=True)
class Callbacks:
    """A container's callbacks, and the per-member ones copied for each of its members."""

    success: Sequence[Any] = ()
    error: Sequence[Any] = ()
    item_success: Sequence[Any] = ()
    item_error: Sequence[Any] = ()

    @classmethod
    def of(cls, *lists: Sequence[Any] | None) -> Callbacks:
        """From the optional lists the API takes, in the order of the fields."""
        return cls(*(list(x or []) for x in lists))

    def fields(self, plan: Plan, key: str) -> dict[Field, str]:
        check_callbacks(plan.client, self.item_success)
        return {
            **_callbacks(plan, key, self.success, self.error),
            # Templates only: never fired themselves, so nothing waits on them (see mapping.py).
            Field.ITEM_SUCCESS: _key_list([plan.child(cb, "", key) for cb in self.item_success]),
            Field.ITEM_ERRORS: _key_list([plan.child(cb, "", key) for cb in self.item_error]),
        }


def _swarm_fields(name: str, config: SwarmConfig, closed: bool, total: int) -> dict[Field, str]:
    return {
        Field.NAME: name,
        Field.MAX_CONCURRENCY: str(config.max_concurrency),
        Field.FAIL_LIMIT: str(config.stop_after_n_failures or ""),
        Field.MAX_TASKS: str(config.max_task_allowed or ""),
        Field.CLOSED: "1" if closed else "",
        Field.TOTAL: str(total),
    }


async def create_swarm(
    client: Workspace,
    tasks: Sequence[Any],
    *,
    name: str | None,
    callbacks: Callbacks,
    config: SwarmConfig,
    closed: bool,
    kwargs: dict[str, Any],
) -> SwarmSignature:
    key = new_parent_key(client, tasks, callbacks.success, callbacks.error)
    if config.max_task_allowed is not None and len(tasks) > config.max_task_allowed:
        raise SwarmFullError(key, config.max_task_allowed)
    plan = Plan(client, K.workflow_of(key))
    member_keys = [plan.child(t, key, key) for t in tasks]
    swarm = _swarm_fields(name or "swarm", config, closed, len(member_keys))
    fields = new_fields(Kind.SWARM, "", kwargs, swarm, callbacks.fields(plan, key))
    plan.records.insert(0, NewRecord(key, fields, member_keys))
    await plan.commit()
    record = Record(key, fields)
    await attach_item_callbacks(client, record, member_keys)
    return SwarmSignature(client, record)


async def create_map(
    client: Workspace,
    task: Any,
    *,
    name: str | None,
    callbacks: Callbacks,
    config: SwarmConfig,
    items_field: str,
    kwargs: dict[str, Any],
) -> SwarmSignature:
    """A map: a swarm whose members are copies of ``task``, one per item of the list it gets
    when it runs (see mapping.py). ``task``: a task, its name, a signature or a chain."""
    check_callbacks(client, [task])  # each copy gets its item as a return value
    key = new_parent_key(client, [task], callbacks.success, callbacks.error)
    plan = Plan(client, K.workflow_of(key))
    template = plan.child(task, key, key)
    mapped = {Field.TEMPLATE: json.dumps([template]), Field.ITEMS_FIELD: items_field}
    swarm = _swarm_fields(name or "map", config, False, 0)
    fields = new_fields(Kind.SWARM, "", kwargs, swarm, mapped, callbacks.fields(plan, key))
    plan.records.insert(0, NewRecord(key, fields))
    await plan.commit()
    return SwarmSignature(client, Record(key, fields))
