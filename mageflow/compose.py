"""Building signatures: sign a task, attach callbacks, and gather children under one workflow.

Every signature lives under its workflow's hash tag. A signature signed on its own starts a workflow
of its own; when it is later attached to a parent (as a callback, chain step or swarm member) it is
moved under the parent's tag, and the handle you hold follows it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mageflow.errors import (
    CallbackModelError,
    InvalidTransitionError,
    MageflowError,
    SignatureNotFoundError,
)
from mageflow.scheduling import signed_fields
from mageflow.scopes import current_batch
from mageflow.store import keys as K
from mageflow.store.records import NewRecord, Record, kwarg_fields
from mageflow.store.schema import Answer, Field, Kind, SignatureStatus, Verdict, plan_fields
from mageflow.tasks import remember_model

if TYPE_CHECKING:
    from mageflow.signature import Signature
    from mageflow.workspace import Workspace


def new_fields(
    kind: str, task_name: str, kwargs: dict[str, Any], *extra: dict[Field, str]
) -> dict[str, str]:
    """A new pending record's fields; empty values in ``extra`` are not stored."""
    fields: dict[str, str] = {
        Field.KIND: kind,
        Field.STATUS: SignatureStatus.PENDING,
        Field.CREATED: str(int(time.time() * 1000)),
    }
    if task_name:
        fields[Field.TASK] = task_name
    fields.update(kwarg_fields(kwargs))
    for group in extra:
        fields.update({k: v for k, v in group.items() if v})
    return fields


class Plan:
    """Records and moves to write together in one MULTI/EXEC for a new parent signature."""

    def __init__(self, client: Workspace, wf: str) -> None:
        self.client = client
        self.wf = wf
        self.records: list[NewRecord] = []
        self.moves: list[tuple[Signature, str, str, str]] = []  # (handle, new key, parent, owner)

    def child(self, ref: Any, parent: str, owner: str) -> str:
        """Key of ``ref`` inside this workflow: a new record for a task, a move for a signature."""
        from mageflow.signature import Signature

        if isinstance(ref, Signature):
            # A new key even within the shard: the old one stays the signature's own, so a copy
            # (when it turns out to belong to another parent) never lands on it.
            new_key = K.rekey(ref.key, self.wf)
            if new_key == ref.key:
                new_key = self.client.keys.signature(self.wf, K.new_id())
            self.moves.append((ref, new_key, parent, owner))
            return new_key
        definition = self.client.resolve_task(ref)
        key = self.client.keys.signature(self.wf, K.new_id())
        self.records.append(
            NewRecord(
                key,
                new_fields(
                    Kind.TASK,
                    definition.name,
                    {},
                    {Field.PARENT: parent, Field.OWNER: _owner(owner, parent)},
                    signed_fields(self.client.task_meta(definition.name)),
                ),
            )
        )
        return key

    async def commit(self, *, immediate: bool = False) -> None:
        """Write the plan now, or at the end of the enclosing ``abounded_field`` block."""
        batch = None if immediate else current_batch()
        if batch is not None:
            batch.plans.append(self)
            return
        moves = [(sig.key, new, parent, owner) for sig, new, parent, owner in self.moves]
        answers = await self.client.store.create(self.records, moves)
        try:
            for (sig, new_key, parent, owner), answer in zip(self.moves, answers, strict=True):
                await self.settle(sig, new_key, parent, owner, answer)
        except MageflowError:
            await self.client.store.write_raw([], {r.key: "" for r in self.records})
            raise

    async def settle(
        self, sig: Signature, new_key: str, parent: str, owner: str, answer: Answer
    ) -> None:
        verdict = answer.verdict
        if verdict is Verdict.OK:
            sig.key = new_key
        elif verdict is Verdict.MOVED:
            # Someone moved it first: our handle was stale. Try again from where it is now.
            sig.key = answer.detail[0]
            again = await self.client.store.create([], [(sig.key, new_key, parent, owner)])
            await self.settle(sig, new_key, parent, owner, again[0])
        elif verdict in (Verdict.TREE, Verdict.OWNED):
            tree = verdict is Verdict.TREE
            await copy_tree(self.client, sig.key, new_key, parent, owner, move=tree)
            if tree:
                sig.key = new_key
        elif verdict is Verdict.MISSING:
            raise SignatureNotFoundError(sig.key)
        else:
            raise InvalidTransitionError(sig.key, answer.detail[0], "attach")


def new_parent_key(client: Workspace, *children: Sequence[Any]) -> str:
    """The key of a new parent: in the shard of its first child that is a stored signature, so
    that child moves within its shard (one step of the parent's MULTI, not two across shards),
    else in a shard picked at random."""
    from mageflow.signature import Signature

    for child in (c for group in children for c in group):
        if isinstance(child, Signature):
            return client.keys.new_signature(K.workflow_of(child.key))
    return client.keys.new_signature()


