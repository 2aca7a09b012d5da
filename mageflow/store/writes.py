"""Writing new records: a parent and what it adopts (create_many), whole subtrees (write_raw).

Each shard's part goes in one MULTI/EXEC, so a write never spans two Redis Cluster slots; the
order between shards is chosen so that a crash between two MULTIs leaves a copy too many, or a
build that failed as a whole, never a running workflow that lost a record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mageflow.store import keys as K
from mageflow.store.keys import Shard, one_slot
from mageflow.store.records import NewRecord
from mageflow.store.schema import RECORD_MARK, Answer, Field, Kind, Notice, Verdict, decode

if TYPE_CHECKING:  # the store calls in here; its type is only for the checker
    from mageflow.store.redis_store import Move, Store


class Multis:
    """One MULTI/EXEC per shard, run in the order their shards were first named. Each command
    comes with the keys it touches, which the slot check looks at."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.commands: dict[Shard, list[list[Any]]] = {}
        self.touched: dict[Shard, list[str]] = {}
        #: (channel, message) published once the MULTIs committed (a cluster pipeline refuses
        #: PUBLISH, and a waiter told earlier could look before the change is there).
        self.notices: list[tuple[str, str]] = []

    def reserve(self, key: str) -> Shard:
        shard = self.store.keys.shard(key)
        if shard not in self.commands:
            self.commands[shard], self.touched[shard] = [], []
        return shard

    def add(
        self,
        key: str,
        touched: list[str],
        command: str,
        *args: Any,
        mapping: Mapping[Any, Any] | None = None,
    ) -> tuple[Shard, int]:
        """Queue ``command`` (its Redis name and arguments; a ``mapping`` adds field-value
        pairs, for HSET) in the MULTI of ``key``'s shard; (shard, index of its result)."""
        shard = self.reserve(key)
        queued = self.commands[shard]
        queued.append(
            [command, *args, *(x for pair in mapping.items() for x in pair)]
            if mapping
            else [command, *args]
        )
        self.touched[shard] += touched
        return shard, len(queued) - 1

    async def execute(self) -> dict[Shard, list[Any]]:
        out: dict[Shard, list[Any]] = {}
        for shard, commands in self.commands.items():
            if not commands:
                continue
            if self.store.check_slots:
                one_slot("MULTI", self.touched[shard])
            out[shard] = await self.store.transaction(commands)
        for channel, message in self.notices:
            await self.store.redis.publish(channel, message)
        return out


async def create_many(
    store: Store,
    groups: list[tuple[list[NewRecord], list[Move]]],
    updates: list[tuple[str, dict[str, str]]] | None = None,
) -> list[Answer]:
    """Several creations (each group's moves, then its records) and kwargs updates, in one
    MULTI/EXEC per shard. Returns the adopt answers in order.

    A move within a shard leaves the key as it is (adopt.lua only sets the new parent). A
    move into another shard cannot share a MULTI with its old key, so it comes after the
    records are written (the old record may be one of them): adopt.lua turns the old record
    into a forwarding note and hands back its fields, and a MULTI of the new shard writes
    them, before the kwargs updates (which name the new keys). A crash before that last
    MULTI leaves a note pointing at nothing and a parent that was never started: that build
    call failed as a whole."""
    moves = [m for _, ms in groups for m in ms]
    across = [store.keys.shard(old) != store.keys.shard(new) for old, new, _, _ in moves]

    async def write() -> list[Answer | None]:
        multis = Multis(store)
        slots: list[tuple[Shard, int] | None] = []
        i = 0
        for records, group_moves in groups:
            for old, new, parent, owner in group_moves:
                command = store.script_command("adopt", [old, new], [parent, owner])
                slot = None if across[i] else multis.add(new, [old, new], *command)
                slots.append(slot)
                i += 1
            for rec in records:
                _write_record(store, multis, rec)
        results = await multis.execute()
        return [decode(results[s[0]][s[1]]) if s else None for s in slots]

    answers = await store.reloading(write)
    for i, (old, new, parent, owner) in enumerate(moves):
        if across[i]:
            answers[i] = await store.run_script("adopt", [old], [parent, owner, new])

    async def finish() -> None:
        multis = Multis(store)
        for (_, new, parent, owner), answer in zip(moves, answers, strict=True):
            if answer is not None and answer.rest and answer.verdict is Verdict.OK:
                _write_moved(store, multis, new, parent, owner, answer)
        for key, fields in updates or []:
            flat = [x for pair in fields.items() for x in pair]
            multis.add(key, [key], *store.script_command("update_kwargs", [key], flat))
        await multis.execute()

    await store.reloading(finish)
    return [a for a in answers if a is not None]


