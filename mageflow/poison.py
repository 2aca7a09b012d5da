"""Poison messages: deliveries that can never run are dead-lettered, not retried.

A delivery is poison when no number of tries can make it run: it cannot be decoded, names a
task this worker does not have, carries something other than a mageflow envelope, an attempt
number outside ``0..retries``, or a key that is not a record of this namespace, or the record is
of another task. Retrying such a message would hold a worker slot forever (and a key of the
wrong Redis type would break the lease heartbeat of every run beside it), so each is
acknowledged, written to the dead-letter stream with its reason (``mageflow dead-letters``),
logged once at ERROR and counted. Only when the dead letter cannot be written (Redis is down)
is the message left to the engine, to come back later: a poison message is never dropped unseen.

The checks here are the engine-neutral ones; the Taskiq receiver adds the wire-level ones
(undecodable data, bad labels) before taskiq itself looks at a message.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from mageflow.envelope import Envelope
from mageflow.errors import PoisonMessageError
from mageflow.store.dead_letters import DeadLetterStore
from mageflow.store.keys import KeySchema
from mageflow.store.records import dumps
from mageflow.store.schema import DeadField, PoisonReason
from mageflow.tasks import TaskDef

log = logging.getLogger("mageflow.poison")

__all__ = ["DeadLetters", "check_attempt", "check_envelope", "poison"]


def poison(reason: PoisonReason, detail: str, task: str = "", key: str = "") -> PoisonMessageError:
    return PoisonMessageError(reason.value, detail, task, key)


def check_attempt(attempt: Any, task: TaskDef) -> int:
    """``attempt`` if it is an int in ``0..task.retries``; else a poison error."""
    if type(attempt) is not int or not 0 <= attempt <= task.retries:
        raise poison(
            PoisonReason.BAD_ATTEMPT,
            f"attempt {attempt!r} is not a whole number from 0 to {task.retries} "
            f"(task {task.name!r} has {task.retries} retries)",
            task.name,
        )
    return attempt


def check_envelope(payload: Any, keys: KeySchema, task_name: str = "") -> Envelope:
    """The envelope in ``payload`` when it is one, for a signature key of this namespace."""
    if not isinstance(payload, dict):
        raise poison(
            PoisonReason.BAD_ENVELOPE,
            f"the envelope is a {type(payload).__name__}, not a JSON object",
            task_name,
        )
    sig = payload.get("sig")
    if not isinstance(sig, str) or not sig:
        raise poison(PoisonReason.BAD_ENVELOPE, "the envelope names no signature key", task_name)
    if not keys.owns(sig):
        raise poison(
            PoisonReason.FOREIGN_KEY,
            f"{sig!r} is not a signature key of namespace {keys.namespace!r}",
            task_name,
            sig,
        )
    for name, kinds in (("input", (dict,)), ("error", (dict, type(None)))):
        if name in payload and not isinstance(payload[name], kinds):
            raise poison(
                PoisonReason.BAD_ENVELOPE,
                f"the envelope's {name!r} is a {type(payload[name]).__name__}",
                task_name,
                sig,
            )
    return Envelope.from_dict(payload)


class DeadLetters:
    """Writes poison deliveries to the dead-letter stream, logs each once, counts them."""

    def __init__(self, store: DeadLetterStore) -> None:
        self.store = store
        self.count = 0  # dead-lettered by this process
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    async def bury(self, error: PoisonMessageError, data: bytes | str | Any, source: str) -> str:
        """Record ``error`` and the message ``data`` it came with; the letter's id. Raises
        RedisUnavailableError when the letter cannot be written: then leave the message to the
        engine to deliver again."""
        raw = data if isinstance(data, bytes | str) else _json_or_repr(data)
        letter = await self.store.add(
            {
                DeadField.REASON: error.reason,
                DeadField.DETAIL: error.detail,
                DeadField.TASK: error.task_name,
                DeadField.KEY: error.key,
                DeadField.DATA: raw,
                DeadField.SOURCE: source,
                DeadField.WORKER: self.worker,
            }
        )
        self.count += 1
        log.error(
            "dead-lettered a delivery%s%s from %s: %s (%s). It was acknowledged and will not run; "
            "`mageflow dead-letters` shows it.",
            f" of task {error.task_name!r}" if error.task_name else "",
            f" for {error.key}" if error.key else "",
            source,
            error.detail,
            error.reason,
        )
        return letter


def _json_or_repr(value: Any) -> str:
    try:
        return dumps(value)
    except Exception:  # not JSON-able: what it looked like is enough for a person
        return repr(value)
