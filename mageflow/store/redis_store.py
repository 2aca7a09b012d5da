"""The Redis state store: every read and every atomic transition of workflow state goes here.

Each transition is one Lua script (see ``lua/lib.lua`` for the calling convention); this module
only packs arguments and hands back the decoded :class:`~mageflow.store.schema.Answer`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from mageflow.config import TTLConfig
from mageflow.errors import (
    NotARecordError,
    RedisUnavailableError,
    SignatureNotFoundError,
)
from mageflow.store import keys as K
from mageflow.store import writes
from mageflow.store.batching import AnyRedis, ScriptBatcher
from mageflow.store.keys import KeySchema, Shard, one_slot
from mageflow.store.records import NewRecord, Record, hash_mapping
from mageflow.store.schema import (
    RECORD_MARK,
    Action,
    Answer,
    Control,
    Field,
    Kind,
    Verdict,
    decode,
)
from mageflow.store.scripts import SCRIPT_NAMES, STANDALONE, script_source
from mageflow.store.streaming import CommandStream, ScriptStream

T = TypeVar("T")
_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
#: How many 'moved' notes a lookup follows before giving up.
MAX_FORWARDS = 4
#: A pool smaller than this keeps the batcher: the stream holds one connection for good, and
#: pub/sub listeners hold others, so a tiny blocking pool could run out for everything else.
MIN_STREAM_POOL = 8
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


def describe(client: AnyRedis) -> str:
    if isinstance(client, RedisCluster):
        nodes = ",".join(f"{n.host}:{n.port}" for n in client.get_nodes()[:3])
        return f"redis+cluster://{nodes or '?'}"
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class Store:
    """Signature records in Redis hashes; transitions in Lua so each one is atomic."""

    #: Check that every script call and MULTI names keys of one slot. The test suite turns it
    #: on ($MAGEFLOW_CHECK_SLOTS=1) and splits its state over several shards, so a change that
    #: would break Redis Cluster fails on a single Redis too.
    check_slots = os.environ.get("MAGEFLOW_CHECK_SLOTS") == "1"
    #: On a single Redis, stream script calls over one connection (store/streaming.py); off,
    #: each loop turn's calls go as one pipeline, as on a cluster (bench.experiments compares).
    stream_calls = True

    def __init__(
        self,
        client: AnyRedis,
        keys: KeySchema,
        ttl: TTLConfig,
        accepted_grace: float = DEFAULT_ACCEPTED_GRACE,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.ttl = ttl
        # Scripts go out as EVALSHA; they are loaded at start and again if Redis forgot them.
        self.sha = {
            name: hashlib.sha1(script_source(name).encode()).hexdigest() for name in SCRIPT_NAMES
        }
        self._scripts = self._script_caller(client)
        self._ttl_ms = [ttl.milliseconds("active"), ttl.milliseconds("done")]
        self._acks: dict[Shard, list[str]] = {}
        self._accepted_grace_ms = str(int(accepted_grace * 1000))
        self._ack_timer: asyncio.TimerHandle | None = None

    # -- plumbing --------------------------------------------------------------------------

    def _script_caller(self, client: AnyRedis) -> ScriptBatcher | ScriptStream:
        if (
            self.stream_calls
            and isinstance(client, aioredis.Redis)
            and getattr(client.connection_pool, "max_connections", 0) >= MIN_STREAM_POOL
        ):
            return ScriptStream(client, self.load_scripts)
        return ScriptBatcher(client, self.load_scripts)

    async def close(self) -> None:
        """Stop the script stream and give its connection back; before the client closes."""
        await self._scripts.aclose()

    @asynccontextmanager
    async def guard(self, key: str = "") -> AsyncIterator[None]:
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

    def active_ms(self, kind: str) -> int:
        """The active TTL (ms) of a new signature of ``kind``."""
        override = getattr(self.ttl, kind, self.ttl.task).active_ttl
        return int((override or self.ttl.active_ttl) * 1000)

    def _take_acks(self, shard: Shard) -> str:
        pending = self._acks.get(shard)
        if not pending:
            return ""
        taken, self._acks[shard] = pending[:MAX_ACKS], pending[MAX_ACKS:]
        return " ".join([self._accepted_grace_ms, *taken])

    @property
    def cluster(self) -> bool:
        return isinstance(self.redis, RedisCluster)

    async def _call(
        self, name: str, key_list: list[str], args: list[Any], shard: Shard | None = None
    ) -> Any:
        if name in STANDALONE:
            full = [*key_list, *args]
            numkeys = len(key_list)
        else:
            shard = shard or self.keys.shard(key_list[0])
            full = self.script_args(key_list, args, self._take_acks(shard), shard)
            numkeys = len(shard.indexes) + len(key_list)
        if self.check_slots:
            one_slot(f"script {name}", full[:numkeys])
        async with self.guard():
            return await self._scripts.call(self.sha[name], numkeys, full)

    async def run_script(
        self, name: str, key_list: list[str], args: list[Any], shard: Shard | None = None
    ) -> Answer:
        answer = decode(await self._call(name, key_list, args, shard))
        if answer.verdict in (Verdict.FOREIGN, Verdict.NOT_RECORD):
            foreign = answer.verdict is Verdict.FOREIGN
            raise NotARecordError(answer.detail[0], self.keys.namespace, foreign)
        return answer

    def script_command(self, name: str, key_list: list[str], args: list[Any]) -> list[Any]:
        """A transition script's call as a MULTI command: ``evalsha``, its sha, key count, then
        KEYS and ARGV (for pipelines that queue it with other commands, see writes.py)."""
        shard = self.keys.shard(key_list[0])
        full = self.script_args(key_list, args, "", shard)
        return ["EVALSHA", self.sha[name], len(shard.indexes) + len(key_list), *full]

    async def transaction(self, commands: list[list[Any]]) -> list[Any]:
        """``commands`` in one MULTI/EXEC, on the script stream if there is one (else a
        cluster's transaction pipeline); their replies."""
        if isinstance(self._scripts, CommandStream):
            return await self._scripts.transaction(commands)
        pipe = self.redis.pipeline(transaction=True)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())

    def script_args(
        self, key_list: list[str], args: list[Any], acks: str = "", shard: Shard | None = None
    ) -> list[Any]:
        """KEYS then ARGV of a script call, in the order lua/lib.lua expects."""
        shard = shard or self.keys.shard(key_list[0])
        return [*shard.indexes, *key_list, *self._ttl_ms, acks, *args]

    async def load_scripts(self) -> None:
        async with self.guard():
            if self.cluster:  # SCRIPT LOAD goes to every primary only when sent on its own
                await asyncio.gather(
                    *(self.redis.script_load(script_source(n)) for n in SCRIPT_NAMES)
                )
                return
            pipe = self.redis.pipeline(transaction=False)
            for name in SCRIPT_NAMES:
                pipe.script_load(script_source(name))
            await pipe.execute()

    async def ping(self) -> None:
        async with self.guard():
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
        self._acks.setdefault(self.keys.shard(entry), []).append(entry)
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_timer = None
        if any(self._acks.values()):
            task = asyncio.get_running_loop().create_task(self.flush_acks())
            task.add_done_callback(_ignore_result)

    async def flush_acks(self) -> None:
        for shard, pending in list(self._acks.items()):
            while pending:
                await self._call("ack", [], [], shard)
                pending = self._acks.get(shard, [])

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
        """Several creations (each group's moves, then its records) and kwargs updates, one
        MULTI per shard (see writes.create_many). Returns the adopt answers in order."""
        return await writes.create_many(self, groups, updates or [])

    async def write_raw(self, records: list[NewRecord], forward: dict[str, str]) -> None:
        """Write whole records; delete the keys in ``forward``, leaving a note that points to
        the new key where one is given (see writes.write_raw)."""
        await writes.write_raw(self, records, forward)

    async def reloading(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, once more after loading the scripts if Redis had forgotten them (it
        restarted); every caller's commands are safe to send again."""
        async with self.guard():
            try:
                return await attempt()
            except redis_errors.NoScriptError:
                await self.load_scripts()
                return await attempt()

    async def find(self, key: str) -> Record | None:
        """The record under ``key`` (following forwarding notes), or None. NotARecordError for
        a key of another namespace or one that holds something else."""
        for _ in range(MAX_FORWARDS):
            self._check(key)
            async with self.guard(key):
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
        async with self.guard():
            pipe = self.redis.pipeline(transaction=False)
            for key in key_list:
                pipe.hgetall(key)
            raw = await pipe.execute()
        return [
            Record(k, _pairs_from_map(r)) if r else None for k, r in zip(key_list, raw, strict=True)
        ]

    async def member_keys(self, key: str) -> list[str]:
        async with self.guard():
            return [_s(m) for m in await self.redis.lrange(K.members(key), 0, -1)]

    async def set_fields(self, key: str, fields: Mapping[str, str]) -> None:
        async with self.guard():
            await self.redis.hset(key, mapping=hash_mapping(fields))

    async def update_kwargs(self, key: str, encoded: dict[str, str]) -> str:
        """Set bound kwargs; returns the key written (after following forwarding notes)."""
        flat = [x for pair in encoded.items() for x in pair]
        for _ in range(MAX_FORWARDS):
            answer = await self.run_script("update_kwargs", [key], flat)
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
        args: list[Any] = [attempt, lease_ms, envelope, task]
        answer = await self.run_script("start_task", [key], args)
        if answer.verdict is Verdict.RATE:
            # The limiter is in no shard: ask it on its own, then claim with its answer.
            limiter, rate, slot = answer.detail
            count, _, period = rate.partition("/")
            got = await self._call("rate", [limiter], [count, period, slot])
            answer = await self.run_script("start_task", [key], [*args, *map(_s, got)])
        return answer

    async def finish(self, key: str, outcome: str, value: str, message: str) -> Answer:
        """Record a task's final outcome (V.SKIP when it was not running: a duplicate)."""
        return await self.run_script("finish", [key], [outcome, value, message])

    async def launch(
        self, key: str, envelope: str, delay_ms: int | None = None, at_ms: int | None = None
    ) -> Answer:
        """Start ``key`` with ``envelope``; with ``delay_ms`` (from Redis's clock) or ``at_ms``
        (ms since the epoch) its message waits in the delayed index until then."""
        due = ["" if delay_ms is None else delay_ms, "" if at_ms is None else at_ms]
        return await self.run_script("launch", [key], [envelope, *due])

    async def start_container(self, key: str, message: str, ret: str) -> Answer:
        return await self.run_script("start_container", [key], [message, ret])

    async def map_start(self, key: str, message: str, error: str, member_keys: list[str]) -> Answer:
        """Start a map whose members (one per item) were just written; ``error`` fails it."""
        return await self.run_script("map_start", [key], [message, error, *member_keys])

    async def swarm_add(self, key: str, member_keys: list[str], close: bool) -> Answer:
        return await self.run_script("swarm_add", [key], ["1" if close else "", *member_keys])

    async def swarm_close(self, key: str) -> Answer:
        return await self.run_script("swarm_close", [key], [])

    async def control(self, key: str, action: Control) -> Answer:
        return await self.run_script("control", [key], [action.value])

    async def watch(self, key: str) -> Answer:
        """Ask for a done notice for ``key``; V.FINISHED with the record if it already ended."""
        return await self.run_script("watch", [key], [])

    async def heartbeat(self, key_list: list[str], lease_ms: int) -> list[str]:
        """Extend the leases of running tasks (one call per shard); the status of each key, in
        order."""
        status: dict[str, str] = {}
        for group in self.keys.by_shard(key_list).values():
            answer = await self.run_script("heartbeat", group, [lease_ms])
            status.update(zip(group, answer.rest, strict=True))
        return [status[k] for k in key_list]

    async def recover(self, shard: Shard, grace_ms: int, most: int) -> list[Action]:
        """What to send again in ``shard``: queued messages unsent for ``grace_ms``, and tasks
        whose lease ran out."""
        return (await self.run_script("recover", [], [grace_ms, most], shard)).actions()

    async def release_due(self, shard: Shard, most: int) -> Released:
        """Queue up to ``most`` waiting messages of ``shard`` that are due (release.lua)."""
        answer = await self.run_script("release", [], [most], shard)
        head, now, more = answer.detail
        due = int(float(head)) if head else None  # a score, as Redis prints doubles
        return Released(answer.actions(), due, int(now), more == "1")

    async def claim_state(self, key: str) -> tuple[str, int, int, int]:
        """(status, attempt, lease end ms, Redis time ms) of a signature."""
        async with self.guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hmget(key, [Field.STATUS, Field.ATTEMPT])
            pipe.zscore(self.keys.shard(key).leases, key)
            (status, att), lease = await pipe.execute()
            # On its own: a cluster pipeline takes only commands with keys. (Any node's clock
            # will do: nodes' clocks differ by far less than a lease.)
            seconds, micros = await self.redis.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        return _s(status) if status else "", int(att or 0), int(lease or 0), now

    async def release(self, key_list: list[str]) -> None:
        """Drop the leases of runs this process lost with its event loop, so their next
        delivery may take the claim over at once."""
        if key_list:
            # Expired, not removed: a run that is not claimed again stays visible to recovery.
            async with self.guard():
                for shard, group in self.keys.by_shard(key_list).items():
                    await self.redis.zadd(shard.leases, dict.fromkeys(group, 0))

    async def outbox_size(self) -> int:
        async with self.guard():
            pipe = self.redis.pipeline(transaction=False)
            for shard in self.keys.all_shards:
                pipe.zcard(shard.outbox)
            return sum(int(n) for n in await pipe.execute())

    async def cached(self, owner: str, index: int) -> str | None:
        """The signature a durable task's earlier attempt created at ``index``, if any."""
        async with self.guard():
            value = await self.redis.lindex(K.cache(owner), index)
        return _s(value) if value is not None else None

    async def remember(self, owner: str, key: str) -> None:
        """Append ``key`` to the durable task ``owner``'s retry cache."""
        async with self.guard():
            pipe = self.redis.pipeline(transaction=True)
            pipe.rpush(K.cache(owner), key)
            pipe.pexpire(K.cache(owner), self.active_ms(Kind.TASK))
            pipe.hset(owner, Field.CACHE, "1")  # so the owner's TTL changes carry the cache along
            await pipe.execute()

    # -- task registry ------------------------------------------------------------------------

    async def expedite(self, entries: list[str]) -> None:
        """Make queued outbox ``entries`` due now: the next recovery round of any process sends
        them (for a caller with no engine to send them itself, such as the command line)."""
        if entries:
            async with self.guard():
                for shard, group in self.keys.by_shard(entries).items():
                    await self.redis.zadd(shard.outbox, dict.fromkeys(group, 0), xx=True)

    async def announce(self, worker: str, presence: str, ttl_ms: int) -> None:
        """Publish this process's presence (``mageflow workers``); the hash lives ``ttl_ms``
        past the last announcement of any process."""
        async with self.guard():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.keys.workers, worker, presence)
            pipe.pexpire(self.keys.workers, ttl_ms)
            await pipe.execute()

    async def retire(self, worker: str) -> None:
        async with self.guard():
            await self.redis.hdel(self.keys.workers, worker)

    async def register_tasks(self, entries: dict[str, str]) -> None:
        if entries:
            async with self.guard():
                await self.redis.hset(self.keys.registry, mapping=hash_mapping(entries))

    async def registry(self) -> dict[str, str]:
        async with self.guard():
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


def _ignore_result(task: asyncio.Task[Any]) -> None:
    # A confirmation that could not be written only makes recovery send that message once more.
    if not task.cancelled():
        task.exception()
