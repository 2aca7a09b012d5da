"""The record schema: every field of a stored signature, every status, every action a transition
asks for, and every answer a script gives, in one place.

The Lua scripts do not spell any of these: :func:`lua_constants` turns this module into the tables
``F`` (fields), ``ST`` (statuses), ``KIND``, ``ACT`` (action kinds), ``V`` (verdicts) and ``SUB``
(sub-key suffixes) that are prepended to every script, and ``tests/store/test_schema.py`` fails
when a script names a field, status or verdict by a bare string instead.

A record is a Redis hash. Its fields fall in two groups, and :func:`plan_fields` is the one rule
that tells them apart: the *plan* (what to run: task, bound kwargs, callbacks, limits), which a
copy keeps, and the *run* (what happened: status, attempts, results, queued messages), which a
copy starts without.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

KWARG_PREFIX = "k:"  # one field per bound kwarg: ``k:<name>`` -> JSON value


class SignatureStatus(StrEnum):
    """Where a signature (task, chain or swarm) is in its life. Stored as the plain string."""

    PENDING = "pending"  # created, not started (or queued in a swarm waiting for a slot)
    ACTIVE = "active"  # started on a worker, or a container with work in flight
    SUSPENDED = "suspended"  # paused before starting; resume() sends its message
    INTERRUPTED = "interrupted"  # stopped while running; resume() runs it again
    CANCELED = "canceled"  # stopped for good; terminal
    DONE = "done"  # finished with a result; terminal
    FAILED = "failed"  # finished with an error after its last retry; terminal

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({SignatureStatus.CANCELED, SignatureStatus.DONE, SignatureStatus.FAILED})


class Kind(StrEnum):
    TASK = "task"
    CHAIN = "chain"
    SWARM = "swarm"


class Field(StrEnum):
    """Fields of a signature hash. The comment says which group a field is in (see module doc)."""

    # -- plan: what to run --------------------------------------------------------------------
    MARK = "mf"  # plan: the record marker (RECORD_MARK); scripts refuse a key without it
    KIND = "kind"  # plan: task | chain | swarm
    TASK = "task"  # plan: the registered task name (tasks only)
    NAME = "name"  # plan: display name
    SUCCESS = "ok"  # plan: JSON list of success callback keys
    ERRORS = "err"  # plan: JSON list of error callback keys
    STEPS = "steps"  # plan: a chain's step keys, JSON list
    MODEL = "model"  # plan: a model_validators override, "module:Qualname"
    MAX_CONCURRENCY = "maxc"  # plan: a swarm's max_concurrency
    FAIL_LIMIT = "limit"  # plan: a swarm's stop_after_n_failures ('' for none)
    MAX_TASKS = "maxtasks"  # plan: a swarm's max_task_allowed ('' for none)
    CLOSED = "closed"  # plan: '1' once a swarm takes no more members
    TOTAL = "total"  # plan: how many members a swarm has (its members list is copied too)
    PARENT = "parent"  # plan: the chain or swarm this signature is a step or member of
    OWNER = "own"  # plan: the signature this is a callback of (a step's or member's: its parent)
    CREATED = "ts_c"  # plan: creation time (ms); a copy gets its own
    TEMPLATE = "tpl"  # plan: a map's template, JSON list of one key: copied once per item
    ITEMS_FIELD = "itf"  # plan: the message field a map run on its own takes its items from
    ITEM_SUCCESS = "iok"  # plan: JSON list of per-member success callback templates
    ITEM_ERRORS = "ierr"  # plan: JSON list of per-member error callback templates
    ITEM = "item"  # plan: a map member's item, JSON: delivered as its return value
    # -- run: what happened ---------------------------------------------------------------------
    STATUS = "st"  # run: a SignatureStatus
    PREVIOUS = "prev"  # run: the status before a pause
    ATTEMPT = "att"  # run: the attempt that holds the claim (its lease is in the lease index)
    ENVELOPE = "env"  # run: the message this signature gets (queued, parked or running)
    OUTBOX_ENTRY = "obx"  # run: while its message is unsent, <ms> of its outbox entry <key>@<ms>
    RUN_ID = "run"  # run: the engine's run id, when cancelling needs one
    RESULT = "res"  # run: the return value, JSON
    ERROR = "error"  # run: the TaskError, JSON
    FAILED_INPUT = "msg"  # run: the message a task failed with (for its error callbacks)
    CURRENT = "cur"  # run: a chain's current step index
    MEMBER_INPUT = "mi"  # run: the message a swarm's members get
    MEMBER_RET = "mr"  # run: the return value a swarm's members get ('' for none)
    RUNNING = "running"  # run: a swarm's members holding a slot
    N_DONE = "nok"  # run: a swarm's members done
    N_FAILED = "nfail"  # run: a swarm's members failed
    N_CANCELED = "ncanc"  # run: a swarm's members canceled
    TOUCHED = "qtouch"  # run: when a container last refreshed what it waits for (ms)
    CACHE = "cache"  # run: '1' when a durable task has a retry cache
    WAITED = "w"  # run: someone waits for this signature: announce its end
    MOVED = "moved"  # forwarding note: the signature now lives under this key
    STARTED = "ts_s"  # run: start time (ms)
    FINISHED = "ts_f"  # run: end time (ms)
    # -- scheduling (delays, rate limits) ------------------------------------------------------
    DELAY = "dly"  # plan: ms its message waits after it is queued (sign(..., delay=...))
    RATE = "rate"  # plan: its task's rate limit, "<count>/<period ms>" (from the task's meta)
    RATE_KEY = "ratek"  # plan: the message field the rate limit is counted per ('' for none)
    DUE = "due"  # run: when its waiting message is released (ms); once past, its wait is served
    SLOT = "slot"  # run: the start time (ms) the rate limiter reserved for it, until it starts


#: The plan group: what a copy of a signature keeps (the kwargs ``k:*`` belong to it too).
PLAN = frozenset(
    {
        Field.MARK,
        Field.KIND,
        Field.TASK,
        Field.NAME,
        Field.SUCCESS,
        Field.ERRORS,
        Field.STEPS,
        Field.MODEL,
        Field.MAX_CONCURRENCY,
        Field.FAIL_LIMIT,
        Field.MAX_TASKS,
        Field.CLOSED,
        Field.TOTAL,
        Field.PARENT,
        Field.OWNER,
        Field.CREATED,
        Field.TEMPLATE,
        Field.ITEMS_FIELD,
        Field.ITEM_SUCCESS,
        Field.ITEM_ERRORS,
        Field.ITEM,
        Field.DELAY,
        Field.RATE,
        Field.RATE_KEY,
    }
)


def plan_fields(fields: dict[str, str]) -> dict[str, str]:
    """The fields a fresh copy of a record starts from: its plan and kwargs, none of its run."""
    return {k: v for k, v in fields.items() if k in PLAN or k.startswith(KWARG_PREFIX)}


class SubKey(StrEnum):
    """Keys that hang off a signature key (``<signature key><suffix>``)."""

    MEMBERS = ":members"  # list: a swarm's member keys in the order added
    QUEUE = ":queue"  # list: a swarm's members still waiting for a slot
    CACHE = ":cache"  # list: the signatures a durable task created, in order


class ActionKind(StrEnum):
    """What a committed transition asks the sender to do."""

    DELIVER = "deliver"  # send the queued message: a task to the engine; a container starts
    STOP = "stop"  # stop a running task (best effort: its status already says so durably)


class Control(StrEnum):
    """Lifecycle requests (control.lua)."""

    SUSPEND = "suspend"  # graceful: what has not started will not start; running tasks finish
    INTERRUPT = "interrupt"  # aggressive: running tasks are stopped too
    RESUME = "resume"  # send again exactly what was stopped or parked
    CANCEL = "cancel"  # stop everything for good and tell the parent container


class Notice(StrEnum):
    """What a done-channel notice says besides a terminal status."""

    MOVED = "moved"  # the signature now lives under another key: look it up again
    NEVER = "never"  # it got the done TTL without running: it never will


#: The value of :attr:`Field.MARK` on every record (and forwarding note) mageflow writes. A key
#: without it is not a mageflow record, and no script changes it.
RECORD_MARK = "1"

#: Marks a swarm result slot whose member did not finish with a result: {"$mageflow_failed": err}.
FAILED_MARK = "$mageflow_failed"


class Verdict(StrEnum):
    """The first item of every script's answer."""

    OK = "ok"  # the transition happened (actions may follow)
    RUN = "run"  # start_task: this delivery holds the claim; the kwargs follow
    SKIP = "skip"  # finish: the signature was not running (a duplicate); detail: its status
    MISSING = "missing"  # no such record
    BUSY = "busy"  # start_task: a live holder runs this attempt; adopt: it has a message already
    STATUS = "status"  # refused because of the status in the detail (start_task, start_container)
    INVALID = "invalid"  # control/launch: not allowed from the status in the detail
    RUNNING = "running"  # control: suspend of a task that already runs
    ORPHAN = "orphan"  # control: what would start it already ended (details: its status, own)
    PARKED = "parked"  # launch: paused, so the message waits for resume
    LAUNCHED = "launched"  # launch: it was started before
    CLOSED = "closed"  # swarm_add: the swarm is closed
    FULL = "full"  # swarm_add: max_task_allowed would be passed (detail: the limit)
    FINISHED = "finished"  # swarm_add: the swarm ended (detail: its status)
    MOVED = "moved"  # the record moved (detail: its new key)
    OWNED = "owned"  # adopt: it belongs to another signature already
    TREE = "tree"  # adopt: it has callbacks or children, so it is moved as a whole subtree
    FOREIGN = "foreign"  # any script: the key is not a signature key of this namespace
    NOT_RECORD = "not_record"  # any script: the key holds something that is not a record
    WRONG_TASK = "wrong_task"  # start_task: the record is of another task (detail: that task)
    DEFERRED = "deferred"  # start_task: not due yet (a delay or a rate limit); detail: due ms
    RATE = "rate"  # start_task: ask the rate limiter first (details: limiter key, rate, slot)


