"""What operators see and steer: workflows listed from the index, a workflow's whole tree, the
workers, and lifecycle requests made from outside the app.

The command line (``mageflow ls``, ``tree``, ``watch``, ``workers``, ``suspend`` ...) and the web
viewer (``mageflow ui``) both go through these functions, so the JSON they print and serve is the
same. They need only the store: no engine and no task of the app. Reads never change a record
(index entries whose workflow expired are dropped as they are met: the index is a cache of what
exists, not state). A lifecycle request commits its transition like the API does; what it sets
in motion is in the outbox, and since this process has none of the app's engine, it is marked
due at once for the recovery round of any running worker or app process to send.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mageflow.config import MageflowConfig
from mageflow.errors import InvalidValueError
from mageflow.lifecycle import apply_control
from mageflow.store import keys as K
from mageflow.store.connect import client_from_url, shard_count
from mageflow.store.keys import KeySchema
from mageflow.store.records import Record, loads
from mageflow.store.redis_store import MAX_FORWARDS, Store
from mageflow.store.schema import TERMINAL, ActionKind, Control, Field, Kind, SignatureStatus

#: Index entries read per round trip while listing.
PAGE = 500
#: Fields a list row needs (a workflow list never reads kwargs or results).
SUMMARY_FIELDS: tuple[str, ...] = (Field.KIND, Field.TASK, Field.NAME, Field.STATUS)
SUMMARY_FIELDS += (Field.CREATED, Field.STARTED, Field.FINISHED, Field.MOVED)
KINDS = tuple(k.value for k in Kind)
STATUSES = tuple(s.value for s in SignatureStatus)

__all__ = [
    "WorkflowFilter",
    "list_workflows",
    "open_store",
    "operate",
    "workers",
    "workflow_tree",
]


@asynccontextmanager
async def open_store(url: str, namespace: str) -> AsyncIterator[Store]:
    """A store on ``url`` for ``namespace``, closed on exit; RedisUnavailableError if Redis
    does not answer. TTLs (for lifecycle requests) come from MageflowConfig's environment."""
    config = MageflowConfig(namespace=namespace)
    client = client_from_url(url, max_connections=32)
    keys = KeySchema(namespace, shard_count(url, config.shards))
    store = Store(client, keys, config.ttl, config.accepted_grace_seconds)
    try:
        await store.ping()
        yield store
    finally:
        await store.close()
        await client.aclose()


def iso(ms: str | int | None) -> str | None:
    """An epoch-milliseconds field as ISO 8601 UTC (``2026-12-05T10:00:00.123Z``), or None."""
    if ms in (None, ""):
        return None
    moment = datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class WorkflowFilter:
    """Which workflows to list: a status, a task or workflow name, at most ``limit`` of them."""

    status: str | None = None
    task: str | None = None
    limit: int = 50

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise InvalidValueError("status", self.status, f"one of {', '.join(STATUSES)}")
        if type(self.limit) is not int or self.limit < 1:
            raise InvalidValueError("limit", self.limit, "a whole number of at least 1")

    def matches(self, row: dict[str, Any]) -> bool:
        if self.status is not None and row["status"] != self.status:
            return False
        return self.task is None or self.task in (row["task"], row["name"])


def _name(fields: dict[str, str]) -> str:
    return fields.get(Field.NAME) or fields.get(Field.TASK) or fields.get(Field.KIND, Kind.TASK)


def summary(key: str, fields: dict[str, str]) -> dict[str, Any]:
    """The list row of one root signature."""
    return {
        "key": key,
        "kind": fields.get(Field.KIND) or Kind.TASK.value,
        "name": _name(fields),
        "task": fields.get(Field.TASK, ""),
        "status": fields.get(Field.STATUS) or SignatureStatus.PENDING.value,
        "created_at": iso(fields.get(Field.CREATED)),
        "started_at": iso(fields.get(Field.STARTED)),
        "finished_at": iso(fields.get(Field.FINISHED)),
    }


async def list_workflows(store: Store, wanted: WorkflowFilter) -> list[dict[str, Any]]:
    """Started root workflows of the store's namespace, running and ended, newest first, as
    JSON-able rows."""
    redis = store.redis
    shards = store.keys.all_shards
    newest = _Merged([_Cursor(redis, index) for s in shards for index in (s.workflows, s.ended)])
    rows: list[dict[str, Any]] = []
    gone: list[str] = []
    while len(rows) < wanted.limit:
        batch = await newest.take(PAGE)
        if not batch:
            break
        pipe = redis.pipeline(transaction=False)
        for key in batch:
            pipe.hmget(key, list(SUMMARY_FIELDS))
        for key, values in zip(batch, await pipe.execute(), strict=True):
            fields = {f: _text(v) for f, v in zip(SUMMARY_FIELDS, values, strict=True) if v}
            if not fields or Field.MOVED in fields:
                gone.append(key)
                continue
            row = summary(key, fields)
            if wanted.matches(row):
                rows.append(row)
    if gone:  # expired workflows: their index entries go as they are met
        pipe = redis.pipeline(transaction=False)
        for shard, keys in store.keys.by_shard(gone).items():
            for index in (shard.workflows, shard.ended, shard.expiry):
                pipe.zrem(index, *keys)
        await pipe.execute()
    return rows[: wanted.limit]


