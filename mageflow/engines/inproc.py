"""The embedded default engine: tasks run as asyncio tasks in the caller's process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any

from mageflow.engines.base import Engine, EngineServices, Runner, RunOutcome
from mageflow.envelope import Envelope
from mageflow.errors import UnknownTaskError
from mageflow.tasks import TaskDef

log = logging.getLogger("mageflow.inproc")


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
    """

    redelivers = False  # a task dies with this process; nothing delivers it again

    def __init__(self, concurrency: int = 1000) -> None:
        self._tasks: dict[str, tuple[TaskDef, Runner]] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    def register(self, task: TaskDef, runner: Runner) -> None:
        self._tasks[task.name] = (task, runner)

    def names(self) -> list[str]:
        return list(self._tasks)

    async def dispatch(self, task: TaskDef | str, envelope: Envelope) -> str | None:
        name = task if isinstance(task, str) else task.name
        entry = self._tasks.get(name)
        if entry is None:
            raise UnknownTaskError(name, self.names())
        run = asyncio.get_running_loop().create_task(self._run(entry, envelope), name=envelope.sig)
        self._running[envelope.sig] = run
        run.add_done_callback(functools.partial(self._forget, envelope.sig))
        return None

    def _forget(self, key: str, run: asyncio.Task[Any]) -> None:
        if self._running.get(key) is run:
            del self._running[key]

    async def _run(self, entry: tuple[TaskDef, Runner], envelope: Envelope) -> None:
        task, runner = entry
        async with self._slots:
            for attempt in range(task.retries + 1):
                ctx = InProcContext(envelope.sig, task.name, attempt, task.retries)
                outcome: RunOutcome = await runner(task, envelope, attempt, ctx)
                if not outcome.retry:
                    return
                log.debug(
                    "task %s attempt %d failed, retrying: %r", task.name, attempt, outcome.error
                )

    async def start(self, services: EngineServices) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat(services))

    async def _beat(self, services: EngineServices) -> None:
        """Keep the leases and TTLs of running tasks fresh, however long they run."""
        while True:
            await asyncio.sleep(services.heartbeat_seconds)
            if self._running:
                try:
                    await services.heartbeat(list(self._running))
                except Exception as exc:  # Redis trouble: the next beat tries again
                    log.warning("heartbeat failed: %r", exc)

    async def cancel(self, run_id: str) -> bool:
        run = self._running.get(run_id)
        if run is None or run.done():
            return False
        run.cancel()
        return True

    async def stop(self) -> None:
        """Let running tasks finish (they may dispatch follow-ups, so wait until none are left)."""
        await self.join()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None

    async def join(self) -> None:
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)