class PoisonReason(StrEnum):
    """Why a delivery was dead-lettered instead of run (see mageflow/poison.py)."""

    UNDECODABLE = "undecodable"  # the engine's message could not be decoded at all
    NO_DATA = "no_data"  # a stream entry without the field that holds the message
    BAD_LABEL = "bad_label"  # a taskiq label the receiver would choke on
    UNKNOWN_TASK = "unknown_task"  # no task of that name is registered in this worker
    BAD_ENVELOPE = "bad_envelope"  # the payload is not a mageflow envelope
    BAD_ATTEMPT = "bad_attempt"  # the attempt number is not an int in 0..retries
    FOREIGN_KEY = "foreign_key"  # the signature key belongs to another namespace (or none)
    NOT_A_RECORD = "not_a_record"  # the key holds something that is not a mageflow record
    WRONG_TASK = "wrong_task"  # the signature is of another task than the message names
    MISSING_SIGNATURE = "missing_signature"  # no record under the key (never made, or expired)


class DeadField(StrEnum):
    """Fields of a dead-letter stream entry."""

    REASON = "reason"  # a PoisonReason
    DETAIL = "detail"  # what exactly was wrong, in words
    TASK = "task"  # the task name the message named ('' if unreadable)
    KEY = "key"  # the signature key it named ('' if unreadable)
    DATA = "data"  # the message as received (truncated to DEAD_DATA_LIMIT bytes)
    SOURCE = "source"  # where it came from: engine and, for streams, the stream and entry id
    WORKER = "worker"  # host:pid of the process that dead-lettered it
    AT = "at"  # when (ms since the epoch)


