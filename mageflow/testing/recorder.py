"""Run a user's own client in a test: in-process, on a private namespace, with every dispatch
recorded and assertions over them.

:class:`TestRun` rebinds the app's client (``Mageflow.rebind``) to an in-process engine and a
fresh namespace for the length of one test, whatever engine the app was built for, so nothing
reaches the app's broker or Hatchet. Every message the workflow sends (a task, a callback, a
chain's next step, a swarm member, a chain or swarm starting) is recorded as a
:class:`Dispatch` before it goes out. With ``execute=False`` tasks are recorded and not run:
what a task would have dispatched after it never happens.
"""

from __future__ import annotations

import bisect
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mageflow.engines.base import Engine
from mageflow.engines.inproc import InProcEngine
from mageflow.envelope import Envelope
from mageflow.errors import MageflowError
from mageflow.runtime import build_message
from mageflow.store.connect import client_from_url
from mageflow.store.records import Record
from mageflow.store.schema import Action, Field, Kind
from mageflow.tasks import TaskDef

if TYPE_CHECKING:
    from mageflow.client import Mageflow

__all__ = ["Dispatch", "DispatchAssertionError", "TestRun"]

#: Every test run's namespace starts with this (the rest is random).
NAMESPACE_PREFIX = "mfpytest-"


class DispatchAssertionError(AssertionError, MageflowError):
    """A ``TestRun.assert_*`` check failed; the message lists what was dispatched instead."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One message a workflow sent: a task to run, or a chain or swarm to start."""

    task_name: str  #: the task's name; for a chain or swarm, its name
    kind: str  #: ``task``, ``chain`` or ``swarm``
    key: str  #: the signature key
    message: dict[str, Any]  #: what the task receives: input, bound kwargs, return value
    children: tuple[str, ...] = ()  #: a chain's steps or a swarm's members, by name, in order

    def __str__(self) -> str:
        inner = f" of [{', '.join(self.children)}]" if self.kind != Kind.TASK else ""
        return f"{self.kind} {self.task_name!r}{inner} {self.message}"


class _HoldingEngine(InProcEngine):
    """The in-process engine, except that dispatched tasks are not run (``execute=False``)."""

    async def dispatch(self, task: TaskDef | str, envelope: Envelope) -> str | None:
        return None  # recorded by the sender's watcher; nothing runs, nothing follows


