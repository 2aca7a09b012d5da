"""Leases and recovery, written once for every engine.

Every client (a producer, a worker, an in-process app) runs one loop, every ``period`` seconds:

1. **heartbeat**: extend the leases of the tasks running in this process (the engine says which)
   and stop the local runs whose signature was canceled or interrupted meanwhile (a stop request
   that was lost still takes effect within one period);
2. **recovery**: send again what nobody is seeing through: outbox entries queued more than
   ``grace`` seconds ago that no receiver claimed (their sender died or could not reach the
   engine; for a message a durable engine accepted, the wait is the longer accepted grace, after
   which the broker or Redis must have lost it), and running tasks whose lease ran out (their
   holder died). It runs once at start-up too, so a restarted process finishes what it left.

Sending again is safe however often it happens: the claim in ``start_task.lua`` lets one
delivery through, and every transition takes effect once.

Beside the loop, every client runs a :class:`Scheduler`: it queues the messages that wait for a
due time (delays and rate limits, docs/scheduling.md) once they are due.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from mageflow.engines.base import Engine
from mageflow.sender import Sender
from mageflow.store.redis_store import Store, _s
from mageflow.store.schema import SignatureStatus, Verdict

log = logging.getLogger("mageflow.recovery")

#: Statuses that mean "stop this run" when the heartbeat sees them on a task running here.
STOP_STATUSES = frozenset({SignatureStatus.CANCELED, SignatureStatus.INTERRUPTED, Verdict.MISSING})
#: Actions one recovery call takes at most; a larger backlog is taken in further calls.
BATCH = 200
#: Recovery calls in one round at most, so one round is bounded however large the backlog.
MAX_CALLS = 50
#: How long the presence hash outlives the last announcement of any process.
PRESENCE_TTL_MS = 24 * 3600 * 1000


@dataclass(slots=True)
class Presence:
    """What ``mageflow workers`` shows of a process that registered tasks."""

    tasks: list[str]
    engine: str
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def to_json(self) -> str:
        now = int(time.time() * 1000)
        data = {"tasks": self.tasks, "engine": self.engine, "started": self.started_ms}
        return json.dumps({**data, "heartbeat": now})


class Keeper:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        sender: Sender,
        *,
        lease_seconds: float,
        period: float,
        grace_seconds: float,
        presence: Presence | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.sender = sender
        self.lease_ms = int(lease_seconds * 1000)
        self.grace_ms = int(grace_seconds * 1000)
        self.period = period
        self.presence = presence
        self._loop: asyncio.Task[None] | None = None
        #: Releases waiting messages (delays, rate limits); runs while the keeper runs.
        self.scheduler = Scheduler(store, sender)

    async def start(self) -> None:
        await self.announce()
        await self.recover()
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run(), name="mageflow-keeper")
        await self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        if self.presence is not None:
            with contextlib.suppress(Exception):  # a stale entry only ages out
                await self.store.retire(self.presence.worker)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.beat()
                await self.announce()
                await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis trouble: leases run on; the next round tries again
                log.warning("lease/recovery round failed: %r", exc)

    async def announce(self) -> None:
        if self.presence is not None:
            await self.store.announce(
                self.presence.worker, self.presence.to_json(), PRESENCE_TTL_MS
            )

    async def beat(self) -> None:
        keys = self.engine.running_keys()
        if not keys:
            return
        statuses = await self.store.heartbeat(keys, self.lease_ms)
        for key, status in zip(keys, statuses, strict=True):
            if status in STOP_STATUSES and self.engine.stop_local(key):
                log.info("stopped the run of %s here: its status is %s", key, status)

    async def recover(self) -> int:
        """One recovery round; returns how many messages it sent again."""
        sent = 0
        for shard in self.store.keys.all_shards:
            for _ in range(MAX_CALLS):
                actions = await self.store.recover(shard, self.grace_ms, BATCH)
                mine = [a for a in actions if not self.engine.holds(a.key)]
                if mine:
                    log.info("recovery: sending %d message(s) again", len(mine))
                    await self.sender.send(mine)
                    sent += len(mine)
                if len(actions) < BATCH:
                    break
        return sent


#: The longest the scheduler sleeps without looking at the delayed index: a wake notice lost
#: (the subscription was down) makes a release at most this late.
MAX_SLEEP = 1.0
#: Waiting messages one release call queues at most; more due are taken by further calls.
RELEASE_BATCH = 200
#: Pause before subscribing to wake notices again after the subscription failed.
RECONNECT_PAUSE = 0.5


class Scheduler:
    """Queues the waiting messages (delays, rate-limit slots) once they are due; every client
    runs one, started and stopped with its keeper.

    It sleeps until the head of the namespace's delayed index is due, at most ``MAX_SLEEP``, and
    wakes early when a wake notice (published by the script that scheduled a message) names an
    earlier due time. Releasing is one script (release.lua) that drops each entry it takes, so
    any number of processes releasing at once queue each message once; the sender then sends it
    like any other follow-up (and recovery sends again what a dead process did not).
    """

    def __init__(self, store: Store, sender: Sender) -> None:
        self.store = store
        self.sender = sender
        self._wake = asyncio.Event()
        #: Redis time (ms) at which the loop looks next; an earlier due time wakes it.
        self._look_at = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._listen(), name="mageflow-wake"),
                loop.create_task(self._run(), name="mageflow-scheduler"),
            ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            # Cleared before looking, so a notice that arrives while we look is not lost.
            self._wake.clear()
            try:
                pause = await self.release()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis trouble: the messages wait on; look again soon
                log.warning("could not release due messages (%r); trying again", exc)
                pause = MAX_SLEEP
            await self._sleep(pause)

    async def _sleep(self, seconds: float) -> None:
        """Until a wake notice or ``seconds``. Not asyncio.wait_for: on Python 3.11 it returns
        normally when a cancel meets a wake in the same loop turn, and stop() then waits for a
        loop that never ends; asyncio.wait leaves the cancel to raise."""
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({woken}, timeout=seconds)
        finally:
            woken.cancel()

    async def release(self) -> float:
        """Queue and send every message due now; the seconds until the next one is due (at
        most MAX_SLEEP)."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        wait_ms, now_ms = MAX_SLEEP * 1000, 0
        # A pass reads the shards one after another: a message scheduled meanwhile in a shard
        # already read is not in the heads it returns, so every notice during the pass wakes
        # the loop for another one.
        self._look_at = sys.maxsize
        for shard in self.store.keys.all_shards:
            while True:
                done = await self.store.release_due(shard, RELEASE_BATCH)
                if done.actions:
                    await self.sender.send(done.actions)
                if not done.more:
                    break
            now_ms = max(now_ms, done.now_ms)
            if done.next_due_ms is not None:
                # +1 ms: Redis counts whole ms, so waking a fraction early would find nothing.
                wait_ms = min(wait_ms, max(done.next_due_ms - done.now_ms + 1, 0))
        self._look_at = now_ms + int(wait_ms)
        return max(asked + wait_ms / 1000 - loop.time(), 0.0)

    async def _listen(self) -> None:
        channel = self.store.keys.wake_channel
        while True:
            pubsub: Any = self.store.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is not None:
                        self._notice(msg)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:  # look at the index (what we missed), then subscribe again
                log.warning("lost the wake-notice subscription (%r); reconnecting", exc)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                self._wake.set()
                await asyncio.sleep(RECONNECT_PAUSE)

    def _notice(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "subscribe":  # live from here on: anything scheduled before, look now
            self._wake.set()
        elif kind == "message":
            due = _s(msg["data"])
            if not due.isdigit() or int(due) < self._look_at:
                self._wake.set()