class _Cursor:
    """One index read newest first, a page at a time."""

    def __init__(self, redis: Any, key: str) -> None:
        self.redis, self.key = redis, key
        self.start, self.exhausted = 0, False
        self.buffer: list[tuple[str, float]] = []

    async def head(self) -> tuple[str, float] | None:
        if not self.buffer and not self.exhausted:
            got = await self.redis.zrevrange(
                self.key, self.start, self.start + PAGE - 1, withscores=True
            )
            self.start += len(got)
            self.buffer = [(_text(k), float(score)) for k, score in got]
            self.exhausted = len(got) < PAGE
        return self.buffer[0] if self.buffer else None


class _Merged:
    """The running and the ended index as one sequence, newest first."""

    def __init__(self, cursors: list[_Cursor]) -> None:
        self.cursors = cursors

    async def take(self, count: int) -> list[str]:
        out: list[str] = []
        while len(out) < count:
            heads = [(await c.head(), c) for c in self.cursors]
            live = [(h, c) for h, c in heads if h is not None]
            if not live:
                break
            _, cursor = max(live, key=lambda hc: hc[0][1] if hc[0] else 0.0)
            out.append(cursor.buffer.pop(0)[0])
        return out


async def workflow_tree(store: Store, key: str, traceback: bool = False) -> dict[str, Any]:
    """The whole tree under ``key``: chain steps and swarm members in order (``children``),
    callbacks, statuses, attempts, swarm counts, results and errors. SignatureNotFoundError or
    NotARecordError for a key that is not a signature of the namespace."""
    record = await store.load(key)
    nodes = await _read_tree(store, record)
    return _node(record.key, nodes, traceback, set())


@dataclass(slots=True)
class _Read:
    fields: dict[str, str]
    members: list[str]
    queued: int


async def _read_tree(store: Store, root: Record) -> dict[str, _Read]:
    """Every record of the tree, level by level, one pipeline per level."""
    redis = store.redis
    found: dict[str, _Read] = {}
    level: dict[str, dict[str, str]] = {root.key: root.fields}
    for _ in range(64):  # deeper nesting than this is not a workflow anyone built by hand
        pipe = redis.pipeline(transaction=False)
        swarms = [k for k, f in level.items() if f.get(Field.KIND) == Kind.SWARM]
        for k in swarms:
            pipe.lrange(K.members(k), 0, -1)
            pipe.llen(K.queue(k))
        extra = await pipe.execute() if swarms else []
        for k, fields in level.items():
            found[k] = _Read(fields, [], 0)
        for i, k in enumerate(swarms):
            found[k].members = [_text(m) for m in extra[2 * i]]
            found[k].queued = int(extra[2 * i + 1])
        wanted = [c for k in level for c in _child_keys(found[k]) if c not in found]
        if not wanted:
            break
        level = await _load_following(store, wanted)
    return found


async def _load_following(store: Store, wanted: list[str]) -> dict[str, dict[str, str]]:
    """Records under ``wanted`` keys, following forwarding notes; missing ones are empty."""
    out: dict[str, dict[str, str]] = {}
    pending = list(dict.fromkeys(wanted))
    for _ in range(MAX_FORWARDS):
        if not pending:
            break
        pipe = store.redis.pipeline(transaction=False)
        for k in pending:
            pipe.hgetall(k)
        moved: list[str] = []
        for k, raw in zip(pending, await pipe.execute(), strict=True):
            fields = {_text(a): _text(b) for a, b in raw.items()}
            target = fields.get(Field.MOVED)
            out[k] = {Field.MOVED: target} if target else fields
            if target and target not in out:
                moved.append(target)
        pending = moved
    return out


def _child_keys(read: _Read) -> list[str]:
    f = read.fields
    keys = list(read.members) if f.get(Field.KIND) == Kind.SWARM else _keys(f, Field.STEPS)
    if f.get(Field.MOVED):
        keys.append(f[Field.MOVED])
    return keys + _keys(f, Field.SUCCESS) + _keys(f, Field.ERRORS)


def _keys(fields: dict[str, str], name: str) -> list[str]:
    raw = fields.get(name)
    return [str(k) for k in loads(raw)] if raw else []


