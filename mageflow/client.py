"""The mageflow client: one object that registers tasks, signs and runs workflows."""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, overload

from mageflow import mapping
from mageflow.building import Building
from mageflow.config import MageflowConfig
from mageflow.engines import Engine, resolve_engine
from mageflow.engines.base import EngineServices
from mageflow.errors import (
    ConfigurationError,
    InvalidArgumentError,
    InvalidSettingError,
    UnknownTaskError,
)
from mageflow.recovery import Keeper, Presence
from mageflow.runtime import Runtime
from mageflow.scheduling import rate_limit_of
from mageflow.scopes import Batch, abounded_field
from mageflow.sender import Sender
from mageflow.store.batching import AnyRedis
from mageflow.store.connect import reconnect, resolve_redis, shard_count
from mageflow.store.dead_letters import DeadLetter
from mageflow.store.keys import KeySchema
from mageflow.store.redis_store import Store
from mageflow.tasks import MageflowTask, TaskDef, TaskFunction, infer_validator, wants_context
from mageflow.waiting import Notifier
from mageflow.workspace import current, set_current

log = logging.getLogger("mageflow")


def current_client() -> Mageflow:
    """The most recently created client (what ``mageflow.sign(...)`` and friends use)."""
    found = current()
    if not isinstance(found, Mageflow):
        raise ConfigurationError(
            "no mageflow client yet: create one first, e.g. mf = Mageflow() (in-process engine) "
            "or Mageflow(engine_client, redis_client)."
        )
    return found


