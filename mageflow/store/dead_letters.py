"""The dead-letter stream: deliveries refused as poison, kept for a person to look at.

One Redis stream per namespace (``<ns>:dead``, see keys.py). Each entry holds the fields of
:class:`~mageflow.store.schema.DeadField`. The stream is capped (approximate ``MAXLEN``) and
expires ``ttl`` seconds after the last letter, so a flood of junk cannot grow Redis without
bound; ``mageflow dead-letters`` lists and purges it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors

from mageflow.errors import RedisUnavailableError
from mageflow.store.batching import AnyRedis
from mageflow.store.keys import KeySchema
from mageflow.store.schema import DEAD_DATA_LIMIT, DeadField

#: Letters kept at most (approximately: Redis trims whole macro nodes).
MAX_LETTERS = 10_000
#: Seconds a dead-letter stream lives after its last letter.
DEFAULT_TTL = 7 * 24 * 3600.0

_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused delivery, as listed by ``mageflow dead-letters``."""

    id: str
    reason: str
    detail: str
    task: str
    key: str
    data: str
    source: str
    worker: str
    at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "detail": self.detail,
            "task": self.task,
            "key": self.key,
            "data": self.data,
            "source": self.source,
            "worker": self.worker,
            "at": self.at,
        }


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


class DeadLetterStore:
    def __init__(self, redis: AnyRedis, keys: KeySchema, ttl: float = DEFAULT_TTL) -> None:
        self.redis = redis
        self.key = keys.dead_letters
        self.ttl_ms = int(ttl * 1000)

    async def add(self, fields: dict[str, str | bytes]) -> str:
        """Append a letter (``DeadField`` names; data truncated); returns its stream id."""
        data = fields.get(DeadField.DATA, b"")
        raw = data.encode() if isinstance(data, str) else data
        entry = {**fields, DeadField.DATA: raw[:DEAD_DATA_LIMIT]}
        entry.setdefault(DeadField.AT, str(int(time.time() * 1000)))
        async with self._guard():
            pipe = self.redis.pipeline(transaction=True)
            pipe.xadd(self.key, entry, maxlen=MAX_LETTERS, approximate=True)  # type: ignore[arg-type]
            pipe.pexpire(self.key, self.ttl_ms)
            letter_id, _ = await pipe.execute()
        return _text(letter_id)

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except _CONNECTION_ERRORS as exc:
            raise RedisUnavailableError(self.key, exc) from exc

    async def list(self, count: int = 100) -> list[DeadLetter]:
        """The newest ``count`` letters, oldest first."""
        async with self._guard():
            raw: Any = await self.redis.xrevrange(self.key, count=count)
        out = []
        for letter_id, fields in reversed(raw or []):
            f = {_text(k): _text(v) for k, v in (fields or {}).items()}
            out.append(
                DeadLetter(
                    id=_text(letter_id),
                    reason=f.get(DeadField.REASON, ""),
                    detail=f.get(DeadField.DETAIL, ""),
                    task=f.get(DeadField.TASK, ""),
                    key=f.get(DeadField.KEY, ""),
                    data=f.get(DeadField.DATA, ""),
                    source=f.get(DeadField.SOURCE, ""),
                    worker=f.get(DeadField.WORKER, ""),
                    at=int(f.get(DeadField.AT) or 0),
                )
            )
        return out

    async def count(self) -> int:
        async with self._guard():
            return int(await self.redis.xlen(self.key))

    async def purge(self) -> int:
        """Delete every letter; how many there were."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=True)
            pipe.xlen(self.key)
            pipe.delete(self.key)
            n, _ = await pipe.execute()
        return int(n)
