"""The sender: the one place a committed transition's follow-ups leave the process.

Every script that changes state queues its follow-ups in the outbox in the same atomic step (see
``deliver`` in lua/lib.lua) and answers them as actions; whoever called the script hands them
here. A DELIVER goes to the engine (a task) or starts the chain or swarm (a container); a STOP
asks the engine to stop a running task.

Sending is never silently dropped:

* a send that fails is retried here with backoff, and if this process dies first, recovery
  (``recovery.py``, in any client or worker) finds the outbox entry and sends it again;
* a caller that waits for the send (``aio_run_no_wait``, ``add_tasks``, ``resume`` ...) gets a
  :class:`~mageflow.errors.DispatchError` after the retry is scheduled;
* sending twice is harmless: every receiver claims its signature atomically, so one delivery
  runs and the others are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mageflow.engines.base import Engine
from mageflow.envelope import Envelope
from mageflow.errors import ConfigurationError, DispatchError, UnknownTaskError
from mageflow.store.records import Record, dumps
from mageflow.store.redis_store import Store
from mageflow.store.schema import Action, ActionKind, Field, Kind, SignatureStatus, Verdict

log = logging.getLogger("mageflow.sender")

#: Where a container launched as an error callback carries the error to the tasks inside it.
ERROR_KEY = "$mageflow_error"
#: (map record, its start envelope) -> (member keys, their message, '' or an error JSON).
MapExpander = Callable[[Record, Envelope], Awaitable[tuple[list[str], str, str]]]
#: Pauses between the retries of a failed send; after the last, recovery takes over.
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class Sender:
    def __init__(self, store: Store, engine: Engine) -> None:
        self.store = store
        self.engine = engine
        #: Actions handed to send() and not yet sent, by outbox entry (or key): what a process
        #: that ends abruptly still owes (see Mageflow's exit hook).
        self.unsent: dict[str, Action] = {}
        self._retries: set[asyncio.Task[None]] = set()
        #: Called with every DELIVER action (a task or a container about to start) before it
        #: goes out: how mageflow.testing records what a workflow dispatched, on any engine.
        self.watchers: list[Callable[[Action], Awaitable[None]]] = []
        #: Writes a map's members when it starts (mageflow.mapping.expand, set by the client:
        #: copying signatures is the signature layer's, above this one).
        self.expand_map: MapExpander | None = None

    async def send(self, actions: Sequence[Action], *, raise_errors: bool = False) -> None:
        """Send every action; failed ones are retried in the background. With ``raise_errors``
        the first failure is raised once all were tried."""
        if not actions:
            return
        for action in actions:
            self.unsent[_ident(action)] = action
        if len(actions) == 1:
            errors = [await self._try(actions[0])]
        else:
            errors = list(await asyncio.gather(*(self._try(a) for a in actions)))
        failed = [(a, e) for a, e in zip(actions, errors, strict=True) if e is not None]
        if failed and raise_errors:
            action, exc = failed[0]
            if isinstance(exc, DispatchError | UnknownTaskError):
                raise exc
            raise DispatchError(action.key, action.task, exc) from exc

    async def _try(self, action: Action) -> BaseException | None:
        """Send one action; on failure schedule its retry and return the error."""
        error: BaseException | None = None
        try:
            await self._send_one(action)
        except asyncio.CancelledError:
            raise
        except UnknownTaskError as exc:
            # Not registered in this process (in-process engine): the entry stays in the outbox
            # for a process that registers the task (see docs/engines/inprocess.md).
            log.warning("cannot run %s here: %s", action.key, exc)
            error = exc
        except DispatchError as exc:  # a nested send (a container's first work) failed
            error = exc
        except Exception as exc:
            if action.kind is not ActionKind.STOP:
                log.warning("could not send %s (%s): %r; retrying", action.key, action.task, exc)
                self._retry_later(action)  # still owed: it stays in `unsent` until sent
                return exc
            # The stop is on record as the task's status; the worker's heartbeat sees it.
            log.warning("could not ask the engine to stop %s: %r", action.key, exc)
        self.unsent.pop(_ident(action), None)
        return error

    async def _send_one(self, action: Action) -> None:
        # One DEBUG line per follow-up sent (a callback, a chain's next step, a swarm member):
        # with mageflow's DEBUG on, the log shows what each finish set in motion.
        if action.kind is ActionKind.STOP:
            await self.engine.cancel(action.payload or action.key)
            log.debug("asked the engine to stop %s", action.key)
            return
        for watcher in self.watchers:
            await watcher(action)
        envelope = Envelope.from_json(action.payload, action.key)
        if action.target is Kind.TASK:
            run_id = await self.engine.dispatch(action.task, envelope)
            if run_id and run_id != action.key:
                await self.store.set_fields(action.key, {Field.RUN_ID: run_id})
            if self.engine.confirms(action.key):  # recovery now waits the accepted grace
                self.store.ack(action.entry)
            log.debug("sent task %r (%s)", action.task, action.key)
            return
        await self.start_container(action.key, envelope)

    async def start_container(self, key: str, envelope: Envelope) -> None:
        """Deliver a chain's or swarm's message: its input merged with its bound kwargs."""
        record = await self.store.load(key)
        if record.get(Field.TEMPLATE) and record.status == SignatureStatus.PENDING:
            await self._start_map(record, envelope)
            return
        message: dict[str, Any] = {**envelope.input, **record.kwargs()}
        if envelope.error is not None:  # a container as error callback: its steps get the error
            message[ERROR_KEY] = envelope.error
        ret = dumps(envelope.ret) if envelope.has_ret else ""
        answer = await self.store.start_container(record.key, dumps(message), ret)
        if answer.verdict is Verdict.OK:
            log.debug("started %s %s", record.kind, key)
            await self.send(answer.actions(), raise_errors=True)
        else:
            log.debug("container %s not started: %s %s", key, answer.verdict, answer.detail[0])

    async def _start_map(self, record: Record, envelope: Envelope) -> None:
        """Write one member per item, then claim and start the map in one script; a process
        that lost the claim to another deletes its copies."""
        if self.expand_map is None:
            raise ConfigurationError("this sender cannot start a map (no client set it up)")
        members, message, error = await self.expand_map(record, envelope)
        answer = await self.store.map_start(record.key, message, error, members)
        if answer.verdict is Verdict.OK:
            log.debug("started map %s with %d member(s)", record.key, len(members))
            await self.send(answer.actions(), raise_errors=True)
            return
        await self.store.write_raw([], dict.fromkeys(members, ""))
        log.debug("map %s not started: %s %s", record.key, answer.verdict, answer.detail[0])

    def _retry_later(self, action: Action) -> None:
        task = asyncio.get_running_loop().create_task(self._retry(action))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, action: Action) -> None:
        for delay in RETRY_DELAYS:
            await asyncio.sleep(delay)
            try:
                await self._send_one(action)
            except Exception as exc:
                log.debug("retry of %s failed: %r", action.key, exc)
                continue
            self.unsent.pop(_ident(action), None)
            log.info("sent %s (%s) after retrying", action.key, action.task)
            return
        log.warning(
            "still could not send %s (%s); it stays in the outbox for recovery",
            action.key,
            action.task,
        )

    async def close(self) -> None:
        """Stop retrying (what is left stays in the outbox) and flush confirmations."""
        for task in list(self._retries):
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)
        try:
            await self.store.flush_acks()
        except Exception as exc:  # lost confirmations only mean one more send by recovery
            log.debug("could not flush outbox confirmations: %r", exc)


def _ident(action: Action) -> str:
    return action.entry or f"{action.kind}:{action.key}"
