"""Every Redis key mageflow writes is named here, and nowhere else.

Shards. A namespace's state is split into ``shards`` shards (1 on a single Redis, 16 by default
on a Redis Cluster). Each shard has a hash tag ``{t}`` chosen so that the shards' slots are
spread evenly over the 16384 Redis Cluster slots. A workflow (a root signature and everything
under it: callbacks, chain steps, swarm members) lives in one shard, and the shard's indexes
(outbox, leases, workflow index, delayed index) carry the same tag, so every state transition
touches keys of one slot only: each script call and each MULTI is single-slot (the store checks
it under test, see ``Store.check_slots``).

Layout, with the default namespace ``mageflow`` (``{t}`` is a shard's tag)::

    mageflow:sig:{t}:<id>             hash   one signature: status, kwargs (k:<name>), result ...
    mageflow:sig:{t}:<id>:members     list   a swarm's member keys, in the order they were added
    mageflow:sig:{t}:<id>:queue       list   a swarm's members still waiting for a slot
    mageflow:sig:{t}:<id>:cache       list   signatures a durable task created (retry cache)
    mageflow:outbox:{t}               zset   queued messages not yet sent: "<key>@<ms>" -> queued at
    mageflow:leases:{t}               zset   running tasks: signature key -> lease deadline (ms)
    mageflow:workflows:{t}            zset   started root signatures, running: key -> created (ms)
    mageflow:workflows:ended:{t}      zset   started root signatures, ended: key -> created (ms)
    mageflow:workflows:expiry:{t}     zset   the ended ones again: key -> when their records expire
    mageflow:delayed:{t}              zset   waiting messages: "<key>@<due ms>" -> due (ms)

Keys of no shard, each written on its own (never in a script or MULTI with another key)::

    mageflow:registry                 hash   task name -> JSON task metadata (written by workers)
    mageflow:workers                  hash   processes with tasks: host:pid -> JSON presence
    mageflow:dead                     stream dead letters: deliveries refused as poison
    mageflow:rate:<task>[:<value>]    hash   a rate limiter: last reserved slot, recent starts

Channels (Redis Cluster broadcasts PUBLISH to every node, so any node may be subscribed to)::

    mageflow:wake                     telling schedulers a message waits
    mageflow:done:{t}                 announcing finished signatures to waiters
    mageflow:cancel                   asking workers to stop a running signature
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from functools import cache as _cached

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from mageflow.config import namespace_problem
from mageflow.errors import CrossSlotError, InvalidSettingError
from mageflow.store.schema import SubKey

#: The segments that make signature keys and done channels (the Lua side gets them generated).
SIG_SEGMENT = ":sig:"
DONE_SEGMENT = ":done:"
OUTBOX_SUFFIX = ":outbox"
WAKE_SUFFIX = ":wake"
RATE_SEGMENT = ":rate:"
#: Shards of a namespace on a Redis Cluster unless MageflowConfig.shards says otherwise.
CLUSTER_SHARDS = 16
MAX_SHARDS = 1024


def one_slot(what: str, key_list: list[str]) -> None:
    """CrossSlotError unless every key of ``key_list`` hashes to one Redis Cluster slot."""
    if len({key_slot(k.encode()) for k in key_list}) > 1:
        raise CrossSlotError(what, key_list)


class _RandomIds:
    """Random 64-bit ids (plenty for signatures that live for days), from the OS's random source
    in batches: one ``os.urandom`` per 512 ids instead of one per id, which was a tenth of the
    time it takes to sign (bench/analysis.md). A forked child starts a batch of its own, so it
    never hands out the ids its parent will."""

    BATCH = 512

    def __init__(self) -> None:
        self._left: list[str] = []

    def take(self) -> str:
        if not self._left:
            raw = os.urandom(8 * self.BATCH).hex()
            self._left = [raw[i : i + 16] for i in range(0, len(raw), 16)]
        return self._left.pop()

    def forget(self) -> None:
        self._left = []


_ids = _RandomIds()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.forget)


def new_id() -> str:
    """A short random id (16 hex digits)."""
    return _ids.take()


@_cached
def shard_tags(count: int) -> tuple[str, ...]:
    """The hash tag of each of ``count`` shards: the first short name whose slot falls in the
    shard's share of the 16384 slots, so any even split of slots over masters spreads shards
    evenly too. Derived, never stored: every process computes the same tags."""
    tags = []
    for i in range(count):
        low = i * REDIS_CLUSTER_HASH_SLOTS // count
        high = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        j = 0
        while not low <= key_slot((tag := f"{i}" if j == 0 else f"{i}-{j}").encode()) < high:
            j += 1
        tags.append(tag)
    return tuple(tags)


@dataclass(frozen=True, slots=True)
class Shard:
    """The index keys of one shard; they share its tag with every signature in it."""

    namespace: str
    tag: str

    def _key(self, suffix: str) -> str:
        return f"{self.namespace}{suffix}:{{{self.tag}}}"

    @property
    def outbox(self) -> str:
        """Queued messages that no receiver has claimed and no sender has confirmed. Each
        transition script adds its follow-ups here in the same step that queues them."""
        return self._key(OUTBOX_SUFFIX)

    @property
    def leases(self) -> str:
        """Running tasks by lease deadline: a task whose deadline passed lost its holder, and
        recovery sends its message again."""
        return self._key(":leases")

    @property
    def workflows(self) -> str:
        """Started root signatures (no parent, no owner) that have not ended, by creation time,
        so operators list workflows without scanning the keyspace. The start (launch.lua) adds
        a root; its end (finalize in flow.lua) moves it to :attr:`ended`."""
        return self._key(":workflows")

    @property
    def ended(self) -> str:
        """Ended workflows by creation time; :attr:`expiry` holds each one's expiry, so every
        end drops the entries whose records are gone."""
        return self._key(":workflows:ended")

    @property
    def expiry(self) -> str:
        return self._key(":workflows:expiry")

    @property
    def delayed(self) -> str:
        """Messages that wait for a due time (a delay, or a rate limit's slot): entry
        ``"<key>@<due ms>"`` -> due. The message itself waits on the record; the scheduler of
        every client releases what is due (release.lua)."""
        return self._key(":delayed")

    @property
    def indexes(self) -> list[str]:
        """The keys every transition script gets as KEYS[1..6] (see lua/lib.lua)."""
        return [self.outbox, self.leases, self.workflows, self.ended, self.expiry, self.delayed]


@dataclass(frozen=True, slots=True)
class KeySchema:
    namespace: str = "mageflow"
    shards: int = 1
    _by_tag: dict[str, Shard] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = namespace_problem(self.namespace)
        if problem is not None:
            raise InvalidSettingError("namespace", self.namespace, problem)
        if type(self.shards) is not int or not 1 <= self.shards <= MAX_SHARDS:
            raise InvalidSettingError("shards", self.shards, f"a whole number 1..{MAX_SHARDS}")
        by_tag = {t: Shard(self.namespace, t) for t in shard_tags(self.shards)}
        object.__setattr__(self, "_by_tag", by_tag)

    @property
    def registry(self) -> str:
        return f"{self.namespace}:registry"

    def signature(self, wf: str, sig_id: str) -> str:
        return f"{self.namespace}{SIG_SEGMENT}{{{wf}}}:{sig_id}"

    def new_signature(self, wf: str | None = None) -> str:
        """A new key under tag ``wf`` (a parent's, so the child shares its slot), or in a shard
        picked at random for a new workflow."""
        return self.signature(wf or random.choice(shard_tags(self.shards)), new_id())

    @property
    def all_shards(self) -> list[Shard]:
        return list(self._by_tag.values())

    def shard(self, key: str) -> Shard:
        """The shard of signature (or outbox entry) ``key``. A key whose tag is not one of this
        namespace's shards (written with another shard count) gets a shard of its own tag, so
        its scripts still run single-slot."""
        tag = workflow_of(key)
        found = self._by_tag.get(tag)
        return found if found is not None else Shard(self.namespace, tag)

    def by_shard(self, key_list: list[str]) -> dict[Shard, list[str]]:
        """``key_list`` grouped by shard, each group in the original order."""
        out: dict[Shard, list[str]] = {}
        for key in key_list:
            out.setdefault(self.shard(key), []).append(key)
        return out

    @property
    def dead_letters(self) -> str:
        """Stream of deliveries refused as poison (mageflow/poison.py), newest last."""
        return f"{self.namespace}:dead"

    @property
    def workers(self) -> str:
        """Presence of the processes that registered tasks: ``host:pid`` -> JSON (tasks, engine,
        start, last heartbeat), refreshed by each process's keeper loop."""
        return f"{self.namespace}:workers"

    @property
    def wake_channel(self) -> str:
        """Pub/sub channel on which a script that schedules a message announces its due time,
        so sleeping schedulers look at the head of the delayed index again."""
        return f"{self.namespace}{WAKE_SUFFIX}"

    def rate(self, task: str, value: str | None = None) -> str:
        """The rate limiter of ``task`` (or of one value of its per-key field). Written only by
        start_task.lua, which builds the same name."""
        base = f"{self.namespace}{RATE_SEGMENT}{task}"
        return base if value is None else f"{base}:{value}"

    def owns(self, key: object) -> bool:
        """True when ``key`` is shaped like a signature key of this namespace (the scripts check
        the same, and that the record carries the marker)."""
        return isinstance(key, str) and _sig_re(self.namespace).fullmatch(key) is not None

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel that carries cancel requests to every worker of the namespace."""
        return f"{self.namespace}:cancel"

    def done_channel(self, sig_key: str) -> str:
        """The done channel of the workflow ``sig_key`` belongs to."""
        return f"{self.namespace}{DONE_SEGMENT}{{{workflow_of(sig_key)}}}"

    @property
    def done_pattern(self) -> str:
        """Pattern matching every workflow's ``done`` channel (lib.lua publishes on
        ``<namespace>:done:{<wf>}``)."""
        return f"{self.namespace}{DONE_SEGMENT}*"


@_cached
def _sig_re(namespace: str) -> re.Pattern[str]:
    return re.compile(re.escape(namespace + SIG_SEGMENT) + r"\{[^{}]+\}:[A-Za-z0-9_\-]+")


def members(sig_key: str) -> str:
    return sig_key + SubKey.MEMBERS


def queue(sig_key: str) -> str:
    return sig_key + SubKey.QUEUE


def cache(sig_key: str) -> str:
    """Signatures a durable task created, in order, reused when the task is retried."""
    return sig_key + SubKey.CACHE


def sub_keys(sig_key: str) -> list[str]:
    return [sig_key + s for s in SubKey]


def workflow_of(key: str) -> str:
    """The hash tag of a signature key: the workflow it belongs to."""
    start = key.index("{") + 1
    return key[start : key.index("}", start)]


def id_of(key: str) -> str:
    return key.rsplit(":", 1)[1]


def rekey(key: str, wf: str) -> str:
    """The same signature id moved under another workflow's hash tag."""
    prefix = key[: key.index("{")]
    return f"{prefix}{{{wf}}}:{id_of(key)}"
