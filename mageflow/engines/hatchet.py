"""The Hatchet engine: mageflow tasks run as Hatchet standalone tasks on Hatchet workers.

``Mageflow(hatchet, redis)`` picks this engine for a ``hatchet_sdk.Hatchet`` client. Each
``@mf.task(...)`` declares a Hatchet task (same name, ``retries``, execution timeout, concurrency
and any other Hatchet option passed through) whose input is a :class:`HatchetEnvelope`. Every
delivery calls mageflow's runner with Hatchet's ``retry_count`` as the attempt number, and the
outcome is reported back to Hatchet in its own terms:

* ``done``: the result is the run's output (a dict or model as-is, anything else as
  ``{"result": value}``);
* ``retry``: the task's exception is raised again, so Hatchet retries it;
* ``failed``: mageflow has recorded the failure and fired the error callbacks, so
  ``NonRetryableException`` is raised: Hatchet marks the run failed and retries no more;
* ``skipped`` (duplicate, paused or canceled signature): the run ends quietly;
* ``deferred`` (not due yet: a delay or a rate limit): the run ends quietly, and mageflow
  triggers a new run when the signature is due.

Runs are triggered by task name, so a producer needs no import of the task. Each is a root Hatchet
run (never a child of the task that dispatched it) tagged with the signature in its additional
metadata; its run id is returned so mageflow can cancel it later.

A mageflow task's ``engine_task`` is a :class:`HatchetTask`: the registered Standalone as Hatchet
code uses it, whose mock runs call the user's function (see docs/engines/hatchet.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import math
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

from hatchet_sdk import (
    BulkCancelReplayOpts,
    Context,
    Hatchet,
    NonRetryableException,
    RunFilter,
    Worker,
)
from hatchet_sdk.runnables.workflow import BaseWorkflow, Standalone
from pydantic import BaseModel, ConfigDict, Field

from mageflow.engines.base import Engine, Runner, RunOutcome
from mageflow.envelope import Envelope
from mageflow.errors import ConfigurationError
from mageflow.store.keys import id_of, workflow_of
from mageflow.store.records import dumps, loads
from mageflow.tasks import TaskDef

log = logging.getLogger("mageflow.hatchet")

#: Additional-metadata keys on every run mageflow triggers. ``mageflow_sig_id`` holds no ':' so it
#: is safe in Hatchet's ``key:value`` metadata filters.
SIGNATURE_META = "mageflow_signature"
SIGNATURE_ID_META = "mageflow_sig_id"
WORKFLOW_META = "mageflow_workflow"
_MAGEFLOW_META = (SIGNATURE_META, SIGNATURE_ID_META, WORKFLOW_META)

#: Hatchet's own default execution timeout, applied when a task sets none.
DEFAULT_TIMEOUT_SECONDS = 60.0
#: Hatchet's execution timeout is the task's timeout plus this, so mageflow's own timeout fires
#: first and the failure is recorded (retry or error callbacks) before Hatchet kills the run.
TIMEOUT_GRACE_SECONDS = 15
#: How far back a cancel by signature (no run id known yet) looks for the signature's runs.
CANCEL_LOOKBACK = timedelta(days=3)

#: Options mageflow cannot honour on a Hatchet task: its input is always a mageflow envelope, so
#: Hatchet's event and cron triggers (whose payload is not one) could never start it.
_UNSUPPORTED = {
    "on_events": "event triggers",
    "on_crons": "cron triggers",
    "cron_input": "cron triggers",
}

#: The additional metadata of the Hatchet run being executed (mageflow's keys removed), carried
#: on to the runs it dispatches, as Hatchet does for child runs.
_inherited_meta: ContextVar[dict[str, Any] | None] = ContextVar(
    "mageflow_hatchet_meta", default=None
)


class HatchetEnvelope(BaseModel):
    """The input of every mageflow task on Hatchet: a mageflow :class:`Envelope` as a model.

    Every field has a default, so a payload that is not an envelope still reaches the task function,
    which rejects it with ``NonRetryableException`` (a failed validation before the function would
    be retried by Hatchet to no use).
    """

    model_config = ConfigDict(extra="ignore")

    sig: str = ""
    input: dict[str, Any] = Field(default_factory=dict)
    ret: Any = None
    has_ret: bool = False
    error: dict[str, Any] | None = None

    @classmethod
    def wrap(cls, envelope: Envelope) -> HatchetEnvelope:
        return cls(
            sig=envelope.sig,
            input=envelope.input,
            ret=envelope.ret if envelope.has_ret else None,
            has_ret=envelope.has_ret,
            error=envelope.error,
        )

    def unwrap(self) -> Envelope:
        return Envelope(
            sig=self.sig,
            input=dict(self.input),
            ret=self.ret if self.has_ret else None,
            has_ret=self.has_ret,
            error=self.error,
        )


TaskFn = Callable[[HatchetEnvelope, Context], Coroutine[Any, Any, dict[str, Any]]]


class _DictInput(BaseModel):
    """A dict task's mock-run input: hatchet-sdk's mock run keeps only a model's fields, so the
    dict travels as this model's extra fields and is handed to the function as a dict again."""

    model_config = ConfigDict(extra="allow")


