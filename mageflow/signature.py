"""Signature objects: handles on stored tasks, chains and swarms.

A signature is one planned run: a task (or container) plus bound kwargs and callbacks. The object
is a local handle; the truth lives in Redis under ``key``. A signature runs once; make more runs
with :meth:`Signature.aduplicate` or by signing again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mageflow.envelope import Envelope
from mageflow.errors import (
    InvalidTransitionError,
    SignatureNotFoundError,
    TaskCanceledError,
    TaskFailedError,
)
from mageflow.models.message import TaskError
from mageflow.scheduling import due_args, longest_wait
from mageflow.status import SignatureStatus
from mageflow.store.records import Record, kwarg_fields, loads, message_dict
from mageflow.store.schema import Control, Field, Verdict

if TYPE_CHECKING:
    from mageflow.workspace import Workspace

Message = BaseModel | dict[str, Any] | None
Delay = float | timedelta | None


class BoundKwargs(dict[str, Any]):
    """The signature's bound kwargs as last seen; ``await aupdate(...)`` changes them in Redis."""

    def __init__(self, owner: Signature, values: dict[str, Any]) -> None:
        super().__init__(values)
        self._owner = owner

    async def aupdate(self, /, **kwargs: Any) -> None:
        from mageflow.scopes import current_batch

        owner = self._owner
        batch = current_batch()
        if batch is not None:
            batch.kwargs.append((owner, kwarg_fields(kwargs)))
        else:
            owner.key = await owner.client.store.update_kwargs(owner.key, kwarg_fields(kwargs))
        self.update(kwargs)


class Signature:
    """Common handle of tasks, chains and swarms."""

    kind = "task"

    def __init__(self, client: Workspace, record: Record) -> None:
        self.client = client
        self.key = record.key
        self._record = record
        self.kwargs = BoundKwargs(self, record.kwargs())
        self._launched = False
        #: Handed back by a durable task's retry cache: starting it again is a no-op once the
        #: earlier attempt started it.
        self.replayed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.key} {self.status.value}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def task_name(self) -> str:
        return self._record.task_name

    @property
    def name(self) -> str:
        return self._record.get(Field.NAME) or self.task_name or self.kind

    @property
    def status(self) -> SignatureStatus:
        """Status as of the last load; ``await astatus()`` reads the current one."""
        return SignatureStatus(self._record.status or "pending")

    @property
    def success_callbacks(self) -> list[str]:
        return self._record.key_list(Field.SUCCESS)

    @property
    def error_callbacks(self) -> list[str]:
        return self._record.key_list(Field.ERRORS)

    @property
    def parent(self) -> str | None:
        return self._record.get(Field.PARENT) or None

    @property
    def result_value(self) -> Any:
        raw = self._record.get(Field.RESULT)
        return loads(raw) if raw else None

    @property
    def error(self) -> TaskError | None:
        raw = self._record.get(Field.ERROR)
        return TaskError.model_validate_json(raw) if raw else None

    def _refresh(self, record: Record) -> None:
        self._record = record
        self.key = record.key
        self.kwargs = BoundKwargs(self, record.kwargs())

    async def aload(self) -> Signature:
        """Re-read this signature from Redis."""
        self._refresh(await self.client.store.load(self.key))
        return self

    async def astatus(self) -> SignatureStatus:
        await self.aload()
        return self.status

    # -- running --------------------------------------------------------------------------------

    async def aio_run_no_wait(
        self, msg: Message = None, *, delay: Delay = None, at: datetime | None = None
    ) -> None:
        """Start this signature with ``msg`` (merged with its bound kwargs) and return at once.

        A suspended or interrupted signature keeps the message and runs with it on resume. The
        message is queued in Redis before it is sent, so a send that fails is retried (the
        :class:`~mageflow.errors.DispatchError` raised then says so) and nothing is lost.

        ``delay`` (seconds or a timedelta) or ``at`` (an aware datetime; a time past means now):
        the message waits in Redis until then (see docs/scheduling.md)."""
        if self.replayed and self.status is not SignatureStatus.PENDING:
            return
        if self._launched:
            raise InvalidTransitionError(self.key, self.status.value, "run")
        delay_ms, at_ms = due_args(delay, at, longest_wait(self.client.config.ttl, self.kind))
        envelope = Envelope(sig=self.key, input=message_dict(msg))
        from mageflow.scopes import current_batch

        await self.client.ensure_started()
        self._launched = True

        async def send() -> None:
            envelope.sig = self.key  # the key may have moved when the batch committed
            verdict = await self.client.runtime.launch(self.key, envelope, delay_ms, at_ms)
            if verdict is Verdict.MISSING:
                raise SignatureNotFoundError(self.key)
            if verdict is Verdict.LAUNCHED and self.replayed:
                return  # an earlier attempt of the durable task that made it started it
            if verdict in (Verdict.INVALID, Verdict.LAUNCHED, Verdict.MOVED):
                await self.aload()
                raise InvalidTransitionError(self.key, self.status.value, "run")

        batch = current_batch()
        if batch is not None:
            batch.launches.append(send)
        else:
            await send()

    async def aio_run(
        self,
        msg: Message = None,
        *,
        timeout: float | None = None,
        delay: Delay = None,
        at: datetime | None = None,
    ) -> Any:
        """Start this signature and wait for it; return its result or raise its error.
        ``delay`` or ``at``: as for :meth:`aio_run_no_wait` (``timeout`` counts the wait too)."""
        await self.client.ensure_started()
        await self.client.notifier.watch(self.key)
        await self.aio_run_no_wait(msg, delay=delay, at=at)
        return await self.aresult(timeout=timeout)

    async def aresult(self, *, timeout: float | None = None) -> Any:
        """Wait for this signature to finish; return its result or raise its error."""
        record = await self.client.notifier.wait(self.key, timeout)
        self._refresh(record)
        if self.status is SignatureStatus.DONE:
            return self.result_value
        err = self.error
        if self.status is SignatureStatus.FAILED and err is not None:
            raise TaskFailedError(
                err.key or self.key,
                err.task_name or self.name,
                err.type,
                err.message,
                err.traceback,
            )
        raise TaskCanceledError(self.key, self.status.value)

    # -- lifecycle ------------------------------------------------------------------------------

    async def suspend(self) -> None:
        """Pause gracefully: what has not started will not start; running tasks finish.
        Raises TaskAlreadyRunningError for a single task that is already running."""
        await self._control(Control.SUSPEND)

    async def interrupt(self) -> None:
        """Pause now: running tasks are stopped too; resume() runs them again."""
        await self._control(Control.INTERRUPT)

    async def resume(self) -> None:
        """Continue after suspend() or interrupt(): sends again exactly what was stopped."""
        await self._control(Control.RESUME)

    async def cancel(self) -> None:
        """Stop everything for good; the status becomes canceled and no callback fires."""
        await self._control(Control.CANCEL)

    async def _control(self, action: Control) -> None:
        from mageflow.lifecycle import control

        await control(self.client, self.key, action)
        await self.aload()

    async def aduplicate(self, **kwargs: Any) -> Signature:
        """A fresh pending copy (same task, kwargs and callbacks), for another run."""
        return await self.client.duplicate(self, **kwargs)

    async def aduplicate_many(self, n: int, **kwargs: Any) -> list[Signature]:
        return [await self.aduplicate(**kwargs) for _ in range(n)]


class TaskSignature(Signature):
    kind = "task"
