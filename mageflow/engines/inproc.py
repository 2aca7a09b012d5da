"""The embedded default engine: tasks run as asyncio tasks in the caller's process."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

from mageflow.engines.base import Engine, Runner, RunOutcome
from mageflow.envelope import Envelope
from mageflow.errors import UnknownTaskError
from mageflow.tasks import TaskDef


@dataclass(slots=True)
class InProcContext:
    """What a task that asks for a context receives on the in-process engine."""

    signature_key: str
    task_name: str
    attempt: int
    retries: int


class InProcEngine(Engine):
    """Runs dispatched tasks as asyncio tasks, at most ``concurrency`` at a time.

    Retries and the per-attempt timeout are applied by the runner (the same code on every engine);
    this engine only loops over attempts and keeps the asyncio tasks so runs can be cancelled.
    A delivery is forgotten only when it ends: what is still here when the event loop ends is
    what the client finishes before the process exits (:meth:`leftovers`).
    """

    redelivers = False  # a task dies with this process; the outbox entry waits for the claim
    runs_in_process = True

    def __init__(self, concurrency: int = 1000) -> None:
        self.concurrency = concurrency
        self._tasks: dict[str, tuple[TaskDef, Runner]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._envelopes: dict[str, tuple[str, Envelope]] = {}
        self._stopped: set[asyncio.Task[Any]] = set()  # canceled on request, not by loop end

    def register(self, task: TaskDef, runner: Runner) -> None:
        self._tasks[task.name] = (task, runner)

    def names(self) -> list[str]:
        return list(self._tasks)

    async def dispatch(self, task: TaskDef | str, envelope: Envelope) -> str | None:
        name = task if isinstance(task, str) else task.name
        entry = self._tasks.get(name)
        if entry is None:
            raise UnknownTaskError(name, self.names())
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        run = asyncio.get_running_loop().create_task(self._run(entry, envelope), name=envelope.sig)
        self._running[envelope.sig] = run
        self._envelopes[envelope.sig] = (name, envelope)
        run.add_done_callback(functools.partial(self._forget, envelope.sig))
        return None

    def _forget(self, key: str, run: asyncio.Task[Any]) -> None:
        if self._running.get(key) is run:
            del self._running[key]
            # A run cut off by the end of the event loop is still owed; one that ended (or was
            # canceled on request, by stop_local or cancel) is not.
            if not run.cancelled() or run in self._stopped:
                self._envelopes.pop(key, None)
        self._stopped.discard(run)

    async def _run(self, entry: tuple[TaskDef, Runner], envelope: Envelope) -> None:
        task, runner = entry
        assert self._slots is not None
        async with self._slots:
            for attempt in range(task.retries + 1):
                ctx = InProcContext(envelope.sig, task.name, attempt, task.retries)
                outcome: RunOutcome = await runner(task, envelope, attempt, ctx)
                if not outcome.retry:  # (a retried attempt was logged by the runtime)
                    return

    async def cancel(self, run_id: str) -> bool:
        return self.stop_local(run_id)

    def running_keys(self) -> list[str]:
        return list(self._running)

    def stop_local(self, key: str) -> bool:
        run = self._running.get(key)
        if run is None or run.done():
            return False
        self._stopped.add(run)
        run.cancel()
        return True

    def leftovers(self) -> list[tuple[str, Envelope]]:
        return list(self._envelopes.values())

    def reset(self) -> None:
        self._running.clear()
        self._envelopes.clear()
        self._stopped.clear()
        self._slots = None

    async def stop(self) -> None:
        """Let running tasks finish (they may dispatch follow-ups, so wait until none are left)."""
        await self.join()

    async def join(self) -> None:
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)