class HatchetTask:
    """``engine_task`` of a mageflow task on Hatchet: the registered Standalone
    (:attr:`standalone`), usable as Hatchet code uses it.

    Every attribute is the Standalone's (``to_proto``, ``name``, ``aio_run``, ``schedule``,
    ``create_cron``...) except the mock runs. The Standalone's function takes mageflow's
    envelope, so :meth:`mock_run` and :meth:`aio_mock_run` call the user's function instead,
    with the input and a mock context built by hatchet-sdk, as hatchet-sdk does for a plain
    task; neither touches Redis or a Hatchet server. ``standalone.aio_mock_run`` is the
    envelope-level one.
    """

    def __init__(
        self, task: TaskDef, standalone: Standalone[HatchetEnvelope, Any], hatchet: Hatchet
    ) -> None:
        self.standalone = standalone
        self._definition = task
        self._hatchet = hatchet
        self._mock: Standalone[Any, Any] | None = None

    def __getattr__(self, attr: str) -> Any:
        # Read from __dict__ and never forward dunders: copy and pickle probe bare instances.
        if (attr.startswith("__") and attr.endswith("__")) or "standalone" not in self.__dict__:
            raise AttributeError(attr)
        return getattr(self.__dict__["standalone"], attr)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self.standalone)))

    def __repr__(self) -> str:
        return f"<mageflow Hatchet task {self._definition.name!r}>"

    def mock_run(
        self,
        input: Any = None,
        additional_metadata: dict[str, Any] | None = None,
        parent_outputs: dict[str, dict[str, Any]] | None = None,
        retry_count: int = 0,
        lifespan: Any = None,
        dependencies: dict[str, Any] | None = None,
    ) -> Any:
        """hatchet-sdk's ``mock_run`` (sync task functions): what the function returns."""
        mock = self._mock_task()
        args = (additional_metadata, parent_outputs, retry_count, lifespan, dependencies)
        return mock.mock_run(self._mock_input(input), *args)

    async def aio_mock_run(
        self,
        input: Any = None,
        additional_metadata: dict[str, Any] | None = None,
        parent_outputs: dict[str, dict[str, Any]] | None = None,
        retry_count: int = 0,
        lifespan: Any = None,
        dependencies: dict[str, Any] | None = None,
    ) -> Any:
        """hatchet-sdk's ``aio_mock_run`` (async task functions): what the function returns."""
        mock = self._mock_task()
        args = (additional_metadata, parent_outputs, retry_count, lifespan, dependencies)
        return await mock.aio_mock_run(self._mock_input(input), *args)

    def _mock_task(self) -> Standalone[Any, Any]:
        """A Standalone registered nowhere, declared like the real one (name, retries, durable)
        but on the user's input model and function, so that hatchet-sdk's own mock run builds the
        context (``Context`` or ``DurableContext``, retry count, metadata, lifespan) and checks
        sync against async exactly as for a plain Hatchet task."""
        task, hatchet = self._definition, self._hatchet
        if self._mock is None:
            declare = hatchet.durable_task if task.durable else hatchet.task
            model = task.input_validator or _DictInput
            self._mock = declare(name=task.name, input_validator=model, retries=task.retries)(
                _mock_body(task)
            )
        return self._mock

    def _mock_input(self, given: Any) -> BaseModel:
        """``given`` as the task's model (a dict is validated into it, as mageflow does)."""
        model = self._definition.input_validator
        if model is not None and isinstance(given, model):
            return given
        data = given.model_dump() if isinstance(given, BaseModel) else dict(given or {})
        return (model or _DictInput).model_validate(data)


