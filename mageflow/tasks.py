"""Task definitions: what ``@mf.task(...)`` records about a function."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mageflow.errors import ConfigurationError
from mageflow.models.message import error_field, return_field
from mageflow.scheduling import RateLimit, due_args, longest_wait
from mageflow.store.records import message_dict

if TYPE_CHECKING:
    from mageflow.signature import Signature
    from mageflow.workspace import Workspace

TaskFunction = Callable[..., Any]


@dataclass(slots=True)
class TaskDef:
    """A registered task. ``input_validator`` is the pydantic model its message is validated with
    (None: the task receives a plain dict)."""

    name: str
    fn: TaskFunction
    input_validator: type[BaseModel] | None = None
    retries: int = 0
    timeout: float | None = None
    with_context: bool = False
    durable: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    rate_limit: RateLimit | None = None
    # meta() of the settings it was computed from: a swarm's build asks once per member, and
    # reading the model's fields each time was a few % of the client's CPU (bench/analysis.md).
    _meta: tuple[tuple[Any, ...], dict[str, Any]] | None = field(
        default=None, repr=False, compare=False
    )

    def meta(self) -> dict[str, Any]:
        """What producers in other processes need to know about this task (the registry entry);
        computed once per settings."""
        model = self.input_validator
        settings = (model, self.retries, self.timeout, self.durable, self.rate_limit)
        if self._meta is not None and self._meta[0] == settings:
            return dict(self._meta[1])  # (a copy: the cached one stays as computed)
        meta = {
            "rv": return_field(model),
            "err": error_field(model),
            "model": model_path(model) if model else None,
            "retries": self.retries,
            "timeout": self.timeout,
            "durable": self.durable,
            # Signatures carry the limit (scheduling.signed_fields), signed here or elsewhere.
            "rate": self.rate_limit.stored if self.rate_limit else None,
            "rate_key": self.rate_limit.key if self.rate_limit else None,
        }
        self._meta = (settings, meta)
        return dict(meta)

    def meta_json(self) -> str:
        return json.dumps(self.meta())


def model_path(model: type[BaseModel]) -> str:
    return f"{model.__module__}:{model.__qualname__}"


_models: dict[str, type[BaseModel]] = {}


def remember_model(model: type[BaseModel]) -> str:
    """Keep a model reachable by its path in this process (models defined in functions can't be
    imported by path, but the process that signed with them can still use them)."""
    path = model_path(model)
    _models[path] = model
    return path


def resolve_model(path: str) -> type[BaseModel]:
    """The model a stored ``model`` field names. Data in Redis never chooses code to import: the
    model must be one this process signed with, or a class of a module already imported here
    (the worker's app module, say). A forged record can at most pick another loaded model."""
    if path in _models:
        return _models[path]
    module_name, _, qualname = path.partition(":")
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split(".") if obj is not None else ():
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise ConfigurationError(
            f"message model {path!r} is not loaded on this worker (mageflow never imports a "
            "module a stored record names). Define the model at module level in a module the "
            "worker imports, such as the one with its tasks."
        )
    _models[path] = obj
    return obj


def infer_validator(fn: TaskFunction) -> type[BaseModel] | None:
    """The model from the first parameter's annotation, when it is a pydantic model."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return None
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception:  # unresolvable forward references: fall back to no model
        return None
    ann = hints.get(params[0].name)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def wants_context(fn: TaskFunction) -> bool:
    """A task asks for the engine's context by taking a second positional parameter."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(params) >= 2


class MageflowTask:
    """What ``@mf.task`` returns: still callable like the function, plus ways to run it as a task.

    ``await task(msg)`` calls the function directly (handy in unit tests);
    ``await task.aio_run(msg)`` runs it through the engine and returns its result;
    ``await mf.sign(task)`` makes a signature.

    Any other attribute is the engine's own task object's (``engine_task``): taskiq's ``kiq``,
    Hatchet's ``to_proto``, ``schedule`` or ``aio_mock_run``..., so code written against the
    engine's object keeps working. Names defined here (``name``, ``aio_run``,
    ``aio_run_no_wait``, ``sign``) keep mageflow's meaning; ``engine_task`` has the engine's.
    """

    def __init__(self, definition: TaskDef, client: Workspace, engine_task: Any = None) -> None:
        self.definition = definition
        self.client = client
        self.engine_task = engine_task
        self.__name__ = definition.name
        self.__doc__ = definition.fn.__doc__
        self.__wrapped__ = definition.fn

    @property
    def name(self) -> str:
        return self.definition.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.definition.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<mageflow task {self.name!r}>"

    def __getattr__(self, attr: str) -> Any:
        # Only called for names this class lacks. Dunders are never forwarded, and state is read
        # from __dict__: copy and pickle probe a bare instance (no __init__ run) for hooks such as
        # __setstate__, which must fail plainly instead of recursing through this method.
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        state = self.__dict__
        engine_task = state.get("engine_task")
        name = state["definition"].name if "definition" in state else "?"
        if engine_task is None:
            raise AttributeError(f"mageflow task {name!r} has no attribute {attr!r}")
        try:
            return getattr(engine_task, attr)
        except AttributeError:
            raise AttributeError(
                f"mageflow task {name!r} has no attribute {attr!r}, nor has its engine task "
                f"({type(engine_task).__name__})"
            ) from None

    def __dir__(self) -> list[str]:
        engine_task = self.__dict__.get("engine_task")
        extra = dir(engine_task) if engine_task is not None else []
        return sorted(set(super().__dir__()) | set(extra))

    async def sign(self, **kwargs: Any) -> Signature:
        return await self.client.sign(self, **kwargs)

    async def aio_run(
        self,
        msg: BaseModel | dict[str, Any] | None = None,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run once through the engine as a fresh signature (mageflow's retries, callbacks given
        as ``kwargs``, state in Redis) and return the result; ``delay`` or ``at`` make it wait
        first (docs/scheduling.md). The engine's own method of this name (Hatchet's) is
        ``engine_task.aio_run``."""
        data = message_dict(msg)  # a bad message is refused before a signature is stored
        due_args(delay, at, longest_wait(self.client.config.ttl, "task"))  # likewise
        sig = await self.client.sign(self, **kwargs)
        return await sig.aio_run(data, delay=delay, at=at)

    async def aio_run_no_wait(
        self,
        msg: BaseModel | dict[str, Any] | None = None,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        **kwargs: Any,
    ) -> Signature:
        """Start a fresh signature and return it without waiting (see :meth:`aio_run`)."""
        data = message_dict(msg)
        due_args(delay, at, longest_wait(self.client.config.ttl, "task"))
        sig = await self.client.sign(self, **kwargs)
        await sig.aio_run_no_wait(data, delay=delay, at=at)
        return sig
