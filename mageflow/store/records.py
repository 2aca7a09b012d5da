"""Plain-data views of what the store keeps: signature records and JSON encoding."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from mageflow.errors import InvalidArgumentError, SerializationError
from mageflow.store.schema import KWARG_PREFIX, Field, Kind


def dumps(value: Any) -> str:
    """JSON text of a message or result (pydantic models, dates and the like included)."""
    return pydantic_core.to_json(value).decode()


def encode(name: str, value: Any, where: str = "bound kwarg") -> str:
    """JSON text of one value a user handed in (a bound kwarg, a message field); a value that
    JSON cannot carry faithfully raises SerializationError naming ``name``."""
    odd = _unordered(value)
    if odd is not None:
        raise SerializationError(name, odd, where, "a set has no JSON form; pass a list")
    try:
        return dumps(value)
    except (ValueError, TypeError) as exc:  # PydanticSerializationError is a ValueError
        raise SerializationError(name, value, where, str(exc)) from None


def _unordered(value: Any, depth: int = 0) -> Any:
    """The first set or frozenset inside plain lists, tuples and dicts (models serialize their
    own fields), else None."""
    if isinstance(value, set | frozenset):
        return value
    items: Any = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list | tuple) and depth < 64:  # deeper: dumps decides
        for item in items:
            found = _unordered(item, depth + 1)
            if found is not None:
                return found
    return None


def loads(text: str) -> Any:
    return json.loads(text)


@dataclass(slots=True)
class Record:
    """One signature hash as stored (all values are strings, JSON where structured)."""

    key: str
    fields: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)

    @property
    def kind(self) -> str:
        return self.get(Field.KIND, Kind.TASK)

    @property
    def status(self) -> str:
        return self.get(Field.STATUS)

    @property
    def task_name(self) -> str:
        return self.get(Field.TASK)

    def kwargs(self) -> dict[str, Any]:
        n = len(KWARG_PREFIX)
        return {k[n:]: loads(v) for k, v in self.fields.items() if k.startswith(KWARG_PREFIX)}

    def key_list(self, name: str) -> list[str]:
        raw = self.get(name)
        return list(loads(raw)) if raw else []


@dataclass(slots=True)
class NewRecord:
    """A signature about to be written."""

    key: str
    fields: dict[str, str]
    members: list[str] = field(default_factory=list)


def kwarg_fields(kwargs: dict[str, Any]) -> dict[str, str]:
    return {KWARG_PREFIX + name: encode(name, value) for name, value in kwargs.items()}


def message_dict(msg: Any) -> dict[str, Any]:
    """The message as JSON-able data; InvalidArgumentError for something that is not a
    message, SerializationError for a value JSON cannot carry."""
    if msg is None:
        return {}
    if isinstance(msg, BaseModel):
        try:
            return msg.model_dump(mode="json", by_alias=True)
        except PydanticSerializationError as exc:
            raise SerializationError(type(msg).__name__, msg, "message model", str(exc)) from None
    if isinstance(msg, dict):
        for name, value in msg.items():
            encode(str(name), value, "message field")
        return dict(msg)
    raise InvalidArgumentError("a message", "a pydantic model, a dict or None", msg)


def hash_mapping(fields: Mapping[str, str]) -> Any:
    """``fields`` as redis-py's ``hset(mapping=...)`` takes them: it types the mapping with an
    invariant key union, which a str-keyed dict satisfies at run time."""
    return dict(fields)