#: Bytes of a poison message kept in its dead letter.
DEAD_DATA_LIMIT = 16384


@dataclass(frozen=True, slots=True)
class Action:
    """One follow-up of a committed transition. For DELIVER, ``payload`` is the envelope JSON and
    ``entry`` the outbox entry to drop once sent; for STOP, ``payload`` is the run id."""

    kind: ActionKind
    key: str
    target: Kind
    task: str
    payload: str
    entry: str


ACTION_WIDTH = 6  # strings per action in a script's answer (the fields of Action, in order)
DETAIL_WIDTH = 3  # detail strings after the verdict in every answer


@dataclass(frozen=True, slots=True)
class Answer:
    """A script's answer: a verdict, up to three detail strings, and the actions or the
    kwarg pairs that follow them."""

    verdict: Verdict
    detail: tuple[str, str, str]
    rest: list[str]

    @property
    def ok(self) -> bool:
        return self.verdict in (Verdict.OK, Verdict.RUN)

    def actions(self) -> list[Action]:
        r = self.rest
        return [
            Action(ActionKind(r[i]), r[i + 1], Kind(r[i + 2] or Kind.TASK), *r[i + 3 : i + 6])
            for i in range(0, len(r), ACTION_WIDTH)
        ]

    def pairs(self) -> dict[str, str]:
        return dict(zip(self.rest[::2], self.rest[1::2], strict=True))


def decode(raw: Any) -> Answer:
    """Decode any script's answer (bytes or str items)."""
    items = [x.decode() if isinstance(x, bytes) else str(x) for x in raw]
    detail = (items[1], items[2], items[3])
    return Answer(Verdict(items[0]), detail, items[1 + DETAIL_WIDTH :])


def lua_constants() -> str:
    """The Lua tables every script starts with, generated from this module."""

    def table(name: str, members: dict[str, str]) -> str:
        body = ", ".join(f"{k}={json.dumps(v)}" for k, v in members.items())
        return f"local {name} = {{{body}}}"

    return "\n".join(
        [
            "-- generated from mageflow/store/schema.py (lua_constants); do not edit",
            table("F", {m.name: m.value for m in Field}),
            table("ST", {m.name: m.value for m in SignatureStatus}),
            table("KIND", {m.name: m.value for m in Kind}),
            table("ACT", {m.name: m.value for m in ActionKind}),
            table("V", {m.name: m.value for m in Verdict}),
            table("SUB", {m.name: m.value for m in SubKey}),
            table("CTL", {m.name: m.value for m in Control}),
            table("NOTICE", {m.name: m.value for m in Notice}),
            f"local FAILED_MARK = {json.dumps(FAILED_MARK)}",
            f"local KWARG_PREFIX = {json.dumps(KWARG_PREFIX)}",
            "local TERMINAL = {"
            + ", ".join(f"[{json.dumps(s.value)}]=true" for s in sorted(TERMINAL))
            + "}",
        ]
    )
