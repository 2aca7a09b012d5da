"""Message models and field markers used in task input models."""

from mageflow.models.message import ContextMessage, ErrorValue, ReturnValue, TaskError

__all__ = ["ContextMessage", "ErrorValue", "ReturnValue", "TaskError"]
