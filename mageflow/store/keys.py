"""Every Redis key mageflow writes is named here, and nowhere else.

All keys of one workflow (a root signature and everything under it: callbacks, chain steps, swarm
members) share the hash tag ``{wf}``, so each state transition touches a single Redis Cluster slot.

Layout, with the default namespace ``mageflow``::

    mageflow:registry                 hash   task name -> JSON task metadata (written by workers)
    mageflow:sig:{wf}:<id>            hash   one signature: status, kwargs (k:<name>), result ...
    mageflow:sig:{wf}:<id>:members    list   a swarm's member keys, in the order they were added
    mageflow:sig:{wf}:<id>:queue      list   a swarm's members still waiting for a slot
    mageflow:sig:{wf}:<id>:cache      list   signatures a durable task created (retry cache)
    mageflow:outbox                   zset   queued messages not yet sent: "<key>@<ms>" -> queued at
    mageflow:leases                   zset   running tasks: signature key -> lease deadline (ms)
    mageflow:dead                     stream dead letters: deliveries refused as poison
    mageflow:workflows                zset   started root signatures, running: key -> created (ms)
    mageflow:workflows:ended          zset   started root signatures, ended: key -> created (ms)
    mageflow:workflows:expiry         zset   the ended ones again: key -> when their records expire
    mageflow:workers                  hash   processes with tasks: host:pid -> JSON presence
    mageflow:delayed                  zset   waiting messages: "<key>@<due ms>" -> due (ms)
    mageflow:rate:<task>[:<value>]    hash   a rate limiter: last reserved slot, recent starts
    mageflow:wake                     pubsub channel telling schedulers a message waits
    mageflow:done:{wf}                pubsub channel announcing finished signatures to waiters
    mageflow:cancel                   pubsub channel asking workers to stop a running signature
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from functools import cache as _cached

from mageflow.config import namespace_problem
from mageflow.errors import InvalidSettingError
from mageflow.store.schema import SubKey

#: The segments that make signature keys and done channels (the Lua side gets them generated).
SIG_SEGMENT = ":sig:"
DONE_SEGMENT = ":done:"
OUTBOX_SUFFIX = ":outbox"
WORKFLOWS_SUFFIX = ":workflows"
ENDED_SUFFIX = ":workflows:ended"
EXPIRY_SUFFIX = ":workflows:expiry"
#: Scheduling keys (the Lua side derives them from the namespace prefix of the outbox key).
DELAYED_SUFFIX = ":delayed"
WAKE_SUFFIX = ":wake"
RATE_SEGMENT = ":rate:"


def new_id() -> str:
    """A short random id; 64 bits is plenty for signatures that live for days."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class KeySchema:
    namespace: str = "mageflow"

    def __post_init__(self) -> None:
        problem = namespace_problem(self.namespace)
        if problem is not None:
            raise InvalidSettingError("namespace", self.namespace, problem)

    @property
    def registry(self) -> str:
        return f"{self.namespace}:registry"

    def signature(self, wf: str, sig_id: str) -> str:
        return f"{self.namespace}{SIG_SEGMENT}{{{wf}}}:{sig_id}"

    def new_signature(self, wf: str | None = None) -> str:
        sig_id = new_id()
        return self.signature(wf or sig_id, sig_id)

    @property
    def outbox(self) -> str:
        """Index of queued messages that no receiver has claimed and no sender has confirmed.
        Each transition script adds its follow-ups here in the same step that queues them."""
        return f"{self.namespace}{OUTBOX_SUFFIX}"

    @property
    def leases(self) -> str:
        """Index of running tasks by lease deadline: a task whose deadline passed lost its
        holder, and recovery sends its message again."""
        return f"{self.namespace}:leases"

    @property
    def indexes(self) -> list[str]:
        """The index keys every transition script gets as KEYS[1] and KEYS[2]."""
        return [self.outbox, self.leases]

    @property
    def dead_letters(self) -> str:
        """Stream of deliveries refused as poison (mageflow/poison.py), newest last."""
        return f"{self.namespace}:dead"

    @property
    def workflows(self) -> str:
        """Index of started root signatures (no parent, no owner) that have not ended, by
        creation time, so operators list workflows without scanning the keyspace. The start
        (launch.lua) adds a root; its end (finalize in flow.lua) moves it to :attr:`ended`."""
        return f"{self.namespace}{WORKFLOWS_SUFFIX}"

    @property
    def ended(self) -> str:
        """Index of ended workflows by creation time; :attr:`expiry` holds each one's expiry,
        so every end drops the entries whose records are gone."""
        return f"{self.namespace}{ENDED_SUFFIX}"

    @property
    def expiry(self) -> str:
        return f"{self.namespace}{EXPIRY_SUFFIX}"

    @property
    def workers(self) -> str:
        """Presence of the processes that registered tasks: ``host:pid`` -> JSON (tasks, engine,
        start, last heartbeat), refreshed by each process's keeper loop."""
        return f"{self.namespace}:workers"

    @property
    def delayed(self) -> str:
        """Index of messages that wait for a due time (a delay, or a rate limit's slot): entry
        ``"<key>@<due ms>"`` -> due. The message itself waits on the record; the scheduler of
        every client releases what is due (release.lua)."""
        return f"{self.namespace}{DELAYED_SUFFIX}"

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
