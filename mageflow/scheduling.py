"""Delays and rate limits as the API takes them, turned into what a record stores.

The kernel does the rest (see docs/scheduling.md): ``deliver`` in lua/lib.lua keeps a message that
must wait on its record with an entry in the namespace's delayed index, ``release.lua`` queues
what is due, and ``start_task.lua`` holds a rate-limited task back until its reserved slot. This
module only checks arguments and spells the fields:

* a delay given at start (``aio_run_no_wait(delay=... | at=...)``) goes to ``launch.lua``, which
  sets the due time from Redis's clock;
* a delay given at sign time (``sign(..., delay=...)``) is the plan field ``Field.DELAY``: the
  message waits that long after it is queued (a callback after its task ends, say);
* a task's rate limit is read from its metadata (``TaskDef.meta``, or the registry for a task of
  another process) into the plan fields ``Field.RATE`` and ``Field.RATE_KEY`` of each signature,
  so the limit travels with the work to whichever worker claims it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mageflow.config import TTLConfig
from mageflow.errors import InvalidArgumentError, InvalidSettingError, InvalidValueError
from mageflow.store.schema import Field

#: The periods a rate limit may name, in ms.
PERIOD_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}
_RATE = re.compile(r"([1-9][0-9]*)/([smh])")
RATE_RULE = 'a count per second, minute or hour: "100/s", "10/m" or "1000/h"'


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A task's rate limit: at most ``count`` starts per period, across every worker and process
    of the namespace. Work over the limit waits (in order, never dropped, never early).

    ``rate``: ``"100/s"``, ``"10/m"`` or ``"1000/h"``. ``key``: count separately per value of this
    message field (a bound kwarg, else the field of the message the task is started with).
    """

    rate: str
    key: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rate, str) or _RATE.fullmatch(self.rate) is None:
            raise InvalidSettingError("rate_limit", self.rate, RATE_RULE)
        if self.count > self.period_ms:
            raise InvalidSettingError(
                "rate_limit", self.rate, "at most one start per millisecond (1000/s)"
            )
        if self.key is not None and (not isinstance(self.key, str) or not self.key.strip()):
            raise InvalidSettingError("rate_limit key", self.key, "a message field name")

    @property
    def count(self) -> int:
        return int(self.rate.split("/")[0])

    @property
    def period_ms(self) -> int:
        return PERIOD_MS[self.rate.split("/")[1]]

    @property
    def stored(self) -> str:
        """The form records and task metadata carry: ``"<count>/<period ms>"``."""
        return f"{self.count}/{self.period_ms}"


def rate_limit_of(value: Any) -> RateLimit | None:
    """The ``rate_limit`` task option: None, a rate string or a :class:`RateLimit`."""
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        return RateLimit(value)
    raise InvalidSettingError("rate_limit", value, f'{RATE_RULE}, or RateLimit("5/s", key=...)')


def delay_ms(delay: Any) -> int:
    """A delay (seconds, or a timedelta) in ms; typed errors for anything else or a negative."""
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise InvalidArgumentError("delay", "seconds (a number) or a datetime.timedelta", delay)
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidValueError("delay", delay, "a finite number of seconds, 0 or more")
    return round(seconds * 1000)


def at_ms(at: Any) -> int:
    """A due time (an aware datetime) in ms since the epoch."""
    if not isinstance(at, datetime):
        raise InvalidArgumentError("at", "a timezone-aware datetime.datetime", at)
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidValueError(
            "at", at, "a timezone-aware datetime (e.g. datetime.now(UTC) + timedelta(...))"
        )
    return round(at.timestamp() * 1000)


def longest_wait(ttl: TTLConfig, kind: str) -> float:
    """The active TTL (s) of a signature of ``kind``: the longest its message may wait."""
    override = getattr(ttl, kind, ttl.task).active_ttl
    return float(override or ttl.active_ttl)


def checked_delay(delay: Any, longest_s: float) -> int | None:
    """A delay in ms (None for none); one longer than ``longest_s`` (the signature's active TTL)
    would outlive its record, so it is refused."""
    if delay is None:
        return None
    ms = delay_ms(delay)
    check_within(ms, longest_s, "delay", delay)
    return ms


def due_args(delay: Any, at: Any, longest_s: float) -> tuple[int | None, int | None]:
    """``(delay ms, at ms)`` for launch.lua from ``aio_run_no_wait``'s arguments (both None when
    neither is given)."""
    if delay is not None and at is not None:
        raise InvalidValueError("at", at, "pass delay or at, not both")
    if at is None:
        return checked_delay(delay, longest_s), None
    due = at_ms(at)
    check_within(due - round(datetime.now().timestamp() * 1000), longest_s, "at", at)
    return None, due


def check_within(wait_ms: int, longest_s: float, argument: str, value: Any) -> None:
    if wait_ms > longest_s * 1000:
        raise InvalidValueError(
            argument,
            value,
            f"a wait of at most the signature's active TTL ({longest_s:g} s), which it must "
            "outlive; raise TTLConfig.active_ttl for longer waits",
        )


def signed_fields(meta: dict[str, Any] | None, delay: int | None = None) -> dict[Field, str]:
    """The scheduling plan fields of a new task signature: its task's rate limit (from the task's
    metadata) and a sign-time delay in ms. Empty values are not stored."""
    meta = meta or {}
    return {
        Field.RATE: str(meta.get("rate") or ""),
        Field.RATE_KEY: str(meta.get("rate_key") or ""),
        Field.DELAY: "" if not delay else str(delay),
    }
