"""The Taskiq engine: mageflow tasks run on Taskiq workers, in any number of processes and hosts.

Each mageflow task becomes one taskiq task, registered on the broker under the task's name. Its
message carries the envelope (which signature to run, with what input) and the attempt number;
producers send by name, so they need not import the task code.

Delivery rules (the broker may deliver a message more than once; mageflow's claim on the
signature decides who runs it):

* every mageflow message carries the ``ack_type=manual`` label; the engine acknowledges it once
  the delivery is settled (the task finished, failed, was sent on for its next attempt, was
  canceled, or has nothing left to do). A delivery interrupted by a forced shutdown, or that
  cannot reach Redis, stays unacknowledged, so the broker hands it out again;
* a delivery that finds its signature running under a live lease elsewhere waits for that
  holder: if the holder finishes, the message is acknowledged; if the holder's lease runs out (its
  worker died) this delivery takes the run over. Acknowledging such a duplicate at once would
  lose the run whenever the holder died later;
* a delivery hands its concurrency slot to a follow-up of its task (see ``run_here`` on
  :class:`TaskiqEngine`), which runs next in the same slot, without the broker: it leaves the
  outbox only when its run claims the signature, so a worker that dies first leaves it to
  recovery, as a lost message would;
* the core's heartbeat extends the leases of the tasks running here (and stops runs whose
  signature was canceled meanwhile); workers listen on a Redis pub/sub channel for cancel
  requests, so :meth:`TaskiqEngine.cancel` stops a run on whatever process runs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from taskiq import AsyncBroker, Context, TaskiqDepends
from taskiq.kicker import AsyncKicker

from mageflow.engines.base import Engine, EngineServices, Runner, RunOutcome
from mageflow.engines.taskiq_cancel import listen_for_cancels
from mageflow.engines.taskiq_streams import (
    adapt_stream_broker,
    junk_burier,
    set_junk_hook,
    stream_settings,
    sweep_streams,
)
from mageflow.engines.taskiq_wire import (
    MESSAGE_LABELS,
    broker_message,
    direct_send,
    taskiq_message,
)
from mageflow.envelope import Envelope
from mageflow.errors import ConfigurationError, PoisonMessageError, RedisUnavailableError
from mageflow.status import SignatureStatus
from mageflow.store.keys import KeySchema
from mageflow.tasks import TaskDef

if TYPE_CHECKING:
    from mageflow.engines.taskiq_worker import TaskiqWorker

log = logging.getLogger("mageflow.taskiq")

#: Pauses between tries of a delivery that cannot reach Redis; after the last it is left to the
#: broker to deliver again.
INFRA_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)

#: Default of the ``context`` parameter of the registered functions: taskiq injects its Context.
TASKIQ_CONTEXT: Any = TaskiqDepends()

Verdict = Literal["ack", "leave"]


#: Follow-ups waiting for one delivery slot, at most; more go to the broker.
MAX_HANDED_OVER = 8


@dataclass(slots=True)
class _Slot:
    """The concurrency slot of the delivery running in this context, and the follow-ups handed
    to it, which run in it one after another (see ``run_here``)."""

    open: bool = False  # while a run of this slot may hand it over
    follow_ups: deque[tuple[str, Envelope]] = field(default_factory=deque)


_SLOT: ContextVar[_Slot | None] = ContextVar("mageflow_taskiq_slot", default=None)


@dataclass(slots=True)
class TaskiqTaskContext:
    """What a task that asks for a context receives on the Taskiq engine."""

    signature_key: str
    task_name: str
    attempt: int
    retries: int
    taskiq: Context | None = None  # taskiq's own context: the message, broker and state


class TaskiqEngine(Engine):
    """Runs mageflow tasks on the workers of a taskiq ``broker``.

    ``manage_broker``: a producer's client starts the broker with the client and shuts it down
    with it. Pass False when your application starts and stops the broker itself. (A worker
    always starts the broker, as a worker, and shuts it down when it stops.)

    ``run_here``: when a task finishes on a worker, the follow-ups its finish sends (a chain's
    next step, the swarm member taking the freed slot, callbacks) run next in the same delivery
    slot, one after another and without a trip through the broker, if this worker registers
    their task and is not draining (up to ``MAX_HANDED_OVER`` waiting per slot); the rest, and
    everything producers send, go to the broker. Nothing is lost
    either way: until its run claims the signature the follow-up is in the outbox, and a
    claimed run whose worker dies is sent again when its lease runs out. Pass False to send
    every follow-up through the broker (to spread each one anew).
    """

    remote_workers = True

    def __init__(
        self, broker: AsyncBroker, *, manage_broker: bool = True, run_here: bool = True
    ) -> None:
        self.broker = broker
        adapt_stream_broker(broker)
        self.manage_broker = manage_broker
        self.run_here = run_here
        self._local: set[str] = set()  # follow-ups handed a slot here, until their run ends
        self.draining = False  # set by the worker at shutdown: waiting deliveries let go
        self._tasks: dict[str, tuple[TaskDef, Runner]] = {}
        self._runs: dict[str, set[asyncio.Task[RunOutcome]]] = {}
        self._deliveries: set[asyncio.Task[Any]] = set()
        self._services: EngineServices | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._broker_mode: Literal["producer", "worker"] | None = None

    # -- registering and sending ----------------------------------------------------------------

    def register(self, task: TaskDef, runner: Runner) -> Any:
        if task.options:
            log.debug("task %s: the Taskiq engine ignores options %s", task.name, task.options)
        self._tasks[task.name] = (task, runner)
        return self.broker.register_task(self._handler(task.name), task_name=task.name)

    def _handler(self, name: str) -> Callable[..., Awaitable[None]]:
        async def deliver(
            envelope: dict[str, Any], attempt: int = 0, context: Context = TASKIQ_CONTEXT
        ) -> None:
            await self.deliver(name, envelope, attempt, context)

        deliver.__qualname__ = deliver.__name__ = f"mageflow:{name}"
        return deliver

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def task(self, name: str) -> TaskDef | None:
        """The task registered here under ``name``, if any."""
        found = self._tasks.get(name)
        return found[0] if found else None

    def keys(self) -> KeySchema:
        """The key schema of the client this engine started with."""
        if self._services is None:
            raise ConfigurationError("the Taskiq engine has not been started by a client yet")
        return self._services.keys

    async def dispatch(self, task: TaskDef | str, envelope: Envelope) -> str | None:
        name = task if isinstance(task, str) else task.name
        if not self._hand_over(name, envelope):
            await self.send(name, envelope, 0)
        return None  # runs are cancelled by signature key

    def confirms(self, key: str) -> bool:
        # A follow-up handed a slot here is not in the broker: its outbox entry stays until its
        # run claims it (and so comes back through recovery if this process dies first).
        return key not in self._local

    def holds(self, key: str) -> bool:
        return key in self._runs or key in self._local

    def _hand_over(self, name: str, envelope: Envelope) -> bool:
        """Give the slot of the delivery sending this follow-up to it, if that delivery has not
        given it away yet (see ``run_here``). Outside a delivery (a producer, recovery, the
        scheduler, a send retried later) there is no slot to give."""
        slot = _SLOT.get()
        if (
            slot is None
            or not slot.open
            or len(slot.follow_ups) >= MAX_HANDED_OVER
            or not self.run_here
            or self.draining
            or name not in self._tasks
            or envelope.sig in self._local
        ):
            return False
        slot.follow_ups.append((name, envelope))
        self._local.add(envelope.sig)
        return True

    async def send(self, name: str, envelope: Envelope, attempt: int) -> None:
        """Kick a message to task ``name`` by name: the sender need not have registered it."""
        if direct_send(self.broker):
            await self.broker.kick(broker_message(self.broker, name, envelope.to_dict(), attempt))
            return
        kicker: AsyncKicker[Any, Any] = AsyncKicker(
            task_name=name, broker=self.broker, labels=dict(MESSAGE_LABELS)
        )
        await kicker.kiq(envelope=envelope.to_dict(), attempt=attempt)

    # -- lifecycle --------------------------------------------------------------------------------

    def prepare_worker(self) -> None:
        """Mark this process as a worker (before the broker starts and before the client starts)."""
        self.broker.is_worker_process = True

    async def start_broker(self) -> None:
        """Start the broker once, in the mode of this process; a broker started as a producer is
        restarted as a worker (a worker opens connections a producer does not)."""
        mode: Literal["producer", "worker"] = (
            "worker" if self.broker.is_worker_process else "producer"
        )
        if self._broker_mode == mode:
            return
        await self._shut_broker()
        await self.broker.startup()
        self._broker_mode = mode

    async def start(self, services: EngineServices) -> None:
        self._services = services
        if self.broker.is_worker_process:
            await self.start_worker_loops()
        elif self.manage_broker:
            await self.start_broker()

    async def start_worker_loops(self) -> None:
        """Lease heartbeats, the cancel listener and the stream sweeper (once, after start)."""
        services = self._services
        if self._loops or services is None:
            return
        pubsub = services.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(services.keys.cancel_channel)  # before any task can start
        loop = asyncio.get_running_loop()
        self._loops.append(
            loop.create_task(listen_for_cancels(services, pubsub, self.cancel_local))
        )
        settings = stream_settings(self.broker)
        if settings is not None:
            self._loops.append(loop.create_task(sweep_streams(settings)))
        set_junk_hook(self.broker, junk_burier(self.bury))

    async def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        await self._shut_broker()
        self._services = None

    async def _shut_broker(self) -> None:
        if self._broker_mode is None:
            return
        self._broker_mode = None
        try:
            await asyncio.wait_for(self.broker.shutdown(), 10)
        except Exception as exc:  # closing anyway; a broker that will not close is not fatal
            log.warning("the broker did not shut down cleanly: %r", exc)

    def worker(self, client: Any, *args: Any, **kwargs: Any) -> TaskiqWorker:
        """A worker running ``client``'s tasks in this process: ``await mf.worker().run(stop)``."""
        from mageflow.engines.taskiq_worker import TaskiqWorker

        return TaskiqWorker(client, *args, **kwargs)

    # -- cancelling -------------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> bool:
        """Stop the run of signature ``run_id`` here and on every worker listening.

        True when a run was stopped in this process or a worker received the request (a worker
        that is not running it ignores it).
        """
        stopped = self.cancel_local(run_id)
        services = self._services
        if services is None:
            return stopped
        receivers = await services.redis.publish(services.keys.cancel_channel, run_id)
        return stopped or int(receivers) > 0

    def cancel_local(self, key: str) -> bool:
        runs = list(self._runs.get(key, ()))
        for run in runs:
            run.cancel()
        return bool(runs)

    def abort(self) -> int:
        """Cancel every delivery in flight without acknowledging it (forced shutdown)."""
        for delivery in self._deliveries:
            delivery.cancel()
        return len(self._deliveries)

    @property
    def in_flight(self) -> int:
        return len(self._deliveries)

    def running_keys(self) -> list[str]:
        return list(self._runs)

    def stop_local(self, key: str) -> bool:
        return self.cancel_local(key)

    # -- delivering -------------------------------------------------------------------------------

    async def deliver(
        self, name: str, payload: dict[str, Any], attempt: int, context: Context | None
    ) -> None:
        """Handle one message of task ``name``; acknowledge it unless it has to come back."""
        await self._deliver(name, Envelope.from_dict(payload), attempt, context)

    async def _deliver(
        self, name: str, envelope: Envelope, attempt: int, context: Context | None
    ) -> None:
        """Settle the delivery, then run in its slot the follow-ups handed to it, one after
        another (a chain runs on in one slot)."""
        me = asyncio.current_task()
        if me is not None:
            self._deliveries.add(me)
        slot = _Slot()
        token = _SLOT.set(slot)
        try:
            while True:
                slot.open = True
                try:
                    verdict = await self._settle_one(name, envelope, attempt, context)
                finally:
                    slot.open = False  # (a send retried later goes to the broker)
                    self._local.discard(envelope.sig)
                if verdict == "ack" and context is not None and context.is_ackable:
                    await context.ack()
                if not slot.follow_ups:
                    return
                (name, envelope), attempt, context = slot.follow_ups.popleft(), 0, None
        finally:
            _SLOT.reset(token)
            if me is not None:
                self._deliveries.discard(me)
            for _, cut_off in slot.follow_ups:  # never ran: recovery's, from here on
                self._local.discard(cut_off.sig)

    async def _settle_one(
        self, name: str, envelope: Envelope, attempt: int, context: Context | None
    ) -> Verdict:
        try:
            return await self._settle(name, envelope, attempt, context)
        except Exception:
            if context is not None:
                raise
            # A follow-up run in a handed-over slot has no message to leave to the broker: its
            # outbox entry, or its lease once claimed, brings it back through recovery.
            log.exception("run of %s (%s) failed; recovery sends it again", name, envelope.sig)
            return "leave"

    async def _settle(
        self, name: str, envelope: Envelope, attempt: int, context: Context | None
    ) -> Verdict:
        task, runner = self._tasks[name]
        if context is None and task.with_context:  # a follow-up in a handed-over slot
            context = self._context_for(name, envelope, attempt)
        while True:
            ctx = TaskiqTaskContext(envelope.sig, name, attempt, task.retries, context)
            outcome = await self._attempt(task, runner, envelope, attempt, ctx)
            if outcome == "leave":
                return "leave"
            if outcome == "canceled":
                return "ack"
            assert isinstance(outcome, RunOutcome)
            if outcome.retry:  # (the runtime logged the failed attempt)
                if await self._send_retry(name, envelope, attempt + 1):
                    return "ack"
                attempt += 1  # the broker refused it: run the next attempt right here
                continue
            if outcome.status != "skipped":
                return "ack"
            waited = await self._wait_for_holder(envelope.sig, attempt)
            if waited != "take over":
                return waited

    def _context_for(self, name: str, envelope: Envelope, attempt: int) -> Context:
        """taskiq's Context for a run that never was a broker message: the message it would
        have been, and nothing to acknowledge."""
        message = taskiq_message(self.broker, name, envelope.to_dict(), attempt)
        return Context(message, self.broker)

    async def _attempt(
        self, task: TaskDef, runner: Runner, envelope: Envelope, attempt: int, ctx: Any
    ) -> RunOutcome | Literal["canceled", "leave"]:
        for pause in (*INFRA_BACKOFF, None):
            try:
                return await self._run(task, runner, envelope, attempt, ctx)
            except Exception as exc:  # the runner raises only when Redis fails it
                if pause is None or self.draining:
                    log.error(
                        "giving up on %s (%s) for now (%r): its message stays unacknowledged and "
                        "the broker delivers it again",
                        task.name,
                        envelope.sig,
                        exc,
                    )
                    return "leave"
                log.warning(
                    "%s (%s): %r; trying again in %.1f s", task.name, envelope.sig, exc, pause
                )
                await asyncio.sleep(pause)
        return "leave"  # pragma: no cover - the loop always returns

    async def _run(
        self, task: TaskDef, runner: Runner, envelope: Envelope, attempt: int, ctx: Any
    ) -> RunOutcome | Literal["canceled"]:
        """One runner call in its own asyncio task, so a cancel request stops just the run."""

        async def call() -> RunOutcome:
            return await runner(task, envelope, attempt, ctx)

        key = envelope.sig
        run = asyncio.get_running_loop().create_task(call(), name=f"mageflow {task.name} {key}")
        runs = self._runs.setdefault(key, set())
        runs.add(run)
        try:
            return await run
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if run.cancelled() and (me is None or me.cancelling() == 0):
                log.info("run of %s (%s) canceled on request", task.name, key)
                return "canceled"
            raise  # the delivery itself is being cancelled (forced shutdown)
        finally:
            runs.discard(run)
            if not runs and self._runs.get(key) is runs:
                del self._runs[key]

    async def _send_retry(self, name: str, envelope: Envelope, attempt: int) -> bool:
        try:
            await self.send(name, envelope, attempt)
        except Exception as exc:
            log.warning("could not send attempt %d of %s (%r); running it here", attempt, name, exc)
            return False
        return True

    async def _wait_for_holder(
        self, key: str, attempt: int
    ) -> Literal["ack", "leave", "take over"]:
        """The claim was refused: wait while a live holder runs the signature."""
        services = self._services
        if services is None:
            return "ack"
        poll = min(max(services.lease_seconds / 3, 0.1), 5.0)
        announced = False
        while not self.draining:
            local = self._runs.get(key)
            if local:  # another delivery of it runs in this very process
                await asyncio.wait(set(local), timeout=poll)
                continue
            try:
                status, holder_attempt, lease, now = await services.claim_state(key)
            except Exception as exc:
                log.warning("could not read %s (%r); leaving its message to the broker", key, exc)
                return "leave"
            if status != SignatureStatus.ACTIVE.value or holder_attempt > attempt:
                return "ack"  # finished, stopped, or a later attempt owns it
            if now >= lease:
                return "take over"
            if not announced:
                log.info("%s is running elsewhere; waiting for its holder", key)
                announced = True
            await asyncio.sleep(min(poll, (lease - now) / 1000 + 0.05))
        return "leave"

    async def bury(self, error: PoisonMessageError, data: Any, source: str) -> bool:
        """Dead-letter a poison delivery; True when it may be acknowledged (the letter is
        written), False to leave the message to the broker for later (Redis is down)."""
        services = self._services
        if services is None:
            log.error("poison message from %s not dead-lettered (no client): %s", source, error)
            return False
        try:
            await services.bury(error, data, source)
        except RedisUnavailableError as exc:
            log.warning("could not dead-letter a message from %s yet (%s)", source, exc)
            return False
        return True
