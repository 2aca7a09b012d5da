"""Copies made while a workflow runs: a map's members, and per-member callbacks.

A map is a swarm whose members do not exist until it starts: its plan holds a *template* (a
task, a signature or a chain) and, when its start message arrives, the process that takes it
writes one fresh copy of the template per item (:func:`expand`), then one script claims the map
and adds them (``map_start.lua``). If that process dies in between, the start message is still
in the outbox and recovery sends it again: the copies of the first try are left to their TTL and
the claim lets exactly one set of members run.

Per-member callbacks (``item_success_callbacks`` / ``item_error_callbacks`` of a swarm or map)
are templates too: every member gets its own copy of each, attached as the member's own callback
before the member can start, so each fires exactly once per member, through the same completion
path as any callback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mageflow.compose import read_subtree
from mageflow.envelope import Envelope
from mageflow.models.message import TaskError
from mageflow.store import keys as K
from mageflow.store.records import NewRecord, Record, dumps, kwarg_fields
from mageflow.store.schema import Field, Kind, SignatureStatus, plan_fields

if TYPE_CHECKING:
    from mageflow.workspace import Workspace

__all__ = ["ItemCallbacks", "attach_item_callbacks", "expand"]


@dataclass(slots=True)
class _Tree:
    """A template subtree as read once: its records and swarm member lists, by key."""

    root: str
    records: dict[str, Record]
    members: dict[str, list[str]]


async def _read(client: Workspace, root: str) -> _Tree:
    records, members = await read_subtree(client, root)
    return _Tree(root, records, members)


def _copy(
    client: Workspace, tree: _Tree, wf: str, parent: str, owner: str, extra: dict[str, str]
) -> tuple[str, list[NewRecord]]:
    """A fresh pending copy of ``tree`` under workflow ``wf``: (its root key, its records)."""
    mapping = {old: client.keys.signature(wf, K.new_id()) for old in tree.records}
    out = []
    for old, rec in tree.records.items():
        fields = plan_fields(rec.fields)
        for name in (Field.SUCCESS, Field.ERRORS, Field.STEPS):
            if name in fields:
                fields[name] = json.dumps([mapping[k] for k in rec.key_list(name)])
        fields[Field.PARENT] = mapping.get(rec.get(Field.PARENT), "")
        stored_owner = mapping.get(rec.get(Field.OWNER), "")
        fields.pop(Field.OWNER, None)
        if old == tree.root:
            fields[Field.PARENT] = parent
            stored_owner = "" if owner == parent else owner
            fields.update(extra)
        if stored_owner:
            fields[Field.OWNER] = stored_owner
        fields[Field.STATUS] = SignatureStatus.PENDING
        members = [mapping[m] for m in tree.members.get(old, [])]
        out.append(NewRecord(mapping[old], fields, members))
    return mapping[tree.root], out


@dataclass(slots=True)
class ItemCallbacks:
    """A container's per-member callback templates, read once for many members."""

    success: list[_Tree]
    error: list[_Tree]

    @classmethod
    async def of(cls, client: Workspace, container: Record) -> ItemCallbacks:
        ok = [await _read(client, k) for k in container.key_list(Field.ITEM_SUCCESS)]
        err = [await _read(client, k) for k in container.key_list(Field.ITEM_ERRORS)]
        return cls(ok, err)

    def __bool__(self) -> bool:
        return bool(self.success or self.error)

    def attach(self, client: Workspace, member: NewRecord) -> list[NewRecord]:
        """Copies of every template as ``member``'s own callbacks (appended to its lists)."""
        wf, out = K.workflow_of(member.key), []
        for name, templates in ((Field.SUCCESS, self.success), (Field.ERRORS, self.error)):
            keys = json.loads(member.fields.get(name) or "[]")
            for tree in templates:
                root, records = _copy(client, tree, wf, "", member.key, {})
                keys.append(root)
                out += records
            if keys:
                member.fields[name] = json.dumps(keys)
        return out


async def attach_item_callbacks(
    client: Workspace, container: Record, member_keys: Sequence[str]
) -> None:
    """Give each of ``member_keys`` (pending, not started) its copies of the container's
    per-member callbacks. Members that are chains or swarms get them on the container itself."""
    callbacks = await ItemCallbacks.of(client, container)
    if not callbacks or not member_keys:
        return
    out: list[NewRecord] = []
    for rec in await client.store.load_many(list(member_keys)):
        if rec is None:
            continue
        member = NewRecord(rec.key, dict(rec.fields))
        out += callbacks.attach(client, member)
        out.append(member)
        if rec.kind == Kind.SWARM:  # write_raw rewrites the record: keep its member lists
            member.members = await client.store.member_keys(rec.key)
    await client.store.write_raw(out, {})


async def expand(
    client: Workspace, mapped: Record, envelope: Envelope
) -> tuple[list[str], str, str]:
    """Write the members of map ``mapped`` for the items in ``envelope``: (member keys, the
    message they get, '' or an error JSON when there is no list of items)."""
    kwargs = mapped.kwargs()
    field = mapped.get(Field.ITEMS_FIELD) or "items"
    message = {**envelope.input, **kwargs}
    items: Any = envelope.ret if envelope.has_ret else message.pop(field, None)
    message.pop(field, None)
    if not isinstance(items, list):
        where = "the previous step's result" if envelope.has_ret else f"the field {field!r}"
        error = TaskError(
            type="MapInputError",
            message=f"a map needs a list of items in {where}, not {type(items).__name__}",
            key=mapped.key,
        )
        return [], dumps(message), error.model_dump_json()
    [template] = mapped.key_list(Field.TEMPLATE)
    tree = await _read(client, template)
    callbacks = await ItemCallbacks.of(client, mapped)
    wf, bound = K.workflow_of(mapped.key), kwarg_fields(kwargs)
    keys: list[str] = []
    out: list[NewRecord] = []
    for item in items:
        extra = {**bound, Field.ITEM: dumps(item)}
        root, records = _copy(client, tree, wf, mapped.key, mapped.key, extra)
        keys.append(root)
        if callbacks:
            out += callbacks.attach(client, records[_index(records, root)])
        out += records
    if out:
        await client.store.write_raw(out, {})
    return keys, dumps(message), ""


def _index(records: list[NewRecord], key: str) -> int:
    return next(i for i, r in enumerate(records) if r.key == key)
