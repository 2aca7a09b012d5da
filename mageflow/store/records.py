"""Plain-data views of what the store keeps: signature records and JSON encoding."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

from mageflow.store.schema import KWARG_PREFIX, Field, Kind


def dumps(value: Any) -> str:
    """JSON text of a message or result (pydantic models, dates and the like included)."""
    return pydantic_core.to_json(value).decode()


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
    return {KWARG_PREFIX + name: dumps(value) for name, value in kwargs.items()}
