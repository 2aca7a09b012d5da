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
* a worker runs the follow-ups of its own tasks itself (see ``run_here`` on
  :class:`TaskiqEngine`): they leave the outbox only when the run claims its signature, so a
  worker that dies first leaves them to recovery, as a lost message would;
* the core's heartbeat extends the leases of the tasks running here (and stops runs whose
  signature was canceled meanwhile); workers listen on a Redis pub/sub channel for cancel
  requests, so :meth:`TaskiqEngine.cancel` stops a run on whatever process runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from taskiq import AsyncBroker, Context, TaskiqDepends
from taskiq.kicker import AsyncKicker

from mageflow.engines.base import Engine, EngineServices, Runner, RunOutcome
from mageflow.engines.taskiq_streams import (
    adapt_stream_broker,
    set_junk_hook,
    stream_settings,
    sweep_streams,
)
from mageflow.engines.taskiq_wire import MESSAGE_LABELS, broker_message, direct_send
from mageflow.envelope import Envelope
from mageflow.errors import ConfigurationError, PoisonMessageError, RedisUnavailableError
from mageflow.poison import poison
from mageflow.status import SignatureStatus
from mageflow.store.keys import KeySchema
from mageflow.store.schema import PoisonReason
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

    ``run_here``: a worker runs the follow-ups of its own tasks (a chain's next step, a swarm's
    next member, a callback) itself, without a trip through the broker, while it has fewer than
    its concurrency in flight and registers the task; otherwise, and on producers, they go to
    the broker. Nothing is lost either way: until a run claims its signature the follow-up is
    in the outbox, and a claimed run whose worker dies is sent again when its lease runs out.
    Pass False to send every follow-up through the broker (to spread each one anew).
    """

    remote_workers = True

    def __init__(
        self, broker: AsyncBroker, *, manage_broker: bool = True, run_here: bool = True
    ) -> None:
        self.broker = broker
        adapt_stream_broker(broker)
        self.manage_broker = manage_broker
        self.run_here = run_here
        #: Runs in flight at most, this one included, for a follow-up to run here (the worker
        #: sets its concurrency; 0, as on producers: never).
        self.local_limit = 0
        self._local: dict[str, asyncio.Task[None]] = {}  # follow-ups run here, by key
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
        if self._runs_here(name, envelope.sig):
            self._start_here(name, envelope)
        else:
            await self.send(name, envelope, 0)
        return None  # runs are cancelled by signature key

    def confirms(self, key: str) -> bool:
        return key not in self._local  # a run here claims its entry; nothing to confirm

    def holds(self, key: str) -> bool:
        return key in self._runs or key in self._local

    def _runs_here(self, name: str, key: str) -> bool:
        return (
            self.run_here
            and self.local_limit > 0  # a worker (producers send everything to the broker)
            # (<=: the run sending this follow-up is one of them, and about to end)
            and len(self._deliveries) <= self.local_limit
            and not self.draining
            and name in self._tasks
            and key not in self._local
        )

    def _start_here(self, name: str, envelope: Envelope) -> None:
        """Run a follow-up in this worker as if the broker had delivered it here."""
        key = envelope.sig
        run = asyncio.get_running_loop().create_task(
            self._deliver(name, envelope, 0, None), name=f"mageflow {name} {key} (here)"
        )
        self._local[key] = run
        self._deliveries.add(run)  # (at once: a forced shutdown must cancel it too)

        def forget(done: asyncio.Task[None]) -> None:
            if self._local.get(key) is done:
                del self._local[key]
            self._deliveries.discard(done)

        run.add_done_callback(forget)

    async def settle_here(self) -> None:
        """Wait for the follow-ups running here (a draining worker: none start meanwhile)."""
        while self._local:
            await asyncio.wait(set(self._local.values()))

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
        self._loops.append(loop.create_task(self._cancel_listener(services, pubsub)))
        settings = stream_settings(self.broker)
        if settings is not None:
            self._loops.append(loop.create_task(sweep_streams(settings)))
        set_junk_hook(self.broker, self._junk)

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

    async def _cancel_listener(self, services: EngineServices, pubsub: Any) -> None:
        channel = services.keys.cancel_channel
        while True:
            try:
                if pubsub is None:
                    pubsub = services.redis.pubsub(ignore_subscribe_messages=True)
                    await pubsub.subscribe(channel)
                msg = await pubsub.get_message(timeout=1.0)
                if msg and msg.get("type") == "message":
                    self.cancel_local(_text(msg["data"]))
            except asyncio.CancelledError:
                await _close_quietly(pubsub)
                raise
            except Exception as exc:  # reconnect; runs meanwhile stop via the status check
                log.warning("cancel listener lost Redis (%r); reconnecting", exc)
                await _close_quietly(pubsub)
                pubsub = None
                await asyncio.sleep(1.0)

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
        me = asyncio.current_task()
        if me is not None:
            self._deliveries.add(me)
        try:
            verdict = await self._settle(name, envelope, attempt, context)
        except Exception:
            if context is not None:
                raise
            # A run here has no message to leave for the broker: its outbox entry, or its lease
            # once claimed, brings it back through recovery.
            log.exception("run of %s (%s) here failed; recovery sends it again", name, envelope.sig)
            return
        finally:
            if me is not None:
                self._deliveries.discard(me)
        if verdict == "ack" and context is not None and context.is_ackable:
            await context.ack()

    async def _settle(
        self, name: str, envelope: Envelope, attempt: int, context: Context | None
    ) -> Verdict:
        task, runner = self._tasks[name]
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

    async def _junk(self, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> bool:
        names = sorted(k.decode("utf-8", "replace") for k in fields)
        error = poison(
            PoisonReason.NO_DATA,
            f"the stream entry has no 'data' field (fields: {', '.join(names) or 'none'})",
        )
        raw = {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()
        }
        return await self.bury(error, raw, f"taskiq stream {stream} entry {entry_id}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):
            await pubsub.aclose()
