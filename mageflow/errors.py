"""Every error mageflow raises derives from :class:`MageflowError`.

Errors carry the facts as fields (``task_name``, ``key`` ...) and their message says what to do
next, so callers can both branch on the type and show the text to a person.
"""

from __future__ import annotations

from typing import Any


class MageflowError(Exception):
    """Root of all mageflow errors."""


class NonRetryableError(MageflowError):
    """Raise from a task to fail it at once, skipping any retries it has left."""


class ConfigurationError(MageflowError, ValueError):
    """The client or a task was set up in a way that cannot work."""


class RedisUnavailableError(MageflowError):
    """Redis could not be reached; nothing was written."""

    def __init__(self, url: str, cause: BaseException | None = None) -> None:
        self.url = url
        self.cause = cause
        detail = f" ({str(cause).rstrip('.')})" if cause else ""
        super().__init__(
            f"cannot reach Redis at {url}{detail}. Start that Redis or point mageflow at another "
            "one (redis_client=..., or REDIS_URL); with neither, mageflow starts its own embedded "
            "Redis."
        )


class UnknownTaskError(MageflowError):
    """A task name was used that no client or worker has registered."""

    def __init__(self, task_name: str, known: list[str] | None = None) -> None:
        self.task_name = task_name
        self.known = sorted(known or [])
        hint = f" Known tasks: {', '.join(self.known)}." if self.known else ""
        super().__init__(
            f"no task named {task_name!r} is registered.{hint} Decorate it with @mf.task(...) in a "
            "module your workers import, or start a worker that registers it."
        )


class SignatureNotFoundError(MageflowError):
    """No signature is stored under the key (never created, or expired after its TTL)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no signature stored under {key!r}; it was never created or it expired.")


class MessageValidationError(MageflowError):
    """A message did not fit the task's input model."""

    def __init__(self, task_name: str, errors: list[Any], detail: str) -> None:
        self.task_name = task_name
        self.errors = errors
        super().__init__(f"message for task {task_name!r} is invalid: {detail}")


class CallbackModelError(MageflowError):
    """A success callback's input model has no field that can receive the task's return value."""

    def __init__(self, callback_task: str, model_name: str) -> None:
        self.callback_task = callback_task
        self.model_name = model_name
        super().__init__(
            f"task {callback_task!r} cannot receive a return value (as a success callback or a "
            f"chain step after another): its model {model_name} has no field annotated with "
            "ReturnValue and no field named 'results'. Add `Annotated[T, ReturnValue()]` to one."
        )


class InvalidTransitionError(MageflowError):
    """A lifecycle operation is not allowed from the signature's current status."""

    def __init__(self, key: str, status: str, action: str, parent_status: str = "") -> None:
        self.key = key
        self.status = status
        self.action = action
        #: Set when the signature is pending but its container (or the task whose callback it
        #: is) already ended with this status, so it will never run.
        self.parent_status = parent_status
        why = f"its status is {status!r}"
        if parent_status:
            why += f" and what would start it already ended ({parent_status}), so it never will"
        super().__init__(f"cannot {action} signature {key!r}: {why}.")


class TaskAlreadyRunningError(InvalidTransitionError):
    """A single task that is already running cannot be suspended; interrupt or cancel it."""

    def __init__(self, key: str) -> None:
        super().__init__(key, "active", "suspend")
        self.args = (f"task {key!r} is already running; use interrupt() or cancel() to stop it.",)


class SwarmClosedError(MageflowError):
    """Tasks were added to a swarm that was already closed."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"swarm {key!r} is closed and accepts no new tasks; create a new swarm.")


class SwarmFullError(MageflowError):
    """Adding the tasks would exceed the swarm's ``max_task_allowed``."""

    def __init__(self, key: str, limit: int) -> None:
        self.key = key
        self.limit = limit
        super().__init__(f"swarm {key!r} allows at most {limit} tasks; raise max_task_allowed.")


class TaskFailedError(MageflowError):
    """A task (or a chain or swarm) that was awaited ended in failure.

    ``key`` is the signature that failed; ``error_type`` and ``error_message`` describe the original
    exception, which may have been raised in another process.
    """

    def __init__(
        self, key: str, task_name: str, error_type: str, error_message: str, traceback: str = ""
    ) -> None:
        self.key = key
        self.task_name = task_name
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
        super().__init__(f"{task_name} ({key}) failed with {error_type}: {error_message}")


class TaskCanceledError(MageflowError):
    """An awaited signature was canceled before it finished."""

    def __init__(self, key: str, status: str = "canceled") -> None:
        self.key = key
        self.status = status
        super().__init__(f"signature {key!r} ended as {status} without a result.")


