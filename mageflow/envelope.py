"""The message a task engine carries for mageflow: which signature to run and with what input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mageflow.store.records import dumps, loads


@dataclass(slots=True)
class Envelope:
    """Engine payload. ``input`` is merged with the signature's bound kwargs when the task starts;
    ``ret`` (when ``has_ret``) goes to the ReturnValue field; ``error`` to an error callback's
    TaskError field."""

    sig: str
    input: dict[str, Any]
    ret: Any = None
    has_ret: bool = False
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sig": self.sig, "input": self.input}
        if self.has_ret:
            out["ret"] = self.ret
        if self.error is not None:
            out["error"] = self.error
        return out

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], sig: str = "") -> Envelope:
        """``sig``: the signature key, for an envelope stored on its own record (those leave it
        out); a ``sig`` in the data wins."""
        return cls(
            sig=str(data.get("sig") or sig),
            input=dict(data.get("input") or {}),
            ret=data.get("ret"),
            has_ret="ret" in data,
            error=data.get("error"),
        )

    @classmethod
    def from_json(cls, text: str, sig: str = "") -> Envelope:
        return cls.from_dict(loads(text), sig)