async def read_subtree(
    client: Workspace, root: str
) -> tuple[dict[str, Record], dict[str, list[str]]]:
    """Every record under ``root`` (callbacks, steps, members, theirs ...) by key, read a level
    at a time, and each swarm's member keys. SignatureNotFoundError for one that is gone."""
    records: dict[str, Record] = {}
    members: dict[str, list[str]] = {}
    frontier = [root]
    while frontier:
        batch, frontier = frontier, []
        for key, rec in zip(batch, await client.store.load_many(batch), strict=True):
            if rec is None:
                raise SignatureNotFoundError(key)
            records[key] = rec
            children = rec.key_list(Field.SUCCESS) + rec.key_list(Field.ERRORS)
            children += rec.key_list(Field.STEPS)
            if rec.kind == Kind.SWARM:
                members[key] = await client.store.member_keys(key)
                children += members[key]
            frontier += [c for c in children if c not in records and c not in frontier]
    return records, members


async def copy_tree(
    client: Workspace, old_root: str, new_root: str, parent: str, owner: str, *, move: bool
) -> None:
    """Write the subtree under ``old_root`` again at ``new_root``'s workflow.

    ``move`` keeps descendants' ids (and deletes the old keys); otherwise it makes an independent
    copy with new ids, used when a signature already belongs to another parent.
    """
    wf = K.workflow_of(new_root)
    records, members = await read_subtree(client, old_root)
    mapping = {
        old: K.rekey(old, wf) if move else client.keys.signature(wf, K.new_id()) for old in records
    }
    mapping[old_root] = new_root
    out = []
    for old, rec in records.items():
        fields = _rewrite(rec, mapping, fresh=not move)
        if old == old_root:
            fields[Field.PARENT] = parent
            _set_owner(fields, owner)
        out.append(NewRecord(mapping[old], fields, [mapping[m] for m in members.get(old, [])]))
    await client.store.write_raw(out, {old: mapping[old] for old in records} if move else {})


def _owner(owner: str, parent: str) -> str:
    """The owner to store ('' for none): a step's or member's owner is its parent, not stored."""
    return "" if owner == parent else owner


def _set_owner(fields: dict[str, str], owner: str) -> None:
    fields.pop(Field.OWNER, None)
    if stored := _owner(owner, fields[Field.PARENT]):
        fields[Field.OWNER] = stored


def _rewrite(rec: Record, mapping: dict[str, str], *, fresh: bool) -> dict[str, str]:
    """A record's fields with every key it names mapped to its new place; a fresh copy keeps
    only the plan (schema.plan_fields) and starts pending."""
    fields = plan_fields(rec.fields) if fresh else dict(rec.fields)
    for name in (Field.SUCCESS, Field.ERRORS, Field.STEPS):
        if name in fields:
            fields[name] = json.dumps([mapping[k] for k in rec.key_list(name)])
    fields[Field.PARENT] = mapping.get(fields.get(Field.PARENT, ""), "")
    _set_owner(fields, mapping.get(fields.get(Field.OWNER, ""), ""))
    if fresh:  # a copy is not what anyone waits for; a moved signature still is
        fields.pop(Field.WAITED, None)
        fields[Field.STATUS] = SignatureStatus.PENDING
        fields[Field.CREATED] = str(int(time.time() * 1000))
    return fields


async def sign(
    client: Workspace,
    task: Any,
    *,
    success_callbacks: Sequence[Any] | None = None,
    error_callbacks: Sequence[Any] | None = None,
    model_validators: type[BaseModel] | None = None,
    kwargs: dict[str, Any],
    delay_ms: int | None = None,
) -> Signature:
    from mageflow.signature import Signature, TaskSignature

    if isinstance(task, Signature):
        copy = await client.duplicate(task, **kwargs)
        if delay_ms is not None:  # the copy is written already (duplicates are not batched)
            await client.store.set_fields(copy.key, {Field.DELAY: str(delay_ms)})
            await copy.aload()
        return copy
    definition = client.resolve_task(task)
    check_callbacks(client, success_callbacks or [])
    key = new_parent_key(client, success_callbacks or [], error_callbacks or [])
    plan = Plan(client, K.workflow_of(key))
    ok = [plan.child(cb, "", key) for cb in success_callbacks or []]
    err = [plan.child(cb, "", key) for cb in error_callbacks or []]
    fields = new_fields(
        Kind.TASK,
        definition.name,
        kwargs,
        {
            Field.SUCCESS: json.dumps(ok) if ok else "",
            Field.ERRORS: json.dumps(err) if err else "",
            Field.MODEL: remember_model(model_validators) if model_validators else "",
        },
        signed_fields(client.task_meta(definition.name), delay_ms),
    )
    plan.records.insert(0, NewRecord(key, fields))
    await plan.commit()
    return TaskSignature(client, Record(key, fields))


def check_callbacks(client: Workspace, callbacks: Sequence[Any]) -> None:
    """Fail at sign time when a success callback's model has nowhere to put the result."""
    from mageflow.signature import Signature

    for cb in callbacks:
        if isinstance(cb, Signature):
            if cb.kind != Kind.TASK or cb._record.get(Field.MODEL):
                continue
            name = cb.task_name
        else:
            name = client.resolve_task(cb).name
        meta = client.task_meta(name)
        if meta is not None and meta.get("rv") is None and meta.get("model"):
            raise CallbackModelError(name, str(meta["model"]).rsplit(":", 1)[-1])