class EmbeddedRedisError(MageflowError):
    """The embedded Redis server could not be started."""


class NotARecordError(MageflowError, ValueError):
    """A key given to mageflow is not a signature record of this client's namespace: it belongs
    to another namespace, is not a signature key at all, or holds data mageflow did not write.
    Nothing was written to it."""

    def __init__(self, key: str, namespace: str, foreign: bool) -> None:
        self.key = key
        self.namespace = namespace
        self.foreign = foreign
        why = (
            f"is not a signature key of namespace {namespace!r}"
            if foreign
            else "holds data that is not a mageflow record"
        )
        super().__init__(
            f"{key!r} {why}; nothing was changed. Pass a key that a client of this namespace "
            "returned (Signature.key), or build the client with the namespace the key belongs to."
        )


class PoisonMessageError(MageflowError):
    """A delivery that can never run: it was acknowledged and moved to the dead-letter stream
    (``mageflow dead-letters`` lists them) instead of being retried."""

    def __init__(self, reason: str, detail: str, task_name: str = "", key: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.task_name = task_name
        self.key = key
        super().__init__(f"poison message ({reason}): {detail}")


class DispatchError(MageflowError):
    """A message could not be handed to the task engine. The state change that queued it has
    committed, and the message stays in the outbox: it is sent again automatically."""

    def __init__(self, key: str, task_name: str, cause: BaseException) -> None:
        self.key = key
        self.task_name = task_name
        self.cause = cause
        super().__init__(
            f"could not send {task_name or 'the message'} ({key}) to the engine: {cause!r}. It is "
            "kept in the outbox and sent again automatically (by this client, or by recovery in "
            "any client or worker of this namespace); do not start it again. Check that the "
            "engine's broker is reachable."
        )


# -- input validation (edges) --


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class InvalidArgumentError(MageflowError, TypeError):
    """An argument of the wrong type was passed to mageflow; nothing was written."""

    def __init__(self, argument: str, expected: str, value: Any) -> None:
        self.argument = argument
        self.expected = expected
        self.value_type = type(value).__name__
        super().__init__(
            f"{argument} must be {expected}, not {self.value_type} ({_short(value)}); "
            f"pass {expected}."
        )


class InvalidValueError(MageflowError, ValueError):
    """An argument has the right type but a value mageflow cannot use; nothing was written."""

    def __init__(self, argument: str, value: Any, rule: str) -> None:
        self.argument = argument
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {argument} {_short(value)}: {rule}.")


class UnknownActionError(InvalidValueError):
    """A lifecycle action that does not exist was requested."""

    def __init__(self, action: Any, allowed: list[str]) -> None:
        self.action = action
        self.allowed = list(allowed)
        super().__init__("lifecycle action", action, f"use one of {', '.join(self.allowed)}")


class SerializationError(MageflowError, TypeError, ValueError):
    """A bound kwarg or a message value cannot be stored as JSON; nothing was written."""

    def __init__(self, field: str, value: Any, where: str, detail: str = "") -> None:
        self.field = field
        self.where = where
        self.value_type = type(value).__name__
        self.detail = detail
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"{where} {field!r} cannot be serialized to JSON: {self.value_type} is not "
            f"JSON-able{why}. Pass JSON-able values: str, int, float, bool, None, lists and "
            "dicts of them, pydantic models, dates (convert a set to a list, an object to a dict)."
        )


class InvalidSettingError(ConfigurationError):
    """A setting (a config field, the namespace, a task name) breaks a rule; ``problems`` lists
    every ``(setting, value, rule)`` found, the first of them is also in the fields."""

    def __init__(
        self,
        setting: str,
        value: Any,
        rule: str,
        problems: list[tuple[str, Any, str]] | None = None,
    ) -> None:
        self.setting = setting
        self.value = value
        self.rule = rule
        self.problems: list[tuple[str, Any, str]] = problems or [(setting, value, rule)]
        text = "; ".join(f"{s} = {_short(v)}: {r}" for s, v, r in self.problems)
        super().__init__(f"invalid setting {text}. Fix the value and try again.")


class CrossSlotError(MageflowError):
    """A script call or MULTI named keys of more than one Redis Cluster slot. This is a bug in
    mageflow, caught by the check the test suite turns on (``Store.check_slots``): report it."""

    def __init__(self, what: str, key_list: list[str]) -> None:
        self.what = what
        self.keys = key_list
        super().__init__(
            f"{what} names keys of several Redis Cluster slots ({', '.join(key_list[:6])}); "
            "this is a mageflow bug, please report it."
        )
