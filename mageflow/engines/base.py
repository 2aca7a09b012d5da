"""The engine contract: the few things mageflow needs from a task engine.

An engine runs task functions somewhere (this process, Taskiq workers, Hatchet workers). mageflow
keeps every bit of orchestration in the core; an engine only has to

* ``register`` a task: wrap it so a delivery calls ``runner(task, envelope, attempt, ctx)``
  and, when the outcome says ``retry``, delivers attempt + 1;
* ``dispatch`` an envelope to a registered task name;
* ``cancel`` a run it dispatched.

Start-up, shutdown and workers are optional hooks with no-op defaults. Leases, heartbeats and
recovery are not the engine's business: the core runs them once for every engine
(``mageflow/recovery.py``), asking the engine only which signatures it runs here
(:meth:`Engine.running_keys`) and to stop one of them (:meth:`Engine.stop_local`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mageflow.envelope import Envelope
from mageflow.errors import ConfigurationError, PoisonMessageError
from mageflow.store.batching import AnyRedis
from mageflow.store.keys import KeySchema

if TYPE_CHECKING:
    from mageflow.tasks import TaskDef


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What one delivery of a task came to. The runner never raises for a task's own error.

    ``status`` is ``done``, ``failed`` (final: callbacks fired), ``retry`` (this attempt failed and
    the engine should run attempt + 1), ``skipped`` (duplicate, paused or canceled: do nothing),
    ``rejected`` (poison: the core dead-lettered it; acknowledge it and never retry it) or
    ``deferred`` (not due yet, by a delay or a rate limit: the core sends it again when it is;
    acknowledge this delivery, and do not count it as an attempt).
    """

    status: str
    result: Any = None
    error: BaseException | None = None
    #: Why a delivery was skipped: the signature's status ('done', 'canceled', 'suspended', ...),
    #: 'busy' (a live worker holds this attempt) or 'missing'.
    reason: str = ""

    @property
    def retry(self) -> bool:
        return self.status == "retry"


@dataclass(frozen=True, slots=True)
class EngineServices:
    """Handed to :meth:`Engine.start`: the client's Redis connection and key schema (for engines
    that coordinate workers through Redis, e.g. to cancel a run on another process) and a way to
    read a signature's claim."""

    redis: AnyRedis
    keys: KeySchema
    lease_seconds: float
    #: (status, attempt, lease end ms, Redis time ms) of a signature: who holds it, until when.
    claim_state: Callable[[str], Awaitable[tuple[str, int, int, int]]]
    #: Dead-letter a poison delivery: (error, the message as received, where it came from).
    #: Raises when the letter cannot be written; the engine then leaves the message for later.
    bury: Callable[[PoisonMessageError, Any, str], Awaitable[str]]


Runner = Callable[["TaskDef", Envelope, int, Any], Awaitable[RunOutcome]]


class Engine(ABC):
    """Base class of task engines. Subclasses implement the three abstract methods."""

    #: True when tasks may be registered by other processes (workers), so a producer may sign a
    #: task it has not registered itself, as long as some worker published it to the registry.
    remote_workers: bool = False

    #: True when a dispatched message is durable in the engine (a broker with acknowledgements
    #: delivers it again if a worker dies mid-task): once ``dispatch`` returns, its outbox entry
    #: is confirmed. False for an engine that runs tasks in the calling process: there the
    #: entry stays until a delivery claims the signature, so a process that dies in between
    #: leaves it for recovery.
    redelivers: bool = True

    def confirms(self, key: str) -> bool:
        """True when the message ``dispatch`` just sent for ``key`` is durable in the engine, so
        its outbox entry may be confirmed (:attr:`redelivers`, unless the engine chose to run
        that one in this process)."""
        return self.redelivers

    #: True when tasks run in the calling process: the client then finishes, at interpreter exit,
    #: the deliveries the ended event loop cut off (see :meth:`leftovers`).
    runs_in_process: bool = False

    @property
    def label(self) -> str:
        """A short name for operators (``mageflow workers``): inproc, taskiq, hatchet."""
        return type(self).__name__.removesuffix("Engine").lower() or "engine"

    #: The engine's own "do not retry" exceptions, which fail a task at once like
    #: :class:`~mageflow.errors.NonRetryableError`.
    non_retryable_errors: tuple[type[BaseException], ...] = ()

    @abstractmethod
    def register(self, task: TaskDef, runner: Runner) -> Any:
        """Make ``task`` runnable; return the engine's own task object (or None)."""

    @abstractmethod
    async def dispatch(self, task: TaskDef | str, envelope: Envelope) -> str | None:
        """Send the envelope to the task. Return a run id if cancelling needs one other than the
        signature key, else None."""

    @abstractmethod
    async def cancel(self, run_id: str) -> bool:
        """Stop a dispatched run (the signature key or the id ``dispatch`` returned)."""

    async def start(self, services: EngineServices) -> None:
        """Called once when the client starts, with what engines may use of mageflow's own."""

    async def stop(self) -> None:
        """Called once when the client closes; running work should end by then."""

    async def join(self) -> None:
        """Wait until no work this engine runs in the calling process is left (in-process
        engine: every dispatched task and what it triggered); engines whose tasks run in worker
        processes have nothing to wait for here."""

    def running_keys(self) -> list[str]:
        """Signature keys of the runs in progress in this process (their leases are extended
        by the core's heartbeat)."""
        return []

    def stop_local(self, key: str) -> bool:
        """Stop the run of ``key`` in this process, if there is one (the heartbeat saw it was
        canceled or interrupted); True when one was stopped."""
        return False

    def holds(self, key: str) -> bool:
        """True when this process already has a delivery of ``key`` (running or waiting for a
        slot), so recovery need not send it again."""
        return key in self.running_keys()

    def leftovers(self) -> list[tuple[str, Envelope]]:
        """Deliveries this process took and did not finish when its event loop ended (an
        in-process engine's work in flight at exit); empty for engines whose broker keeps them."""
        return []

    def reset(self) -> None:
        """Forget every run (their event loop is gone) before the client starts again."""

    def worker(self, client: Any, *args: Any, **kwargs: Any) -> Any:
        """The engine's worker object for ``client``'s tasks (``Mageflow.worker`` calls this)."""
        raise ConfigurationError(
            f"{type(self).__name__} runs tasks in the calling process and has no workers"
        )
