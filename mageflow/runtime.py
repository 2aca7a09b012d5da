"""The core executor: runs one task delivery and carries out what its completion triggers.

This is the only place that turns a finished task into next steps. ``finish`` (a Lua script) records
the outcome and walks up through the chains and swarms it completes, atomically; it returns the
callbacks to fire and the steps or members to launch, which :meth:`Runtime.carry_out` then sends.
Plain tasks, chains, swarms and nested combinations all go through this one path.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Coroutine
from typing import Any

from pydantic import BaseModel, ValidationError

from mageflow.config import MageflowConfig
from mageflow.engines.base import Engine, RunOutcome
from mageflow.envelope import Envelope
from mageflow.errors import (
    CallbackModelError,
    MessageValidationError,
    NonRetryableError,
)
from mageflow.models.message import TaskError, error_field, return_field
from mageflow.scopes import enter_run, exit_run
from mageflow.store.records import Action, Record, dumps, loads
from mageflow.store.redis_store import Store
from mageflow.tasks import TaskDef, resolve_model

log = logging.getLogger("mageflow")

#: Where a container launched as an error callback carries the error to the tasks inside it.
ERROR_KEY = "$mageflow_error"

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
    """Executes deliveries for one client: claim, validate, call, finish, carry out."""

    def __init__(self, store: Store, engine: Engine, config: MageflowConfig) -> None:
        self.store = store
        self.engine = engine
        self.config = config
        self._lease_ms = int(config.lease_seconds * 1000)
        self._background: set[asyncio.Task[Any]] = set()

    # -- one delivery ---------------------------------------------------------------------------

    async def run(self, task: TaskDef, envelope: Envelope, attempt: int, ctx: Any) -> RunOutcome:
        claim = await self.store.start_task(
            envelope.sig, attempt, self._lease_ms, envelope.to_json()
        )
        if isinstance(claim, list):  # finished before, but its follow-ups may not have gone out
            await self._send(envelope.sig, claim)
            return RunOutcome("skipped", reason="replayed")
        if isinstance(claim, str):
            log.debug("skip %s (%s): %s", task.name, envelope.sig, claim)
            return RunOutcome("skipped", reason=claim)
        message: BaseModel | dict[str, Any] = {**envelope.input, **claim.kwargs()}
        scope = enter_run(claim.key, task.durable)
        try:
            message = build_message(self._model(task, claim), task.name, envelope, claim.kwargs())
            result = await self._call(task, message, ctx)
            value = dumps(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            final = attempt >= task.retries or isinstance(
                exc, (*NOT_RETRYABLE, NonRetryableError, *self.engine.non_retryable_errors)
            )
            if not final:
                return RunOutcome("retry", error=exc)
            err = task_error(exc, claim.key, task.name)
            await self.finish(claim.key, "failed", err.model_dump_json(), dumps(message))
            return RunOutcome("failed", error=exc)
        finally:
            exit_run(scope)
        await self.finish(claim.key, "done", value, "")
        return RunOutcome("done", result=result)

    def _model(self, task: TaskDef, claim: Record) -> type[BaseModel] | None:
        override = claim.get("model")
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
        actions = await self.store.finish(key, outcome, value, message, self.engine.redelivers)
        if actions is None:
            log.debug("duplicate finish of %s ignored", key)
            return
        await self._send(key, actions)

    async def _send(self, key: str, actions: list[Action]) -> None:
        """Carry out a transition's actions, then empty its outbox (see lib.lua keep_actions).
        Sending again is harmless: every receiver's claim lets one delivery through."""
        if await self.carry_out(actions) and actions and self.engine.redelivers:
            self._background_call(self.store.sent(key))

    async def carry_out(self, actions: list[Action]) -> bool:
        """Send what a transition asked for; True when every action went out."""
        if len(actions) == 1:
            return await self._do(actions[0])
        if not actions:
            return True
        return all(await asyncio.gather(*(self._do(a) for a in actions)))

    def _background_call(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("outbox clean-up failed: %r", task.exception())

    async def drain(self) -> None:
        """Wait for background clean-ups (at client close)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def _do(self, action: Action) -> bool:
        try:
            if action.verb == "stop":
                await self.engine.cancel(action.a or action.key)
            else:
                await self.launch(action.kind, action.task, _envelope(action))
            return True
        except Exception:
            # The state change already committed and stays in the outbox for a redelivery;
            # a failed send must not hide the others.
            log.exception("could not %s %s", action.verb, action.key)
            return False

    async def launch(self, kind: str, task_name: str, envelope: Envelope) -> None:
        """Start a signature: a task goes to the engine, a container starts its first work."""
        if kind == "task":
            run_id = await self.engine.dispatch(task_name, envelope)
            if run_id and run_id != envelope.sig:
                await self.store.set_fields(envelope.sig, {"run": run_id})
            return
        record = await self.store.load(envelope.sig)
        message = {**envelope.input, **record.kwargs()}
        if envelope.error is not None:  # a container as error callback: its steps get the error
            message[ERROR_KEY] = envelope.error
        ret = dumps(envelope.ret) if envelope.has_ret else ""
        started = await self.store.start_container(
            record.key, dumps(message), ret, self.engine.redelivers
        )
        if isinstance(started, str):
            log.info("container %s not started: status %s", record.key, started)
            return
        await self._send(record.key, started)


def _envelope(action: Action) -> Envelope:
    """The message an action sends (see lib.lua for what ``a`` and ``b`` hold per verb)."""
    if action.verb == "relaunch":
        return Envelope.from_json(action.a)
    envelope = Envelope(sig=action.key, input={})
    if action.verb == "fire_ok":
        envelope.ret, envelope.has_ret = loads(action.a), True
    elif action.verb == "fire_err":
        envelope.input, envelope.error = loads(action.a or "{}") or {}, loads(action.b)
    else:  # launch
        envelope.input = loads(action.a) if action.a else {}
        if action.b:
            envelope.ret, envelope.has_ret = loads(action.b), True
    return envelope