@dataclass
class TestRun:
    """The app's client, rebound for one test; ``dispatches`` and the ``assert_*`` checks."""

    __test__ = False  # not a test class, whatever pytest's name rules say

    client: Mageflow
    redis_url: str
    execute: bool = True
    namespace: str = field(default_factory=lambda: f"{NAMESPACE_PREFIX}{uuid.uuid4().hex[:12]}")
    dispatches: list[Dispatch] = field(default_factory=list)
    _restore: Callable[[], None] | None = None
    _seen: set[str] = field(default_factory=set)
    _started: bool = False
    _order: list[int] = field(default_factory=list)  # the send order of each dispatch

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> TestRun:
        await self.client.close()  # a client the app started at import: rebind needs it closed
        engine: Engine = InProcEngine() if self.execute else _HoldingEngine()
        config = self.client.config.model_copy(update={"namespace": self.namespace})
        self._restore = self.client.rebind(engine, self.redis_url, config=config)
        await self.client.ensure_started()
        self._started = True
        self.client.sender.watchers.append(self._record)
        return self

    async def stop(self) -> None:
        """Wait for what runs, drop the namespace's keys, point the client back."""
        try:
            if self._started:
                await self.client.close()
                await _delete_namespace(self.redis_url, self.namespace)
        finally:
            self._started = False
            if self._restore is not None:
                self._restore()
                self._restore = None

    # -- recording --------------------------------------------------------------------------------

    async def _record(self, action: Action) -> None:
        ident = action.entry or action.key
        if ident in self._seen:  # recovery sent the same message again
            return
        self._seen.add(ident)
        # The sender calls watchers in send order, but actions of one transition go out
        # concurrently: take the place now, before reading the record lets another overtake.
        place = len(self._seen)
        record = await self.client.store.load(action.key)
        envelope = Envelope.from_json(action.payload, action.key)
        if action.target is Kind.TASK:
            dispatch = Dispatch(
                action.task,
                Kind.TASK.value,
                action.key,
                self._message(action.task, envelope, record),
            )
        else:
            children = await self._children(record)
            name = record.get(Field.NAME) or record.kind
            message = {**envelope.input, **record.kwargs()}
            dispatch = Dispatch(name, record.kind, action.key, message, children)
        at = bisect.bisect(self._order, place)
        self._order.insert(at, place)
        self.dispatches.insert(at, dispatch)

    def _message(self, task: str, envelope: Envelope, record: Record) -> dict[str, Any]:
        definition = self.client.tasks.get(task)
        model = definition.input_validator if definition is not None else None
        try:
            built = build_message(model, task, envelope, record.kwargs())
        except MageflowError:  # the task itself will report it; record what was sent
            return {**envelope.input, **record.kwargs()}
        return built if isinstance(built, dict) else built.model_dump(mode="json")

    async def _children(self, record: Record) -> tuple[str, ...]:
        if record.kind == Kind.CHAIN:
            keys = record.key_list(Field.STEPS)
        else:
            keys = await self.client.store.member_keys(record.key)
        found = await self.client.store.load_many(keys)
        return tuple(_name(r) for r in found if r is not None)

    # -- assertions -------------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget the dispatches recorded so far."""
        self.dispatches.clear()
        self._order.clear()

    def task_dispatches(self, name: str) -> list[Dispatch]:
        """The recorded dispatches of task ``name``, in order."""
        return [d for d in self.dispatches if d.kind == Kind.TASK and d.task_name == name]

    def assert_task_dispatched(
        self, name: str, expected_input: dict[str, Any] | None = None, exact: bool = False
    ) -> Dispatch:
        """Task ``name`` was dispatched, with a message holding ``expected_input`` (every key
        equal; with ``exact``, nothing else either). Returns the first match."""
        for d in self.task_dispatches(name):
            if expected_input is None or _matches(d.message, expected_input, exact):
                return d
        wanted = "" if expected_input is None else f" with {'exactly ' if exact else ''}"
        wanted += f"{expected_input}" if expected_input is not None else ""
        raise DispatchAssertionError(f"task {name!r} was not dispatched{wanted}.{self._listing()}")

    def assert_chain_dispatched(self, expected_task_names: Iterable[str]) -> Dispatch:
        """A chain of these steps (by task name, in order) was started."""
        names = tuple(expected_task_names)
        for d in self.dispatches:
            if d.kind == Kind.CHAIN and d.children == names:
                return d
        raise DispatchAssertionError(f"no chain of {list(names)} was dispatched.{self._listing()}")

    def assert_swarm_dispatched(self, expected_task_names: Iterable[str]) -> Dispatch:
        """A swarm of these members (by task name, in any order) was started."""
        names = Counter(expected_task_names)
        for d in self.dispatches:
            if d.kind == Kind.SWARM and Counter(d.children) == names:
                return d
        raise DispatchAssertionError(
            f"no swarm of {sorted(names.elements())} was dispatched.{self._listing()}"
        )

    def assert_nothing_dispatched(self) -> None:
        if self.dispatches:
            raise DispatchAssertionError(f"expected no dispatch.{self._listing()}")

    def _listing(self) -> str:
        if not self.dispatches:
            return " Nothing was dispatched."
        lines = "\n".join(f"  {i + 1}. {d}" for i, d in enumerate(self.dispatches))
        return f" Dispatched instead, in order:\n{lines}"

    def __getattr__(self, name: str) -> Any:
        # Everything else is the client's: mageflow_client.sign(...), .chain(...), .swarm(...).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.client, name)


def _matches(message: dict[str, Any], expected: dict[str, Any], exact: bool) -> bool:
    if exact:
        return message == expected
    return all(k in message and message[k] == v for k, v in expected.items())


def _name(record: Record) -> str:
    return record.get(Field.NAME) or record.task_name or record.kind


async def _delete_namespace(url: str, namespace: str) -> None:
    redis = client_from_url(url, max_connections=4)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{namespace}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await redis.delete(*keys[start : start + 500])
    finally:
        await redis.aclose()