def _mock_body(task: TaskDef) -> Callable[..., Any]:
    """The mock Standalone's function. hatchet-sdk calls it with (input, ctx, **dependencies);
    it calls the user's function as mageflow's runner does: the message, then the context when
    the task asks for it (dependencies go on as keywords, as hatchet-sdk passes them)."""
    fn = task.fn

    def arguments(payload: BaseModel, ctx: Context) -> tuple[Any, ...]:
        message = dict(payload.model_extra or {}) if isinstance(payload, _DictInput) else payload
        return (message, ctx) if task.with_context else (message,)

    async def run_async(payload: BaseModel, ctx: Context, **dependencies: Any) -> Any:
        return await fn(*arguments(payload, ctx), **dependencies)

    def run_sync(payload: BaseModel, ctx: Context, **dependencies: Any) -> Any:
        return fn(*arguments(payload, ctx), **dependencies)

    # Same kind as the user's function: hatchet-sdk refuses mock_run on an async task and
    # aio_mock_run on a sync one, and so does this.
    body = run_async if inspect.iscoroutinefunction(fn) else run_sync
    body.__name__ = body.__qualname__ = task.name
    return body


class HatchetEngine(Engine):
    """Runs mageflow tasks as Hatchet standalone tasks; workers come from :meth:`worker`."""

    remote_workers = True
    #: Exceptions that end a task at once. Hatchet users raise ``NonRetryableException``; the
    #: runtime does not read this yet (see docs/engines/hatchet.md), so it is also handled below.
    non_retryable_errors: tuple[type[BaseException], ...] = (NonRetryableException,)

    def __init__(self, hatchet: Hatchet) -> None:
        self.hatchet = hatchet
        self._registered: dict[str, Standalone[HatchetEnvelope, Any]] = {}
        self._stubs: dict[str, Standalone[HatchetEnvelope, Any]] = {}
        self._running: dict[str, int] = {}

    # -- declaring tasks ------------------------------------------------------------------------

    def register(self, task: TaskDef, runner: Runner) -> HatchetTask:
        options = self._task_options(task)
        fn = self._task_function(task, runner)
        standalone: Standalone[HatchetEnvelope, Any]
        if task.durable:
            standalone = self.hatchet.durable_task(
                name=task.name, input_validator=HatchetEnvelope, **options
            )(fn)
        else:
            standalone = self.hatchet.task(
                name=task.name, input_validator=HatchetEnvelope, **options
            )(fn)
        self._registered[task.name] = standalone
        return HatchetTask(task, standalone, self.hatchet)

    def _task_options(self, task: TaskDef) -> dict[str, Any]:
        """The keyword arguments of ``hatchet.task`` for ``task`` (besides name and input)."""
        for option, what in _UNSUPPORTED.items():
            if option in task.options:
                raise ConfigurationError(
                    f"task {task.name!r}: {option}= is not supported on mageflow tasks ({what} "
                    "deliver a payload, not a mageflow signature). Trigger a plain Hatchet task "
                    "and start the mageflow signature from it instead."
                )
        declare = self.hatchet.durable_task if task.durable else self.hatchet.task
        accepted = set(inspect.signature(declare).parameters) - {"name", "input_validator"}
        unknown = sorted(set(task.options) - accepted)
        if unknown:
            raise ConfigurationError(
                f"task {task.name!r}: unknown option(s) {', '.join(unknown)}. Hatchet tasks accept "
                f"{', '.join(sorted(accepted))}."
            )
        if task.timeout is None:
            # Hatchet always has an execution timeout; mageflow applies the same one, so a task
            # that runs too long fails through mageflow (retry, error callbacks), not silently.
            task.timeout = DEFAULT_TIMEOUT_SECONDS
        hatchet_timeout = math.ceil(task.timeout) + TIMEOUT_GRACE_SECONDS
        return {
            **task.options,
            "retries": task.retries,
            "execution_timeout": timedelta(seconds=hatchet_timeout),
        }

    def _task_function(self, task: TaskDef, runner: Runner) -> TaskFn:
        engine = self

        async def run_mageflow_task(payload: HatchetEnvelope, ctx: Context) -> dict[str, Any]:
            if not payload.sig:
                raise NonRetryableException(
                    f"task {task.name!r} received a payload that is not a mageflow envelope; "
                    "mageflow tasks are started through mageflow signatures"
                )
            token = _inherited_meta.set(_user_meta(ctx.additional_metadata))
            try:
                with engine._holding(payload.sig):
                    outcome = await runner(task, payload.unwrap(), ctx.retry_count, ctx)
            finally:
                _inherited_meta.reset(token)
            return _report(task, outcome)

        run_mageflow_task.__name__ = run_mageflow_task.__qualname__ = task.name
        run_mageflow_task.__doc__ = task.fn.__doc__
        return run_mageflow_task

    def standalone(self, name: str) -> Standalone[HatchetEnvelope, Any]:
        """The Hatchet task object for ``name``: the registered one, else a trigger-only stub."""
        found = self._registered.get(name) or self._stubs.get(name)
        if found is None:
            found = self.hatchet.stubs.task(name=name, input_validator=HatchetEnvelope)
            self._stubs[name] = found
        return found

    # -- running --------------------------------------------------------------------------------

    async def dispatch(self, task: TaskDef | str, envelope: Envelope) -> str | None:
        """Trigger a root Hatchet run of the task by name; return its run id."""
        name = task if isinstance(task, str) else task.name
        standalone = self.standalone(name)
        metadata = {**(_inherited_meta.get() or {}), **signature_metadata(envelope.sig)}

        async def trigger() -> str:
            ref = await standalone.aio_run(
                HatchetEnvelope.wrap(envelope),
                wait_for_result=False,
                additional_metadata=metadata,
            )
            return ref.workflow_run_id

        # An empty context: the SDK links runs triggered inside a task to it as child runs (and
        # dedupes them by spawn index); mageflow's runs are independent, so none is inherited.
        return await asyncio.get_running_loop().create_task(
            trigger(), context=contextvars.Context()
        )

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run by its Hatchet run id, or, given a signature key (its run id not stored
        yet), every recent run tagged with that signature."""
        if _is_uuid(run_id):
            await self.hatchet.runs.aio_cancel(run_id)
            return True
        if "{" not in run_id:
            return False
        since = datetime.now(tz=UTC) - CANCEL_LOOKBACK
        meta = {SIGNATURE_ID_META: signature_metadata(run_id)[SIGNATURE_ID_META]}
        await self.hatchet.runs.aio_bulk_cancel(
            BulkCancelReplayOpts(filters=RunFilter(since=since, additional_metadata=meta))
        )
        return True

    # -- what runs here -------------------------------------------------------------------------

    def running_keys(self) -> list[str]:
        """The signatures running in this worker (the core's heartbeat extends their leases)."""
        return list(self._running)

    def _holding(self, key: str) -> _Holding:
        return _Holding(self._running, key)

    # -- workers --------------------------------------------------------------------------------

    def worker(self, client: Any, *args: Any, **kwargs: Any) -> Worker:
        """``hatchet.worker(...)`` for ``client``'s tasks plus the ``workflows`` given.

        Takes Hatchet's arguments (``name``, ``slots``, ``labels``, ``workflows``, ``lifespan``
        ...). mageflow tasks may be passed in ``workflows`` as they are. The lifespan starts
        mageflow before the user's lifespan and closes it after.
        """
        bound = inspect.signature(self.hatchet.worker).bind(*args, **kwargs)
        arguments = bound.arguments
        arguments["workflows"] = self.worker_workflows(client, arguments.get("workflows"))
        arguments["lifespan"] = mageflow_lifespan(client, arguments.get("lifespan"))
        return self.hatchet.worker(**arguments)

    def worker_workflows(self, client: Any, extra: Any) -> list[BaseWorkflow[Any]]:
        """The Hatchet objects of ``client``'s tasks, then ``extra`` (mageflow tasks unwrapped),
        each once."""
        found: list[BaseWorkflow[Any]] = [self._registered[n] for n in client.tasks]
        for item in extra or []:
            workflow = getattr(item, "engine_task", item)
            if isinstance(workflow, HatchetTask):
                workflow = workflow.standalone
            if not isinstance(workflow, BaseWorkflow):
                raise ConfigurationError(
                    f"workflows must be Hatchet workflows or mageflow tasks, not {item!r}"
                )
            if all(workflow is not w for w in found):
                found.append(workflow)
        return found


class _Holding:
    """Counts a signature as running here for the duration of a ``with`` block."""

    def __init__(self, running: dict[str, int], key: str) -> None:
        self._running = running
        self._key = key

    def __enter__(self) -> None:
        self._running[self._key] = self._running.get(self._key, 0) + 1

    def __exit__(self, *exc: object) -> None:
        left = self._running.get(self._key, 1) - 1
        if left > 0:
            self._running[self._key] = left
        else:
            self._running.pop(self._key, None)


def mageflow_lifespan(
    client: Any, user_lifespan: Callable[[], AsyncGenerator[Any, None]] | None
) -> Callable[[], AsyncGenerator[Any, None]]:
    """A Hatchet worker lifespan: start ``client``, run the user's lifespan inside, close it."""

    async def lifespan() -> AsyncGenerator[Any, None]:
        await client.start()
        try:
            if user_lifespan is None:
                yield None
            else:
                async with asynccontextmanager(user_lifespan)() as value:
                    yield value
        finally:
            await client.close()

    return lifespan


def _report(task: TaskDef, outcome: RunOutcome) -> dict[str, Any]:
    """Turn a runner outcome into what Hatchet expects of the task function."""
    if outcome.status == "done":
        return hatchet_output(outcome.result)
    if outcome.status == "deferred":
        return {}  # mageflow triggers another run when it is due
    if outcome.status == "skipped":
        if outcome.reason == "busy":
            # The same attempt is held by a worker whose lease has not run out (Hatchet handed the
            # run over from a worker it lost): fail this delivery so Hatchet tries again later,
            # when the lease has expired, instead of recording a run that did nothing.
            raise RuntimeError(f"signature of task {task.name!r} is held by another worker")
        return {}
    if outcome.status == "rejected":
        # Poison: dead-lettered by the core. Hatchet shows the run failed and does not retry it.
        raise NonRetryableException(f"dead-lettered: {outcome.error}")
    error = outcome.error or RuntimeError(f"task {task.name!r} failed")
    if outcome.status == "retry":
        raise error
    raise NonRetryableException(f"{type(error).__name__}: {error}") from error


def hatchet_output(result: Any) -> dict[str, Any]:
    """A task result as a Hatchet run output (Hatchet accepts only JSON objects): a dict or
    model as is, None as ``{}``, anything else as ``{"result": value}``."""
    if result is None:
        return {}
    value = loads(dumps(result))
    return value if isinstance(value, dict) else {"result": value}


def signature_metadata(key: str) -> dict[str, str]:
    """The additional metadata that tags a run with the signature it runs."""
    meta = {SIGNATURE_META: key, SIGNATURE_ID_META: id_of(key) if ":" in key else key}
    if "{" in key and "}" in key:
        meta[WORKFLOW_META] = workflow_of(key)
    return meta


def _user_meta(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        return {}
    return {k: v for k, v in metadata.items() if k not in _MAGEFLOW_META}


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
