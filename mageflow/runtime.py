"""The core executor: runs one task delivery and hands what its completion triggers to the sender.

``finish`` (a Lua script) records the outcome and walks up through the chains and swarms it
completes, atomically; in the same step it queues the callbacks to fire and the steps or members
to launch in the outbox, and answers them as actions, which the :class:`~mageflow.sender.Sender`
sends. Plain tasks, chains, swarms and nested combinations all go through this one path.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from typing import Any

from pydantic import BaseModel, ValidationError

from mageflow.config import MageflowConfig
from mageflow.engines.base import Engine, RunOutcome
from mageflow.envelope import Envelope
from mageflow.errors import (
    CallbackModelError,
    MessageValidationError,
    NonRetryableError,
    NotARecordError,
    PoisonMessageError,
)
from mageflow.models.message import TaskError, error_field, return_field
from mageflow.poison import DeadLetters, check_attempt, poison
from mageflow.scopes import enter_run, exit_run
from mageflow.sender import ERROR_KEY, Sender
from mageflow.store.connect import ride_out
from mageflow.store.dead_letters import DeadLetterStore
from mageflow.store.records import Record, dumps
from mageflow.store.redis_store import Store
from mageflow.store.schema import Answer, Field, PoisonReason, Verdict
from mageflow.tasks import TaskDef, resolve_model

log = logging.getLogger("mageflow.runtime")

#: Failures that another attempt cannot fix: the message itself is wrong.
NOT_RETRYABLE: tuple[type[BaseException], ...] = (MessageValidationError, CallbackModelError)


def task_error(exc: BaseException, key: str, task_name: str) -> TaskError:
    return TaskError(
        type=type(exc).__name__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        key=key,
        task_name=task_name,
    )


def _attempt_of(task: TaskDef, attempt: int) -> str:
    """The attempt as log lines name it, "attempt 3 of 3": counted from 1 (the runner from 0)."""
    return f"attempt {attempt + 1} of {task.retries + 1}"


def build_message(
    model: type[BaseModel] | None, task_name: str, envelope: Envelope, kwargs: dict[str, Any]
) -> BaseModel | dict[str, Any]:
    """The message a task receives: the input, the bound kwargs on top, then the return value or
    the error in the fields the model marks for them."""
    data = {**envelope.input, **kwargs}
    carried_error = data.pop(ERROR_KEY, None)
    error = envelope.error if envelope.error is not None else carried_error
    if envelope.has_ret:
        field = return_field(model)
        if field is None:
            assert model is not None
            raise CallbackModelError(task_name, model.__name__)
        data[field] = envelope.ret
    if error is not None:
        err_field = error_field(model)
        if err_field:
            data[err_field] = error
    if model is None:
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MessageValidationError(task_name, exc.errors(include_url=False), str(exc)) from exc


class Runtime:
    """Executes deliveries for one client: claim, validate, call, finish, send what follows."""

    def __init__(
        self, store: Store, engine: Engine, sender: Sender, config: MageflowConfig
    ) -> None:
        self.store = store
        self.engine = engine
        self.sender = sender
        self.config = config
        self._lease_ms = int(config.lease_seconds * 1000)
        self.dead = DeadLetters(DeadLetterStore(store.redis, store.keys))

    # -- one delivery ---------------------------------------------------------------------------

    async def run(self, task: TaskDef, envelope: Envelope, attempt: int, ctx: Any) -> RunOutcome:
        try:
            claim = await self._claim(task, envelope, attempt)
        except PoisonMessageError as exc:
            await self.dead.bury(exc, envelope.to_json(), f"{type(self.engine).__name__}")
            return RunOutcome("rejected", error=exc, reason=exc.reason)
        if claim.verdict is Verdict.DEFERRED:
            # Not due yet (a delay, or a rate limit's slot): the message waits in the delayed
            # index and is sent again then. This delivery did nothing, so it is no attempt.
            log.debug("%s (%s) waits until %s", task.name, envelope.sig, claim.detail[0])
            return RunOutcome("deferred", reason=claim.detail[0])
        if claim.verdict is not Verdict.RUN:
            reason = claim.detail[0] if claim.verdict is Verdict.STATUS else claim.verdict.value
            log.debug("skip %s (%s): %s", task.name, envelope.sig, reason)
            return RunOutcome("skipped", reason=reason)
        fields = claim.pairs()
        kwargs = Record(envelope.sig, fields).kwargs()
        message: BaseModel | dict[str, Any] = {**envelope.input, **kwargs}
        nth = _attempt_of(task, attempt)
        log.debug("task %r (%s) started, %s", task.name, envelope.sig, nth)
        started = time.monotonic()
        scope = enter_run(envelope.sig, task.durable)
        try:
            model = self._model(task, fields.get(Field.MODEL, ""))
            message = build_message(model, task.name, envelope, kwargs)
            result = await self._call(task, message, ctx)
            value = dumps(result)
        except asyncio.CancelledError:
            log.debug("task %r (%s) cancelled on %s", task.name, envelope.sig, nth)
            raise
        except Exception as exc:
            return await self._failed(task, envelope.sig, attempt, exc, message)
        finally:
            exit_run(scope)
        took = time.monotonic() - started
        log.debug("task %r (%s) done on %s in %.3f s", task.name, envelope.sig, nth, took)
        await self.finish(envelope.sig, "done", value, "")
        return RunOutcome("done", result=result)

    async def _failed(
        self, task: TaskDef, key: str, attempt: int, exc: Exception, message: Any
    ) -> RunOutcome:
        """Retry or fail for good. Every engine comes through here, so this is the one place a
        task's failure is logged: WARNING when another attempt follows, ERROR when none does."""
        not_retryable = isinstance(
            exc, (*NOT_RETRYABLE, NonRetryableError, *self.engine.non_retryable_errors)
        )
        name, nth, what = task.name, _attempt_of(task, attempt), f"{type(exc).__name__}: {exc}"
        if not (not_retryable or attempt >= task.retries):
            log.warning("task %r (%s) failed on %s, will retry: %s", name, key, nth, what)
            return RunOutcome("retry", error=exc)
        why = " (not retryable)" if not_retryable and attempt < task.retries else ""
        log.error("task %r (%s) failed for good on %s%s: %s", name, key, nth, why, what)
        err = task_error(exc, key, task.name)
        await self.finish(key, "failed", err.model_dump_json(), dumps(message))
        return RunOutcome("failed", error=exc)

    async def _claim(self, task: TaskDef, envelope: Envelope, attempt: int) -> Answer:
        """The claim of this delivery; PoisonMessageError for one that can never run."""
        check_attempt(attempt, task)
        try:
            claim = await self.store.start_task(
                envelope.sig, task.name, attempt, self._lease_ms, envelope.to_json()
            )
        except NotARecordError as exc:
            reason = PoisonReason.FOREIGN_KEY if exc.foreign else PoisonReason.NOT_A_RECORD
            raise poison(reason, str(exc), task.name, envelope.sig) from exc
        if claim.verdict is Verdict.WRONG_TASK:
            raise poison(
                PoisonReason.WRONG_TASK,
                f"the message is for task {task.name!r} but {envelope.sig} is a signature of "
                f"{claim.detail[0] or 'no task (a chain or swarm)'!r}",
                task.name,
                envelope.sig,
            )
        if claim.verdict is Verdict.MISSING:
            raise poison(
                PoisonReason.MISSING_SIGNATURE,
                f"no signature is stored under {envelope.sig} (never created, or it expired)",
                task.name,
                envelope.sig,
            )
        return claim

    def _model(self, task: TaskDef, override: str) -> type[BaseModel] | None:
        return resolve_model(override) if override else task.input_validator

    async def _call(self, task: TaskDef, message: Any, ctx: Any) -> Any:
        args = (message, ctx) if (task.with_context or self.config.pass_context) else (message,)
        try:
            async with asyncio.timeout(task.timeout):
                if inspect.iscoroutinefunction(task.fn):
                    return await task.fn(*args)
                result = await asyncio.to_thread(task.fn, *args)
                return await result if inspect.isawaitable(result) else result
        except TimeoutError as exc:
            if task.timeout is not None and not exc.args:
                raise TimeoutError(
                    f"task {task.name!r} exceeded its {task.timeout} s timeout"
                ) from None
            raise

    # -- completion -----------------------------------------------------------------------------

    async def finish(self, key: str, outcome: str, value: str, message: str) -> None:
        # The body has run: ride out a short outage rather than lose its outcome (and run it
        # again through its lease). A second finish is a no-op, so retrying is safe.
        answer = await ride_out(
            lambda: self.store.finish(key, outcome, value, message),
            self.config.redis_outage_seconds,
            f"recording the outcome of {key}",
            log,
        )
        if answer.verdict is Verdict.SKIP:
            log.debug("duplicate finish of %s ignored (%s)", key, answer.detail[0])
            return
        # The follow-ups are in the outbox already; a failed send is retried by the sender and,
        # failing that, by recovery. The task's own outcome is settled either way.
        await self.sender.send(answer.actions())

    # -- starting -------------------------------------------------------------------------------

    async def launch(
        self,
        key: str,
        envelope: Envelope,
        delay_ms: int | None = None,
        at_ms: int | None = None,
    ) -> Verdict:
        """Start a signature with ``envelope`` (aio_run_no_wait): queue it and send it, or park
        it on a paused signature for resume; with ``delay_ms`` or ``at_ms`` it waits in the
        delayed index until then. Returns the launch script's verdict."""
        answer = await self.store.launch(key, envelope.to_json(), delay_ms, at_ms)
        if answer.verdict is Verdict.OK:
            await self.sender.send(answer.actions(), raise_errors=True)
        elif answer.verdict is Verdict.PARKED:
            log.debug("%s is %s: its message waits for resume", key, answer.detail[0])
        return answer.verdict