def _node(key: str, nodes: dict[str, _Read], traceback: bool, seen: set[str]) -> dict[str, Any]:
    read = nodes.get(key)
    hops = 0
    while read is not None and read.fields.get(Field.MOVED) and hops < MAX_FORWARDS:
        key, read, hops = read.fields[Field.MOVED], nodes.get(read.fields[Field.MOVED]), hops + 1
    if read is None or not read.fields or key in seen:
        return {"key": key, "kind": None, "name": None, "status": "expired", "children": []}
    seen.add(key)
    f = read.fields
    node = summary(key, f)
    node["attempt"] = int(f.get(Field.ATTEMPT) or 0)
    # When a message that waits (a delay, a rate limit's slot) is due; None once it started.
    waits = node["status"] in (SignatureStatus.PENDING, SignatureStatus.SUSPENDED)
    waits = waits or node["status"] == SignatureStatus.INTERRUPTED
    node["due_at"] = iso(f.get(Field.DUE)) if waits else None
    node["kwargs"] = Record(key, f).kwargs()
    _outcome(node, f, traceback)
    if node["kind"] == Kind.SWARM:
        node["swarm"] = _swarm_counts(read)
        if f.get(Field.TEMPLATE):  # a map: its members are made from the template when it runs
            node["map"] = {"items_field": f.get(Field.ITEMS_FIELD) or "items"}
    children = read.members if node["kind"] == Kind.SWARM else _keys(f, Field.STEPS)
    if node["kind"] == Kind.CHAIN:
        node["current_step"] = int(f.get(Field.CURRENT) or 0)
    node["children"] = [_node(c, nodes, traceback, seen) for c in children]
    node["callbacks"] = {
        "success": [_node(c, nodes, traceback, seen) for c in _keys(f, Field.SUCCESS)],
        "error": [_node(c, nodes, traceback, seen) for c in _keys(f, Field.ERRORS)],
    }
    return node


def _outcome(node: dict[str, Any], f: dict[str, str], traceback: bool) -> None:
    if f.get(Field.RESULT) and node["status"] == SignatureStatus.DONE:
        node["result"] = loads(f[Field.RESULT])
    raw = f.get(Field.ERROR)
    if raw:
        err = json.loads(raw)
        node["error"] = {
            "type": err.get("type", ""),
            "message": err.get("message", ""),
            "task": err.get("task_name", ""),
        }
        if traceback:
            node["error"]["traceback"] = err.get("traceback") or ""


def _swarm_counts(read: _Read) -> dict[str, Any]:
    f = read.fields
    total = int(f.get(Field.TOTAL) or len(read.members))
    return {
        "done": int(f.get(Field.N_DONE) or 0),
        "failed": int(f.get(Field.N_FAILED) or 0),
        "canceled": int(f.get(Field.N_CANCELED) or 0),
        "running": int(f.get(Field.RUNNING) or 0),
        "queued": read.queued,
        "total": total,
        "closed": f.get(Field.CLOSED) == "1",
        "max_concurrency": int(f.get(Field.MAX_CONCURRENCY) or 0),
    }


def statuses(tree: dict[str, Any]) -> dict[str, str]:
    """key -> status of every node in a tree (what changed between two reads of it)."""
    out = {tree["key"]: tree["status"]}
    for child in _all_children(tree):
        out.update(statuses(child))
    return out


def _all_children(tree: dict[str, Any]) -> Iterable[dict[str, Any]]:
    yield from tree.get("children", [])
    callbacks = tree.get("callbacks") or {}
    yield from callbacks.get("success", [])
    yield from callbacks.get("error", [])


def ended(tree: dict[str, Any]) -> bool:
    return tree["status"] in {s.value for s in TERMINAL} or tree["status"] == "expired"


async def workers(store: Store) -> list[dict[str, Any]]:
    """The processes that published tasks in this namespace, freshest heartbeat first."""
    raw = await store.redis.hgetall(store.keys.workers)
    now = time.time()
    out = []
    for worker_id, info in raw.items():
        data = json.loads(_text(info))
        beat = float(data.get("heartbeat", 0)) / 1000
        out.append(
            {
                "worker": _text(worker_id),
                "tasks": sorted(data.get("tasks", [])),
                "engine": data.get("engine", ""),
                "started_at": iso(data.get("started")),
                "last_heartbeat": iso(data.get("heartbeat")),
                "seconds_since_heartbeat": round(max(0.0, now - beat), 1),
            }
        )
    return sorted(out, key=lambda w: w["seconds_since_heartbeat"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def operate(store: Store, key: str, action: Control | str) -> str:
    """Suspend, resume, interrupt or cancel the signature under ``key`` from outside the app;
    its new status. Typed errors as for the API (UnknownActionError, InvalidTransitionError,
    TaskAlreadyRunningError, SignatureNotFoundError, NotARecordError)."""
    actions = await apply_control(store, key, action)
    for stop in (a for a in actions if a.kind is ActionKind.STOP):
        # Taskiq workers stop the run at once; every engine's heartbeat sees the status anyway.
        await store.redis.publish(store.keys.cancel_channel, stop.payload or stop.key)
    await store.expedite([a.entry for a in actions if a.kind is ActionKind.DELIVER and a.entry])
    return (await store.load(key)).status or SignatureStatus.PENDING.value
