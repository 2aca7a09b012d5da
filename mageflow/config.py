"""Client configuration."""

from __future__ import annotations

from pydantic import BaseModel, Field


class KindTTL(BaseModel):
    """TTL overrides (seconds) for one kind of signature; None keeps the general value."""

    active_ttl: float | None = Field(default=None, gt=0)
    done_ttl: float | None = Field(default=None, gt=0)


class TTLConfig(BaseModel):
    """How long (seconds) workflow state stays in Redis.

    ``active_ttl`` is refreshed on every transition of a signature (and on its heartbeats), so a
    workflow that makes progress never expires mid-run; ``done_ttl`` starts when a signature
    reaches a terminal status, and then applies to everything under it that will never run.
    ``task``, ``chain`` and ``swarm`` override both for one kind.
    """

    active_ttl: float = Field(default=24 * 3600, gt=0)
    done_ttl: float = Field(default=24 * 3600, gt=0)
    task: KindTTL = Field(default_factory=KindTTL)
    chain: KindTTL = Field(default_factory=KindTTL)
    swarm: KindTTL = Field(default_factory=KindTTL)

    def milliseconds(self, phase: str) -> str:
        """``"task,chain,swarm"`` TTLs in ms for 'active' or 'done' (the Lua scripts' format)."""
        general = self.active_ttl if phase == "active" else self.done_ttl
        parts = []
        for kind in (self.task, self.chain, self.swarm):
            value = kind.active_ttl if phase == "active" else kind.done_ttl
            parts.append(str(int((value or general) * 1000)))
        return ",".join(parts)


class SwarmConfig(BaseModel):
    """Limits of one swarm.

    ``max_concurrency``: members running at one instant, on any engine. ``stop_after_n_failures``:
    after this many failed members the swarm fails and stops (None: failures never fail it).
    ``max_task_allowed``: adding more members than this is an error (None: no limit).
    """

    max_concurrency: int = Field(default=30, gt=0)
    stop_after_n_failures: int | None = Field(default=None, gt=0)
    max_task_allowed: int | None = Field(default=None, gt=0)


class MageflowConfig(BaseModel):
    """Settings of one :class:`~mageflow.Mageflow` client.

    ``namespace`` prefixes every Redis key, so two apps can share one Redis. ``pass_context`` hands
    the engine's context to every task as its second argument (a task can also ask for it alone).
    """

    namespace: str = "mageflow"
    ttl: TTLConfig = Field(default_factory=TTLConfig)
    pass_context: bool = False
    data_dir: str | None = (
        None  # embedded Redis data folder; default $MAGEFLOW_DATA_DIR or .mageflow
    )
    #: A running task whose process has not renewed its lease for this long is taken over by
    #: another delivery; a queued message that no receiver claimed for this long is sent again.
    #: Heartbeats renew leases every third of it.
    lease_seconds: float = Field(default=30.0, gt=0)
    #: In-process engine: at interpreter exit, how long the client may spend finishing the work
    #: the ended event loop cut off (callbacks of a script that returned without close()). What
    #: is not done by then is finished by the next start. 0 leaves it all to the next start.
    finish_at_exit_seconds: float = Field(default=30.0, ge=0)
