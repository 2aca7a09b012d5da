"""The Redis state store: every read and every atomic transition of workflow state goes here.

Each transition is one Lua script (see ``lua/lib.lua`` for the calling convention); this module
only packs arguments and hands back the decoded :class:`~mageflow.store.schema.Answer`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from mageflow.config import TTLConfig
from mageflow.errors import NotARecordError, RedisUnavailableError, SignatureNotFoundError
from mageflow.store import keys as K
from mageflow.store.batching import ScriptBatcher
from mageflow.store.keys import KeySchema
from mageflow.store.records import NewRecord, Record
from mageflow.store.schema import (
    RECORD_MARK,
    Action,
    Answer,
    Control,
    Field,
    Kind,
    Notice,
    Verdict,
    decode,
)
from mageflow.store.scripts import SCRIPT_NAMES, script_source

_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
#: How many 'moved' notes a lookup follows before giving up.
MAX_FORWARDS = 4
#: Outbox entries confirmed in one script call at most; more wait for the next call.
MAX_ACKS = 512
#: How long confirmations wait for a script call to ride on before they go out on their own.
ACK_DELAY = 0.02
#: Seconds an outbox entry a durable engine accepted waits for its claim before recovery sends
#: it again (MageflowConfig.accepted_grace_seconds).
DEFAULT_ACCEPTED_GRACE = 3600.0
Move = tuple[str, str, str, str]  # (old key, new key, parent, owner)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def describe(client: aioredis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class Store:
    """Signature records in Redis hashes; transitions in Lua so each one is atomic."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySchema,
        ttl: TTLConfig,
        accepted_grace: float = DEFAULT_ACCEPTED_GRACE,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.ttl = ttl
        # Scripts go out as EVALSHA; they are loaded at start and again if Redis forgot them.
        self._sha = {
            name: hashlib.sha1(script_source(name).encode()).hexdigest() for name in SCRIPT_NAMES
        }
        self._batcher = ScriptBatcher(client, self.load_scripts)
        self._ttl_ms = [ttl.milliseconds("active"), ttl.milliseconds("done")]
        self._acks: list[str] = []
        self._accepted_grace_ms = str(int(accepted_grace * 1000))
        self._ack_timer: asyncio.TimerHandle | None = None

    # -- plumbing --------------------------------------------------------------------------

    @asynccontextmanager
    async def _guard(self, key: str = "") -> AsyncIterator[None]:
        try:
            yield
        except _CONNECTION_ERRORS as exc:
            raise RedisUnavailableError(describe(self.redis), exc) from exc
        except redis_errors.ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):  # a plain read met a key that is no hash
                raise NotARecordError(key or "?", self.keys.namespace, foreign=False) from exc
            raise

    def _check(self, key: object) -> str:
        """``key`` if it is a signature key of this namespace; else NotARecordError, before any
        Redis call."""
        if not self.keys.owns(key):
            raise NotARecordError(
                repr(key) if not isinstance(key, str) else key, self.keys.namespace, foreign=True
            )
        assert isinstance(key, str)
        return key

    def _active_ms(self, kind: str) -> int:
        """The active TTL (ms) of a new signature of ``kind``."""
        override = getattr(self.ttl, kind, self.ttl.task).active_ttl
        return int((override or self.ttl.active_ttl) * 1000)

    def _take_acks(self) -> str:
        taken, self._acks = self._acks[:MAX_ACKS], self._acks[MAX_ACKS:]
        return " ".join([self._accepted_grace_ms, *taken]) if taken else ""

    async def _call(self, name: str, key_list: list[str], args: list[Any]) -> Any:
        full = self._script_args(key_list, args, self._take_acks())
        async with self._guard():
            return await self._batcher.call(self._sha[name], 2 + len(key_list), full)

    async def _run(self, name: str, key_list: list[str], args: list[Any]) -> Answer:
        answer = decode(await self._call(name, key_list, args))
        if answer.verdict in (Verdict.FOREIGN, Verdict.NOT_RECORD):
            foreign = answer.verdict is Verdict.FOREIGN
            raise NotARecordError(answer.detail[0], self.keys.namespace, foreign)
        return answer

    def _script_args(self, key_list: list[str], args: list[Any], acks: str = "") -> list[Any]:
        """KEYS then ARGV of a script call, in the order lua/lib.lua expects."""
        return [*self.keys.indexes, *key_list, *self._ttl_ms, acks, *args]

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

    # -- outbox confirmations ----------------------------------------------------------------

    def ack(self, entry: str) -> None:
        """A durable engine accepted the message of outbox ``entry``: recovery leaves the entry
        alone for the accepted grace (the claim removes it). Confirmations ride on the next
        script call; if none comes soon, they go on their own. One that is lost only makes
        recovery send that message once more."""
        if not entry:
            return
        self._acks.append(entry)
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_timer = None
        if self._acks:
            task = asyncio.get_running_loop().create_task(self.flush_acks())
            task.add_done_callback(_ignore_result)

    async def flush_acks(self) -> None:
        while self._acks:
            await self._call("ack", [], [])

    # -- records -----------------------------------------------------------------------------

    async def create(
        self, records: list[NewRecord], adopt: list[Move] | None = None
    ) -> list[Answer]:
        """Write new signatures and move existing leaves under them, in one MULTI/EXEC.

        ``adopt`` holds (old key, new key, parent, owner); the adopt script's answer for each
        comes back so the caller can handle signatures that could not simply be moved.
        """
        return await self.create_many([(records, adopt or [])])

    async def create_many(
        self,
        groups: list[tuple[list[NewRecord], list[Move]]],
        updates: list[tuple[str, dict[str, str]]] | None = None,
    ) -> list[Answer]:
        """Several creations (in order: each group's moves, then its records) and kwargs
        updates, all in one MULTI/EXEC. Returns the adopt answers in order."""

        async def attempt() -> list[Answer]:
            pipe = self.redis.pipeline(transaction=True)
            is_move: list[bool] = []
            for records, moves in groups:
                for old, new, parent, owner in moves:
                    args = self._script_args([old, new], [parent, owner])
                    pipe.evalsha(self._sha["adopt"], 4, *args)
                    is_move.append(True)
                for rec in records:
                    pipe.hset(rec.key, mapping=_marked(rec.fields))
                    ttl_ms = self._active_ms(rec.fields.get(Field.KIND, Kind.TASK))
                    pipe.pexpire(rec.key, ttl_ms)
                    is_move += [False, False, *self._write_members(pipe, rec, ttl_ms)]
            for key, fields in updates or []:
                flat = [x for pair in fields.items() for x in pair]
                pipe.evalsha(self._sha["update_kwargs"], 3, *self._script_args([key], flat))
            results = await pipe.execute()
            return [decode(r) for r, m in zip(results, is_move, strict=False) if m]

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
                pipe.delete(old, *K.sub_keys(old))
                if new:
                    pipe.hset(old, mapping={Field.MARK: RECORD_MARK, Field.MOVED: new})
                    pipe.pexpire(old, int((self.ttl.task.done_ttl or self.ttl.done_ttl) * 1000))
                    # A waiter listening under the old key looks it up again (see waiting.py).
                    pipe.publish(self.keys.done_channel(old), f"{old} {Notice.MOVED}")
            for rec in records:
                pipe.delete(rec.key)
                pipe.hset(rec.key, mapping=_marked(rec.fields))
                ttl_ms = self._active_ms(rec.fields.get(Field.KIND, Kind.TASK))
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
        """The record under ``key`` (following forwarding notes), or None. NotARecordError for
        a key of another namespace or one that holds something else."""
        for _ in range(MAX_FORWARDS):
            self._check(key)
            async with self._guard(key):
                fields = _pairs_from_map(await self.redis.hgetall(key))
            if fields and fields.get(Field.MARK) != RECORD_MARK:
                raise NotARecordError(key, self.keys.namespace, foreign=False)
            moved = fields.get(Field.MOVED)
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
        flat = [x for pair in encoded.items() for x in pair]
        for _ in range(MAX_FORWARDS):
            answer = await self._run("update_kwargs", [key], flat)
            if answer.verdict is Verdict.OK:
                return key
            if answer.verdict is Verdict.MISSING:
                raise SignatureNotFoundError(key)
            key = answer.detail[0]
        raise SignatureNotFoundError(key)

    # -- transitions --------------------------------------------------------------------------

    async def start_task(
        self, key: str, task: str, attempt: int, lease_ms: int, envelope: str
    ) -> Answer:
        """Claim signature ``key`` of ``task`` for one attempt: V.RUN with its kwargs and model
        (``pairs()``), else why this delivery may not run it (V.WRONG_TASK for a record of
        another task; NotARecordError for a key that is no record of this namespace)."""
        return await self._run("start_task", [key], [attempt, lease_ms, envelope, task])

    async def finish(self, key: str, outcome: str, value: str, message: str) -> Answer:
        """Record a task's final outcome (V.SKIP when it was not running: a duplicate)."""
        return await self._run("finish", [key], [outcome, value, message])

    async def launch(
        self, key: str, envelope: str, delay_ms: int | None = None, at_ms: int | None = None
    ) -> Answer:
        """Start ``key`` with ``envelope``; with ``delay_ms`` (from Redis's clock) or ``at_ms``
        (ms since the epoch) its message waits in the delayed index until then."""
        due = ["" if delay_ms is None else delay_ms, "" if at_ms is None else at_ms]
        return await self._run("launch", [key], [envelope, *due])

    async def start_container(self, key: str, message: str, ret: str) -> Answer:
        return await self._run("start_container", [key], [message, ret])

    async def map_start(self, key: str, message: str, error: str, member_keys: list[str]) -> Answer:
        """Start a map whose members (one per item) were just written; ``error`` fails it."""
        return await self._run("map_start", [key], [message, error, *member_keys])

    async def swarm_add(self, key: str, member_keys: list[str], close: bool) -> Answer:
        return await self._run("swarm_add", [key], ["1" if close else "", *member_keys])

    async def swarm_close(self, key: str) -> Answer:
        return await self._run("swarm_close", [key], [])

    async def control(self, key: str, action: Control) -> Answer:
        return await self._run("control", [key], [action.value])

    async def watch(self, key: str) -> Answer:
        """Ask for a done notice for ``key``; V.FINISHED with the record if it already ended."""
        return await self._run("watch", [key], [])

    async def heartbeat(self, key_list: list[str], lease_ms: int) -> list[str]:
        """Extend the leases of running tasks; the status of each key, in order."""
        if not key_list:
            return []
        return (await self._run("heartbeat", key_list, [lease_ms])).rest

    async def recover(self, grace_ms: int, most: int) -> list[Action]:
        """What to send again: queued messages unsent for ``grace_ms``, and tasks whose lease
        ran out."""
        return (await self._run("recover", [], [grace_ms, most])).actions()

    async def release_due(self, most: int) -> Released:
        """Queue up to ``most`` waiting messages that are due (release.lua)."""
        answer = await self._run("release", [], [most])
        head, now, more = answer.detail
        due = int(float(head)) if head else None  # a score, as Redis prints doubles
        return Released(answer.actions(), due, int(now), more == "1")

    async def claim_state(self, key: str) -> tuple[str, int, int, int]:
        """(status, attempt, lease end ms, Redis time ms) of a signature."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hmget(key, [Field.STATUS, Field.ATTEMPT])
            pipe.zscore(self.keys.leases, key)
            pipe.time()
            (status, att), lease, (seconds, micros) = await pipe.execute()
        now = int(seconds) * 1000 + int(micros) // 1000
        return _s(status) if status else "", int(att or 0), int(lease or 0), now

    async def release(self, key_list: list[str]) -> None:
        """Drop the leases of runs this process lost with its event loop, so their next
        delivery may take the claim over at once."""
        if key_list:
            # Expired, not removed: a run that is not claimed again stays visible to recovery.
            async with self._guard():
                await self.redis.zadd(self.keys.leases, dict.fromkeys(key_list, 0))

    async def outbox_size(self) -> int:
        async with self._guard():
            return int(await self.redis.zcard(self.keys.outbox))

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
            pipe.pexpire(K.cache(owner), self._active_ms(Kind.TASK))
            pipe.hset(owner, Field.CACHE, "1")  # so the owner's TTL changes carry the cache along
            await pipe.execute()

    # -- task registry ------------------------------------------------------------------------

    async def expedite(self, entries: list[str]) -> None:
        """Make queued outbox ``entries`` due now: the next recovery round of any process sends
        them (for a caller with no engine to send them itself, such as the command line)."""
        if entries:
            async with self._guard():
                await self.redis.zadd(self.keys.outbox, dict.fromkeys(entries, 0), xx=True)

    async def announce(self, worker: str, presence: str, ttl_ms: int) -> None:
        """Publish this process's presence (``mageflow workers``); the hash lives ``ttl_ms``
        past the last announcement of any process."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.keys.workers, worker, presence)
            pipe.pexpire(self.keys.workers, ttl_ms)
            await pipe.execute()

    async def retire(self, worker: str) -> None:
        async with self._guard():
            await self.redis.hdel(self.keys.workers, worker)

    async def register_tasks(self, entries: dict[str, str]) -> None:
        if entries:
            async with self._guard():
                await self.redis.hset(self.keys.registry, mapping=_mapping(entries))

    async def registry(self) -> dict[str, str]:
        async with self._guard():
            return _pairs_from_map(await self.redis.hgetall(self.keys.registry))


@dataclass(frozen=True, slots=True)
class Released:
    """What one release call queued, and when the next waiting message is due (Redis ms)."""

    actions: list[Action]
    next_due_ms: int | None
    now_ms: int
    more: bool


def _pairs_from_map(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _marked(fields: Mapping[str, str]) -> Any:
    """A new record's fields with the record marker the scripts look for."""
    return {**fields, Field.MARK: RECORD_MARK}


def _mapping(fields: Mapping[str, str]) -> Any:
    # redis-py types HSET's mapping with an invariant key union; a str-keyed dict works fine.
    return dict(fields)


def _ignore_result(task: asyncio.Task[Any]) -> None:
    # A confirmation that could not be written only makes recovery send that message once more.
    if not task.cancelled():
        task.exception()
