"""The viewer's HTTP app: a JSON API over :mod:`mageflow.inspection`, a status event stream,
and the page.

Routes (all JSON under ``/api``, the same JSON as the command line's ``--json``)::

    GET  /api/workflows?status=&task=&limit=     the rows of ``mageflow ls --json``
    GET  /api/workflows/{key}?traceback=1        the tree of ``mageflow tree --json``
    POST /api/workflows/{key}/{action}           suspend | resume | interrupt | cancel
    GET  /api/workers                            ``mageflow workers --json``
    GET  /api/events?key=                        server-sent status events (see events.py)
    GET  /                                       the page; /static/ its script and style

Errors are ``{"error": <type>, "message": <text>}`` with 404 for a key that is unknown or of
another namespace, 409 for a transition the status does not allow, 400 for a bad action or
filter, 503 when Redis does not answer.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from functools import partial
from pathlib import Path
from typing import Any

from redis import exceptions as redis_errors
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mageflow.config import MageflowConfig
from mageflow.errors import (
    ConfigurationError,
    InvalidArgumentError,
    InvalidTransitionError,
    InvalidValueError,
    MageflowError,
    NotARecordError,
    RedisUnavailableError,
    SignatureNotFoundError,
    UnknownActionError,
)
from mageflow.inspection import (
    WorkflowFilter,
    list_workflows,
    open_store,
    operate,
    statuses,
    workers,
    workflow_tree,
)
from mageflow.store.schema import Control
from mageflow.ui.events import EventStream, error_data, feed, row_statuses
from mageflow.ui.guard import Guard
from mageflow.ui.hub import Hub, StoreFactory

STATIC = Path(__file__).parent / "static"
ACTIONS = tuple(
    c.value for c in (Control.SUSPEND, Control.RESUME, Control.INTERRUPT, Control.CANCEL)
)
#: A list is re-read twice a second per open page: keep one read bounded.
MAX_LIMIT = 1000
HTTP_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (SignatureNotFoundError, 404),
    (NotARecordError, 404),
    (InvalidTransitionError, 409),  # TaskAlreadyRunningError too
    (InvalidValueError, 400),  # UnknownActionError too
    (InvalidArgumentError, 400),
    (RedisUnavailableError, 503),
    (redis_errors.ConnectionError, 503),
    (redis_errors.TimeoutError, 503),
)

__all__ = ["create_app"]


def create_app(
    store_factory: StoreFactory | None = None,
    *,
    url: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    allowed_hosts: Collection[str] | None = None,
    interval: float = 0.5,
    keepalive: float = 15.0,
) -> Starlette:
    """The viewer as an ASGI app, on ``store_factory`` or else on Redis at ``url`` for
    ``namespace``. With a ``token`` every API request needs ``Authorization: Bearer <token>``;
    with ``allowed_hosts`` a request whose Host header names another host is refused."""
    if store_factory is None:
        if url is None:
            raise ConfigurationError("create_app needs a store_factory or a Redis url")
        store_factory = partial(open_store, url, namespace or MageflowConfig().namespace)
    hub = Hub(store_factory, interval, keepalive)
    routes = [
        Route("/", page),
        Route("/api/workflows", list_route),
        Route("/api/workflows/{key:path}/{action}", control_route, methods=["POST"]),
        Route("/api/workflows/{key:path}", tree_route),
        Route("/api/workers", workers_route),
        Route("/api/events", events_route),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=token or None, allowed_hosts=allowed_hosts)],
        exception_handlers={exc: on_error for exc, _ in HTTP_STATUS} | {MageflowError: on_error},
        lifespan=hub.lifespan,
    )
    app.state.hub = hub
    return app


class Json(JSONResponse):
    """JSON as the command line prints it (``default=str`` for anything not JSON-native)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=str, ensure_ascii=False).encode()


def on_error(request: Request, exc: Exception) -> Response:
    code = next((c for kind, c in HTTP_STATUS if isinstance(exc, kind)), 500)
    return Json(error_data(exc), status_code=code)


def hub_of(request: Request) -> Hub:
    hub = request.app.state.hub
    assert isinstance(hub, Hub)
    return hub


def flag(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true", "yes", "on"}


def workflow_filter(params: QueryParams) -> WorkflowFilter:
    """The list filter from query parameters; an empty parameter means no filter."""
    raw = params.get("limit") or "50"
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidValueError("limit", raw, "a whole number of at least 1") from None
    if limit > MAX_LIMIT:
        raise InvalidValueError("limit", limit, f"at most {MAX_LIMIT}")
    return WorkflowFilter(
        status=params.get("status") or None, task=params.get("task") or None, limit=limit
    )


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def list_route(request: Request) -> Response:
    wanted = workflow_filter(request.query_params)
    store = await hub_of(request).store()
    return Json(await list_workflows(store, wanted))


async def tree_route(request: Request) -> Response:
    traceback = flag(request.query_params.get("traceback"))
    store = await hub_of(request).store()
    return Json(await workflow_tree(store, request.path_params["key"], traceback))


async def control_route(request: Request) -> Response:
    key, action = request.path_params["key"], request.path_params["action"]
    if action not in ACTIONS:  # before any read, so a bad action is a 400 whatever the key
        raise UnknownActionError(action, list(ACTIONS))
    store = await hub_of(request).store()
    return Json({"key": key, "status": await operate(store, key, action)})


async def workers_route(request: Request) -> Response:
    return Json(await workers(await hub_of(request).store()))


async def events_route(request: Request) -> Response:
    """The event stream of one workflow (``?key=``, and ``traceback=1``) or of the list (the
    list's filters). The first read happens here, so an unknown key is a plain 404."""
    hub, params = hub_of(request), request.query_params
    store = await hub.store()
    key = params.get("key")
    if key:
        read_tree = partial(workflow_tree, store, key, flag(params.get("traceback")))
        return EventStream(hub, feed(hub, read_tree, await read_tree(), "tree", statuses))
    read_list = partial(list_workflows, store, workflow_filter(params))
    return EventStream(hub, feed(hub, read_list, await read_list(), "list", row_statuses))