class Mageflow(Building):
    """Registers tasks on an engine and composes them, with workflow state in Redis.

    ``engine_client``: None for the in-process engine, a taskiq broker, a ``hatchet_sdk.Hatchet``,
    or an :class:`~mageflow.engines.Engine`. ``redis_client``: a ``redis.asyncio.Redis``, a
    ``redis.asyncio.cluster.RedisCluster``, a URL (``redis+cluster://host:port`` for a cluster), or
    None for ``$REDIS_URL`` or else a private embedded Redis server.
    """

    def __init__(
        self,
        engine_client: Any = None,
        redis_client: AnyRedis | str | None = None,
        *,
        config: MageflowConfig | None = None,
    ) -> None:
        self.config = config or MageflowConfig()
        self.keys = KeySchema(self.config.namespace, shard_count(redis_client, self.config.shards))
        self.engine: Engine = resolve_engine(engine_client)
        self.engine_client = engine_client
        self._redis_arg = redis_client
        self._tasks: dict[str, TaskDef] = {}
        self._remote_meta: dict[str, dict[str, Any]] = {}
        self._store: Store | None = None
        self._runtime: Runtime | None = None
        self._sender: Sender | None = None
        self._keeper: Keeper | None = None
        self._notifier: Notifier | None = None
        self._exit_hook = False
        self._owns_redis = False
        self._start_lock: asyncio.Lock | None = None
        set_current(self)

    # -- tasks ----------------------------------------------------------------------------------

    @overload
    def task(self, name: TaskFunction) -> MageflowTask: ...

    @overload
    def task(
        self, name: str | None = None, **options: Any
    ) -> Callable[[TaskFunction], MageflowTask]: ...

    def task(self, name: Any = None, **options: Any) -> Any:
        """Register an async function as a task: ``@mf.task`` or ``@mf.task(name=..., ...)``.

        Options: ``input_validator`` (pydantic model; default: the first parameter's annotation),
        ``retries``, ``timeout`` (seconds per attempt), ``with_context`` (pass the engine's context
        as the second argument; default: when the function takes two parameters), ``rate_limit``
        (``"100/s"``, ``"10/m"``, ``"1000/h"`` or a :class:`~mageflow.RateLimit`; see
        docs/scheduling.md). Other options go to the engine.
        """
        if callable(name):
            return self._register(name, None, options)
        return lambda fn: self._register(fn, name, options)

    def durable_task(self, name: Any = None, **options: Any) -> Any:
        """Like :meth:`task`, for durable tasks (signatures they create are reused on retry)."""
        return self.task(name, durable=True, **options)

    def _register(
        self, fn: TaskFunction, name: str | None, options: dict[str, Any]
    ) -> MageflowTask:
        opts = dict(options)
        given = opts.pop("name", None) if name is None else name
        with_context = opts.pop("with_context", None)
        timeout = opts.pop("timeout", opts.pop("execution_timeout", None))
        definition = TaskDef(
            name=fn.__name__ if given is None else _task_name(given),
            fn=fn,
            input_validator=opts.pop("input_validator", None) or infer_validator(fn),
            retries=int(opts.pop("retries", 0)),
            timeout=_seconds(timeout),
            with_context=wants_context(fn) if with_context is None else bool(with_context),
            durable=bool(opts.pop("durable", False)),
            rate_limit=rate_limit_of(opts.pop("rate_limit", None)),
            options=opts,
        )
        if definition.name in self._tasks:
            raise ConfigurationError(f"a task named {definition.name!r} is already registered")
        self._tasks[definition.name] = definition
        engine_task = self.engine.register(definition, self._run)
        return MageflowTask(definition, self, engine_task)

    async def _run(self, task: TaskDef, envelope: Any, attempt: int, ctx: Any) -> Any:
        await self.ensure_started()
        return await self.runtime.run(task, envelope, attempt, ctx)

    def abounded_field(self) -> AbstractAsyncContextManager[Batch]:
        """``async with mf.abounded_field():`` — signature writes in the block go out as one
        atomic write at its end; runs started in it are dispatched after that commit."""
        return abounded_field(self)

    def worker(self, *args: Any, **kwargs: Any) -> Any:
        """A worker for this client's tasks, in the engine's own terms (e.g. Hatchet's
        ``worker(name, workflows=[...], lifespan=...)``); it starts and stops mageflow with it."""
        return self.engine.worker(self, *args, **kwargs)

    @property
    def tasks(self) -> dict[str, TaskDef]:
        return dict(self._tasks)

    def resolve_task(self, ref: Any) -> TaskDef:
        """The definition behind a task name or decorated task; UnknownTaskError if none."""
        if isinstance(ref, MageflowTask):
            return ref.definition
        if isinstance(ref, TaskDef):
            return ref
        if not isinstance(ref, str):
            raise InvalidArgumentError(
                "a task",
                "a task decorated with @mf.task, a registered task name or a signature",
                ref,
            )
        local = self._tasks.get(ref)
        if local is not None:
            return local
        if self.engine.remote_workers and ref in self._remote_meta:
            return TaskDef(name=ref, fn=_remote_only)
        known = list(self._tasks) + (list(self._remote_meta) if self.engine.remote_workers else [])
        raise UnknownTaskError(ref, known)

    def task_meta(self, name: str) -> dict[str, Any] | None:
        local = self._tasks.get(name)
        return local.meta() if local else self._remote_meta.get(name)

    async def refresh_registry(self) -> None:
        """Re-read the task names workers have published (for signing tasks by name)."""
        raw = await self.store.registry()
        self._remote_meta = {name: json.loads(meta) for name, meta in raw.items()}

    # -- lifecycle ------------------------------------------------------------------------------

    async def ensure_started(self) -> None:
        if self._store is not None:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._store is None:
                await self._start()

    async def _start(self) -> None:
        client, self._owns_redis = await resolve_redis(self._redis_arg, self.config.data_dir)
        store = Store(client, self.keys, self.config.ttl, self.config.accepted_grace_seconds)
        await store.ping()
        await store.register_tasks({n: t.meta_json() for n, t in self._tasks.items()})
        sender = Sender(store, self.engine)
        sender.expand_map = functools.partial(mapping.expand, self)
        self._sender = sender
        self._runtime = Runtime(store, self.engine, sender, self.config)
        self._notifier = Notifier(store, self.config.redis_outage_seconds)
        self._store = store
        await self.refresh_registry()
        await self.engine.start(
            EngineServices(
                redis=store.redis,
                keys=self.keys,
                lease_seconds=self.config.lease_seconds,
                claim_state=store.claim_state,
                bury=self.runtime.dead.bury,
            )
        )
        self._keeper = Keeper(
            store,
            self.engine,
            sender,
            lease_seconds=self.config.lease_seconds,
            period=self._heartbeat_seconds(),
            grace_seconds=self.config.lease_seconds,
            presence=Presence(sorted(self._tasks), self.engine.label) if self._tasks else None,
        )
        await self._keeper.start()
        if not self._exit_hook and self.engine.runs_in_process:
            atexit.register(self._finish_at_exit)
            self._exit_hook = True

    start = ensure_started

    def _heartbeat_seconds(self) -> float:
        ttl = self.config.ttl
        shortest = min(
            [ttl.active_ttl, self.config.lease_seconds]
            + [k.active_ttl for k in (ttl.task, ttl.chain, ttl.swarm) if k.active_ttl]
        )
        return max(shortest / 3, 0.05)

    async def close(self) -> None:
        """Wait for in-flight in-process work, then release connections."""
        if self._store is None:
            return
        if self._keeper is not None:  # what waits for a due time waits for the next client
            await self._keeper.scheduler.stop()
        await self.engine.stop()
        if self._keeper is not None:
            await self._keeper.stop()
        if self._sender is not None:
            await self._sender.close()
        if self._notifier is not None:
            await self._notifier.close()
        await self._store.close()
        if self._owns_redis:
            await self._store.redis.aclose()
        self._forget_started()

    def rebind(
        self,
        engine_client: Any = None,
        redis_client: AnyRedis | str | None = None,
        *,
        config: MageflowConfig | None = None,
    ) -> Callable[[], None]:
        """Point this client at another engine, Redis and config, with every task registered
        on the new engine; returns a function that points it back. Test harnesses use it
        (:mod:`mageflow.testing` runs an app built for Taskiq or Hatchet on the in-process
        engine): the app's own ``mf`` object, and ``mageflow.sign`` etc., then work unchanged.
        The client must not be started when either is called (``close()`` it first)."""
        if self._store is not None:
            raise ConfigurationError("close() the client before rebinding it")
        saved = (self.config, self.keys, self.engine, self.engine_client, self._redis_arg)
        remote = dict(self._remote_meta)
        self.config = config or self.config
        self.keys = KeySchema(self.config.namespace, shard_count(redis_client, self.config.shards))
        self.engine = resolve_engine(engine_client)
        self.engine_client, self._redis_arg, self._remote_meta = engine_client, redis_client, {}
        for definition in self._tasks.values():
            self.engine.register(definition, self._run)

        def restore() -> None:
            if self._store is not None:
                raise ConfigurationError("close() the client before restoring it")
            self.config, self.keys, self.engine, self.engine_client, self._redis_arg = saved
            self._remote_meta = remote

        return restore

    def _forget_started(self) -> None:
        self._store = self._runtime = self._notifier = self._sender = self._keeper = None

    def _finish_at_exit(self) -> None:
        """At interpreter exit, finish the in-process work the ended event loop cut off (a
        script that returns without ``close()``), so its callbacks still run. Skipped after
        Ctrl-C: then the next start of the app recovers it instead."""
        limit = self.config.finish_at_exit_seconds
        if self._store is None or not limit or getattr(sys, "last_type", None) is KeyboardInterrupt:
            return
        left = self.engine.leftovers()
        owed = list(self._sender.unsent.values()) if self._sender else []
        if not left and not owed:
            return
        try:
            asyncio.run(asyncio.wait_for(self._finish_left_work(left, owed), limit))
        except Exception as exc:  # the outbox still holds it: the next start recovers it
            log.warning("could not finish the work left at exit (%r); the next start will", exc)

    async def _finish_left_work(self, left: list[Any], owed: list[Any]) -> None:
        old = self._store
        assert old is not None
        # The old connections belong to the event loop that ended: connect again.
        self._redis_arg = reconnect(old.redis)
        self._forget_started()
        self.engine.reset()
        await self.ensure_started()
        self._owns_redis = True
        await self.store.release([envelope.sig for _name, envelope in left])
        for name, envelope in left:
            await self.engine.dispatch(name, envelope)
        await self.sender.send(owed)
        await self.engine.join()
        await self.close()

    async def __aenter__(self) -> Mageflow:
        await self.ensure_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ConfigurationError("the client is not started: await mf.start() first")
        return self._store

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise ConfigurationError("the client is not started: await mf.start() first")
        return self._runtime

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            raise ConfigurationError("the client is not started: await mf.start() first")
        return self._sender

    @property
    def notifier(self) -> Notifier:
        if self._notifier is None:
            raise ConfigurationError("the client is not started: await mf.start() first")
        return self._notifier

    # -- dead letters ---------------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` deliveries refused as poison in this namespace, oldest first."""
        await self.ensure_started()
        return await self.runtime.dead.store.list(limit)

    async def purge_dead_letters(self) -> int:
        """Delete this namespace's dead letters; how many there were."""
        await self.ensure_started()
        return await self.runtime.dead.store.purge()


def _task_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidArgumentError("a task name", "a non-empty string", name)
    if not name.strip():
        raise InvalidSettingError(
            "task name",
            name,
            "must not be empty; pass a name, or leave name out to use the function's name",
        )
    return name


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    if isinstance(value, str):  # Hatchet style: "30s", "5m", "1h"
        units = {"s": 1, "m": 60, "h": 3600}
        return float(value[:-1]) * units[value[-1]] if value[-1] in units else float(value)
    return float(value)


async def _remote_only(*_: Any) -> Any:
    raise ConfigurationError("this task is registered by another worker and cannot run here")