def _write_record(store: Store, multis: Multis, rec: NewRecord, replace: bool = False) -> None:
    if replace:  # member lists too when new ones follow (a move within a shard)
        gone = [rec.key, K.members(rec.key), K.queue(rec.key)] if rec.members else [rec.key]
        multis.add(rec.key, gone, "DEL", *gone)
    multis.add(rec.key, [rec.key], "HSET", rec.key, mapping=_marked(rec.fields))
    ttl_ms = store.active_ms(rec.fields.get(Field.KIND, Kind.TASK))
    multis.add(rec.key, [rec.key], "PEXPIRE", rec.key, ttl_ms)
    # A swarm that has not started yet has every member still waiting for a slot.
    for sub in [K.members(rec.key), K.queue(rec.key)] if rec.members else []:
        multis.add(rec.key, [sub], "RPUSH", sub, *rec.members)
        multis.add(rec.key, [sub], "PEXPIRE", sub, ttl_ms)


def _write_moved(
    store: Store, multis: Multis, new: str, parent: str, owner: str, answer: Answer
) -> None:
    """Write a record adopt.lua moved out of another shard (its fields are the answer's)."""
    fields = dict(zip(answer.rest[::2], answer.rest[1::2], strict=True))
    fields[Field.PARENT] = parent
    fields.pop(Field.OWNER, None)
    if owner != parent:  # a step's or member's owner is its parent and is not stored
        fields[Field.OWNER] = owner
    multis.add(new, [new], "HSET", new, mapping=fields)
    multis.add(new, [new], "PEXPIRE", new, store.active_ms(Kind.TASK))


async def write_raw(store: Store, records: list[NewRecord], forward: dict[str, str]) -> None:
    """Write whole records; delete the keys in ``forward``, leaving a note that points to
    the new key where one is given (used when moving a subtree under another workflow).
    One MULTI per shard; the shards with new records go first, so a crash between two
    leaves a copy too many, never none."""
    multis = Multis(store)
    for rec in records:
        multis.reserve(rec.key)
    done_ms = int((store.ttl.task.done_ttl or store.ttl.done_ttl) * 1000)
    for old, new in forward.items():
        if new == old:
            continue
        multis.add(old, [old, *K.sub_keys(old)], "DEL", old, *K.sub_keys(old))
        if new:
            # A moved signature leaves a note, so keys handed out earlier still resolve;
            # the note is short-lived (done TTL) so it never outlives the workflow.
            note = {Field.MARK: RECORD_MARK, Field.MOVED: new}
            multis.add(old, [old], "HSET", old, mapping=note)
            multis.add(old, [old], "PEXPIRE", old, done_ms)
            # A waiter listening under the old key looks it up again (see waiting.py).
            multis.notices.append((store.keys.done_channel(old), f"{old} {Notice.MOVED}"))
    for rec in records:
        _write_record(store, multis, rec, replace=True)
    async with store.guard():
        await multis.execute()


def _marked(fields: dict[str, str]) -> dict[str, str]:
    """A new record's fields with the record marker the scripts look for."""
    return {**fields, Field.MARK: RECORD_MARK}
