"""Client configuration."""

from __future__ import annotations

import re
from typing import Any, Self

from pydantic import BaseModel, Field, ValidationError, field_validator

from mageflow.errors import InvalidSettingError

_NS_RE = re.compile(r"[A-Za-z0-9_.\-:]+")
NAMESPACE_RULE = "use one or more letters, digits, '_', '.', '-' or ':' (nothing else)"


def namespace_problem(namespace: object) -> str | None:
    """Why ``namespace`` cannot prefix Redis keys, or None when it can."""
    if not isinstance(namespace, str):
        return f"must be a string, not {type(namespace).__name__}"
    if _NS_RE.fullmatch(namespace) is None:
        return NAMESPACE_RULE
    return None


#: The shortest TTL mageflow accepts, in seconds: a record must outlive the script that writes it.
MIN_SECONDS = 1
#: The shortest lease, in seconds. Heartbeats run every third of it, so below this a busy event
#: loop misses renewals and healthy runs are taken over.
MIN_LEASE_SECONDS = 0.1


class _Settings(BaseModel):
    """A config model whose invalid input raises :class:`~mageflow.errors.InvalidSettingError`
    (a ConfigurationError, and a ValueError) naming the field and the rule it breaks."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _setting_error(type(self).__name__, exc) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise _setting_error(cls.__name__, exc) from None

    @classmethod
    def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as exc:
            raise _setting_error(cls.__name__, exc) from None


def _setting_error(model: str, exc: ValidationError) -> InvalidSettingError:
    problems: list[tuple[str, Any, str]] = []
    for err in exc.errors():
        where = ".".join(str(part) for part in (model, *err["loc"]))
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, InvalidSettingError):  # a nested config model's own check
            for setting, value, rule in inner.problems:
                problems.append((f"{where}.{setting.partition('.')[2] or setting}", value, rule))
            continue
        rule = str(inner) if err["type"] == "value_error" and inner is not None else err["msg"]
        if "ge" in ctx and str(err["loc"][-1]).endswith(("ttl", "seconds")):
            rule += f" (a duration in seconds; the minimum is {ctx['ge']:g} second)"
        problems.append((where, err.get("input"), rule))
    setting, value, rule = problems[0]
    return InvalidSettingError(setting, value, rule, problems)


class KindTTL(_Settings):
    """TTL overrides (seconds) for one kind of signature; None keeps the general value."""

    active_ttl: float | None = Field(default=None, ge=MIN_SECONDS)
    done_ttl: float | None = Field(default=None, ge=MIN_SECONDS)


class TTLConfig(_Settings):
    """How long (seconds) workflow state stays in Redis.

    ``active_ttl`` is refreshed on every transition of a signature (and on its heartbeats), so a
    workflow that makes progress never expires mid-run; ``done_ttl`` starts when a signature
    reaches a terminal status, and then applies to everything under it that will never run.
    ``task``, ``chain`` and ``swarm`` override both for one kind.
    """

    active_ttl: float = Field(default=24 * 3600, ge=MIN_SECONDS)
    done_ttl: float = Field(default=24 * 3600, ge=MIN_SECONDS)
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


class SwarmConfig(_Settings):
    """Limits of one swarm.

    ``max_concurrency``: members running at one instant, on any engine. ``stop_after_n_failures``:
    after this many failed members the swarm fails and stops (None: failures never fail it).
    ``max_task_allowed``: adding more members than this is an error (None: no limit).
    """

    max_concurrency: int = Field(default=30, gt=0)
    stop_after_n_failures: int | None = Field(default=None, gt=0)
    max_task_allowed: int | None = Field(default=None, gt=0)


class MageflowConfig(_Settings):
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
    lease_seconds: float = Field(default=30.0, ge=MIN_LEASE_SECONDS)
    #: A message a durable engine (Taskiq, Hatchet) accepted and no worker claimed for this long
    #: is sent again: the broker lost it, or Redis lost the claim in a crash. The claim makes the
    #: extra copy harmless; raise it if your broker backlogs run longer (like Celery's
    #: visibility timeout, each resend adds one message to the backlog).
    accepted_grace_seconds: float = Field(default=3600.0, ge=MIN_SECONDS)
    #: A caller waiting for a result (aio_run, aresult) keeps trying an unreachable Redis for
    #: this long before it raises RedisUnavailableError; the workflow runs on meanwhile.
    redis_outage_seconds: float = Field(default=30.0, ge=0)
    #: In-process engine: at interpreter exit, how long the client may spend finishing the work
    #: the ended event loop cut off (callbacks of a script that returned without close()). What
    #: is not done by then is finished by the next start. 0 leaves it all to the next start.
    finish_at_exit_seconds: float = Field(default=30.0, ge=0)
    #: How many shards the namespace's state is split into (see docs/cluster.md). None: 1 on a
    #: single Redis, 16 on a Redis Cluster. Every process of a namespace must use the same count:
    #: recovery looks only at the shards it knows.
    shards: int | None = Field(default=None, ge=1, le=1024)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        problem = namespace_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value
