"""The Redis state store: every read and every atomic transition of workflow state goes here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from mageflow.config import TTLConfig
from mageflow.errors import RedisUnavailableError, SignatureNotFoundError
from mageflow.store import keys as K
from mageflow.store.batching import ScriptBatcher
from mageflow.store.keys import KeySchema
from mageflow.store.records import Action, NewRecord, Record, parse_actions
from mageflow.store.scripts import SCRIPT_NAMES, script_source

_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
MAX_FORWARDS = 4
Move = tuple[
    str, str, str, str
]  # (old key, new key, parent, owner)  # how many 'moved' notes a lookup follows before giving up


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Iterable[Any]) -> dict[str, str]:
    items = [_s(v) for v in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def describe(client: aioredis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class Store:
    """Signature records in Redis hashes; transitions in Lua so each one is atomic."""

    def __init__(self, client: aioredis.Redis, keys: KeySchema, ttl: TTLConfig) -> None:
        self.redis = client
        self.keys = keys
        self.ttl = ttl
        # Scripts go out as EVALSHA; they are loaded at start and again if Redis forgot them.
        self._sha = {
            name: hashlib.sha1(script_source(name).encode()).hexdigest() for name in SCRIPT_NAMES
        }
        self._batcher = ScriptBatcher(client, self.load_scripts)
        self._ttl_ms = [ttl.milliseconds("active"), ttl.milliseconds("done")]

    # -- plumbing --------------------------------------------------------------------------

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except _CONNECTION_ERRORS as exc:
            raise RedisUnavailableError(describe(self.redis), exc) from exc

    def _ttl_args(self) -> list[str]:
        return self._ttl_ms

    def _active_ms(self, kind: str) -> int:
        """The active TTL (ms) of a new signature of ``kind``."""
        override = getattr(self.ttl, kind, self.ttl.task).active_ttl
        return int((override or self.ttl.active_ttl) * 1000)

    async def _run(self, name: str, key_list: list[str], args: list[Any]) -> Any:
        full = [*key_list, *self._ttl_args(), *args]
        async with self._guard():
            return await self._batcher.call(self._sha[name], len(key_list), full)

    async def load_scripts(self) -> None:
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            for name in SCRIPT_NAMES:
                pipe.script_load(script_source(name))
            await pipe.execute()

    async def ping(self) -> None:
        async with self._guard():
            await self.redis.ping()
        await self.load_scripts()

    # -- records -----------------------------------------------------------------------------

    async def create(
        self, records: list[NewRecord], adopt: list[Move] | None = None
    ) -> list[list[str]]:
        """Write new signatures and move existing leaves under them, in one MULTI/EXEC.

        ``adopt`` holds (old key, new key, parent, owner); the adopt script's answer for each
        comes back so the caller can handle signatures that could not simply be moved.
        """
        return await self.create_many([(records, adopt or [])])

    async def create_many(
        self,
        groups: list[tuple[list[NewRecord], list[Move]]],
        updates: list[tuple[str, dict[str, str]]] | None = None,
    ) -> list[list[str]]:
        """Several creations (in order: each group's moves, then its records) and kwargs
        updates, all in one MULTI/EXEC. Returns the adopt answers in order."""
        ttl_args = self._ttl_args()

        async def attempt() -> list[list[str]]:
            pipe = self.redis.pipeline(transaction=True)
            is_move: list[bool] = []
            for records, moves in groups:
                for old, new, parent, owner in moves:
                    pipe.evalsha(self._sha["adopt"], 2, old, new, *ttl_args, parent, owner)
                    is_move.append(True)
                for rec in records:
                    pipe.hset(rec.key, mapping=_mapping(rec.fields))
                    ttl_ms = self._active_ms(rec.fields.get("kind", "task"))
                    pipe.pexpire(rec.key, ttl_ms)
                    is_move += [False, False, *self._write_members(pipe, rec, ttl_ms)]
            for key, fields in updates or []:
                flat = [x for pair in fields.items() for x in pair]
                pipe.evalsha(self._sha["update_kwargs"], 1, key, *ttl_args, *flat)
            results = await pipe.execute()
            return [[_s(x) for x in r] for r, m in zip(results, is_move, strict=False) if m]

        async with self._guard():
            try:
                return await attempt()
            except redis_errors.NoScriptError:
                # Redis restarted since start-up; every command here is safe to send again.
                await self.load_scripts()
                return await attempt()

    async def write_raw(self, records: list[NewRecord], forward: dict[str, str]) -> None:
        """Write whole records; delete the keys in ``forward``, leaving a note that points to
        the new key where one is given (used when moving a subtree under another workflow)."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=True)
            for old, new in forward.items():
                # A moved signature leaves a note, so keys handed out earlier still resolve;
                # the note is short-lived (done TTL) so it never outlives the workflow.
                pipe.delete(old, K.members(old), K.queue(old), K.finished(old))
                if new:
                    pipe.hset(old, "moved", new)
                    pipe.pexpire(old, int((self.ttl.task.done_ttl or self.ttl.done_ttl) * 1000))
            for rec in records:
                pipe.delete(rec.key)
                pipe.hset(rec.key, mapping=_mapping(rec.fields))
                ttl_ms = self._active_ms(rec.fields.get("kind", "task"))
                pipe.pexpire(rec.key, ttl_ms)
                self._write_members(pipe, rec, ttl_ms)
            await pipe.execute()

    @staticmethod
    def _write_members(pipe: Any, rec: NewRecord, ttl_ms: int) -> list[bool]:
        """Queue a new swarm's member lists; returns one False per command queued."""
        if not rec.members:
            return []
        # A swarm that has not started yet has every member still waiting for a slot.
        for sub in (K.members(rec.key), K.queue(rec.key)):
            pipe.rpush(sub, *rec.members)
            pipe.pexpire(sub, ttl_ms)
        return [False] * 4

    async def find(self, key: str) -> Record | None:
        """The record under ``key`` (following forwarding notes), or None."""
        async with self._guard():
            for _ in range(MAX_FORWARDS):
                fields = _pairs_from_map(await self.redis.hgetall(key))
                moved = fields.get("moved")
                if not moved:
                    return Record(key, fields) if fields else None
                key = moved
        return None

    async def load(self, key: str) -> Record:
        rec = await self.find(key)
        if rec is None:
            raise SignatureNotFoundError(key)
        return rec

    async def load_many(self, key_list: list[str]) -> list[Record | None]:
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            for key in key_list:
                pipe.hgetall(key)
            raw = await pipe.execute()
        return [
            Record(k, _pairs_from_map(r)) if r else None for k, r in zip(key_list, raw, strict=True)
        ]

    async def member_keys(self, key: str) -> list[str]:
        async with self._guard():
            return [_s(m) for m in await self.redis.lrange(K.members(key), 0, -1)]

    async def set_fields(self, key: str, fields: Mapping[str, str]) -> None:
        async with self._guard():
            await self.redis.hset(key, mapping=_mapping(fields))

    async def update_kwargs(self, key: str, encoded: dict[str, str]) -> str:
        """Set bound kwargs; returns the key written (after following forwarding notes)."""
        for _ in range(MAX_FORWARDS):
            flat = [x for pair in encoded.items() for x in pair]
            answer = [_s(x) for x in await self._run("update_kwargs", [key], flat)]
            if answer[0] == "ok":
                return key
            if answer[0] == "missing":
                raise SignatureNotFoundError(key)
            key = answer[1]
        raise SignatureNotFoundError(key)

    # -- transitions --------------------------------------------------------------------------

    async def start_task(
        self, key: str, attempt: int, lease_ms: int, envelope: str
    ) -> Record | str | list[Action]:
        """Claim a task for running: its kwargs and model (a partial record) when it may run; the
        actions of its finish when they may not all have been sent (replay them); else the reason
        it may not run."""
        answer = await self._run("start_task", [key], [attempt, lease_ms, envelope])
        verdict = _s(answer[0])
        if verdict == "replay":
            return _outbox(answer[1])
        if verdict != "run":
            return verdict
        return Record(key, _pairs(answer[1:]))

    async def finish(
        self, key: str, outcome: str, value: str, message: str, outbox: bool = True
    ) -> list[Action] | None:
        """Record a task's final outcome; None when it was already finished (a duplicate).
        ``outbox`` keeps the returned actions on the record until :meth:`sent`."""
        answer = await self._run("finish", [key], [outcome, value, message, "1" if outbox else ""])
        if _s(answer[0]) != "ok":
            return None
        return parse_actions([_s(x) for x in answer[1:]])

    async def start_container(
        self, key: str, message: str, ret: str, outbox: bool = True
    ) -> list[Action] | str:
        answer = await self._run("start_container", [key], [message, ret, "1" if outbox else ""])
        if _s(answer[0]) == "replay":
            return _outbox(answer[1])
        if _s(answer[0]) != "ok":
            return _s(answer[0])
        return parse_actions([_s(x) for x in answer[1:]])

    async def sent(self, key: str) -> None:
        """Everything the last transition of ``key`` asked for has been sent."""
        await self._run("sent", [key], [])

    async def swarm_add(
        self, key: str, member_keys: list[str], close: bool
    ) -> list[Action] | tuple[str, ...]:
        """Add members; their launches, or the reason the swarm refused them (e.g. 'closed')."""
        answer = [
            _s(x)
            for x in await self._run("swarm_add", [key], ["close" if close else "", *member_keys])
        ]
        if answer[0] != "ok":
            return tuple(answer)
        return parse_actions(answer[1:])

    async def control(self, key: str, action: str) -> list[Action] | tuple[str, ...]:
        """Suspend, interrupt, resume or cancel; (reason, status[, own status]) when not allowed."""
        answer = [_s(x) for x in await self._run("control", [key], [action])]
        if answer[0] != "ok":
            return tuple(answer[1:])
        return parse_actions(answer[1:])

    async def swarm_close(self, key: str) -> list[Action] | None:
        answer = await self._run("swarm_close", [key], [])
        if _s(answer[0]) != "ok":
            return None
        return parse_actions([_s(x) for x in answer[1:]])

    async def heartbeat(self, key_list: list[str], lease_ms: int) -> int:
        """Extend the lease of running tasks so no redelivery takes them over."""
        if not key_list:
            return 0
        return int(await self._run("heartbeat", key_list, [lease_ms]))

    async def cached(self, owner: str, index: int) -> str | None:
        """The signature a durable task's earlier attempt created at ``index``, if any."""
        async with self._guard():
            value = await self.redis.lindex(K.cache(owner), index)
        return _s(value) if value is not None else None

    async def remember(self, owner: str, key: str) -> None:
        """Append ``key`` to the durable task ``owner``'s retry cache."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=True)
            pipe.rpush(K.cache(owner), key)
            pipe.pexpire(K.cache(owner), self._active_ms("task"))
            pipe.hset(owner, "cache", "1")  # so the owner's TTL changes carry the cache along
            await pipe.execute()

    # -- task registry ------------------------------------------------------------------------

    async def register_tasks(self, entries: dict[str, str]) -> None:
        if entries:
            async with self._guard():
                await self.redis.hset(self.keys.registry, mapping=_mapping(entries))

    async def registry(self) -> dict[str, str]:
        async with self._guard():
            return _pairs_from_map(await self.redis.hgetall(self.keys.registry))


def _pairs_from_map(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _outbox(raw: Any) -> list[Action]:
    return parse_actions([str(x) for x in json.loads(_s(raw))])


def _mapping(fields: Mapping[str, str]) -> Any:
    # redis-py types HSET's mapping with an invariant key union; a str-keyed dict works fine.
    return dict(fields)
