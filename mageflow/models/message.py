"""Markers that tell mageflow where to put a task's result or error in a callback's message.

``Annotated[T, ReturnValue()]`` (or the short form ``ReturnValue[T]``) marks the field of a
success callback's input model that receives the finished task's return value. Without a marked
field the value goes to a field named ``results``. ``Annotated[TaskError, ErrorValue()]`` (or any
field typed ``TaskError``) marks where an error callback receives the failure.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict

RESULTS_FIELD = "results"


class ReturnValue:
    """Field marker: this field receives the return value of the task this callback follows."""

    def __class_getitem__(cls, item: Any) -> Any:
        # ReturnValue[T] is shorthand for Annotated[T, ReturnValue()].
        return Annotated[item, cls()]

    def __repr__(self) -> str:
        return "ReturnValue()"


class ErrorValue:
    """Field marker: this field of an error callback's model receives the failure (a TaskError)."""

    def __class_getitem__(cls, item: Any) -> Any:
        return Annotated[item, cls()]

    def __repr__(self) -> str:
        return "ErrorValue()"


class TaskError(BaseModel):
    """A failure as it crosses processes: the exception's type, text and formatted traceback."""

    type: str
    message: str
    traceback: str = ""
    key: str = ""  # signature that failed
    task_name: str = ""


class ContextMessage(BaseModel):
    """A permissive message: keeps every field it is given, for tasks that take free-form input.

    ``base_data`` is a conventional place for arbitrary payload data.
    """

    model_config = ConfigDict(extra="allow")

    base_data: dict[str, Any] = {}


def _has_marker(model: type[BaseModel], name: str, marker: type) -> bool:
    return any(isinstance(m, marker) for m in model.model_fields[name].metadata)


def return_field(model: type[BaseModel] | None) -> str | None:
    """Name of the field that receives a return value, or None when the model has none."""
    if model is None:
        return RESULTS_FIELD
    for name in model.model_fields:
        if _has_marker(model, name, ReturnValue):
            return name
    if RESULTS_FIELD in model.model_fields or model.model_config.get("extra") == "allow":
        return RESULTS_FIELD
    return None


def error_field(model: type[BaseModel] | None) -> str | None:
    """Name of the field that receives a TaskError, or None when the model does not ask for it."""
    if model is None:
        return None
    for name, info in model.model_fields.items():
        if _has_marker(model, name, ErrorValue) or _is_task_error(info.annotation):
            return name
    return None


def _is_task_error(annotation: Any) -> bool:
    if annotation is TaskError:
        return True
    return any(arg is TaskError for arg in typing.get_args(annotation))
