"""What ``mageflow worker`` settles before it serves: loading the app, checking the options and
the broker once (so a configuration that cannot work fails fast, in one line, instead of
restarting children forever), and setting up logging once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from taskiq import AsyncBroker

from mageflow.engines.base import Engine
from mageflow.engines.taskiq import TaskiqEngine
from mageflow.errors import ConfigurationError
from mageflow.workspace import Workspace

log = logging.getLogger("mageflow.worker")

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
BROKER_CHECK_SECONDS = 5.0  # how long the check at start waits for the broker to answer
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Ports of the broker URL schemes the check at start knows, when the URL names none.
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379}


def is_client(obj: Any) -> bool:
    # Duck-typed: this module sits below the client and does not import it.
    return isinstance(getattr(obj, "engine", None), Engine) and callable(
        getattr(obj, "worker", None)
    )


def load_app(app: str) -> Workspace:
    """The client named by ``"module:attribute"`` (an attribute may also be a factory).

    Every way this can fail is a ConfigurationError with a one-line message; the original
    exception is its cause (its traceback is logged at DEBUG by the worker)."""
    module_name, sep, attr = app.partition(":")
    if not (sep and module_name and attr):
        raise ConfigurationError(f"expected module:attribute, like myapp.tasks:mf, not {app!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = _import(module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigurationError(f"{module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if callable(obj) and not is_client(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigurationError(f"calling {app} raised {one_line(exc)}") from exc
    if not is_client(obj):
        raise ConfigurationError(f"{app} is a {type(obj).__name__}, not a Mageflow client")
    if not isinstance(obj.engine, TaskiqEngine):
        raise ConfigurationError(
            f"{app} does not run on Taskiq (engine {type(obj.engine).__name__}); build it as "
            "Mageflow(broker, redis) with a taskiq broker"
        )
    return obj  # type: ignore[no-any-return]


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ConfigurationError(
                f"no module named {module_name!r} (run from the directory that holds it, or add "
                "that directory to PYTHONPATH)"
            ) from exc
        raise ConfigurationError(f"importing {module_name} raised {one_line(exc)}") from exc
    except Exception as exc:  # the app's own code failed at import: report it, do not crash
        raise ConfigurationError(f"importing {module_name} raised {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (a message may span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- checks at start ------------------------------------------------------------------------------


def parse_level(level: str) -> int:
    """The number of a logging level name (any case); ConfigurationError for anything else."""
    number = logging.getLevelNamesMapping().get(level.strip().upper())
    if number is None:
        raise ConfigurationError(
            f"--log-level {level!r} is not a logging level; use one of {', '.join(LOG_LEVELS)}"
        )
    return number


def check_options(
    workers: int, concurrency: int, shutdown_timeout: float, log_level: str | None
) -> None:
    """ConfigurationError for the first option out of range."""
    if workers < 1:
        raise ConfigurationError(f"--workers must be 1 or more, not {workers}")
    if concurrency < 1:
        raise ConfigurationError(f"--concurrency must be 1 or more, not {concurrency}")
    if not (math.isfinite(shutdown_timeout) and shutdown_timeout >= 0):
        raise ConfigurationError(
            f"--shutdown-timeout must be 0 or more seconds, not {shutdown_timeout:g}"
        )
    if log_level is not None:
        parse_level(log_level)


async def check_broker(broker: AsyncBroker, timeout: float = BROKER_CHECK_SECONDS) -> None:
    """ConfigurationError when ``broker`` does not answer within ``timeout`` seconds.

    Brokers on a redis-py pool (taskiq-redis's) get a PING; brokers with a URL of a known
    scheme (AioPikaBroker's ``amqp://``) a TCP connection. Others are not checked: their
    workers find out at start, and a failed start exits with code 2 all the same.
    """
    probe = _broker_probe(broker, timeout)
    if probe is None:
        log.debug("no start-up check for a %s; starting the workers", type(broker).__name__)
        return
    where, check = probe
    what = f"the broker ({type(broker).__name__} at {where})"
    try:
        await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        raise ConfigurationError(f"cannot reach {what}: no answer within {timeout:g} s") from None
    except Exception as exc:
        raise ConfigurationError(f"cannot reach {what}: {one_line(exc)}") from exc


def _broker_probe(
    broker: AsyncBroker, timeout: float
) -> tuple[str, Callable[[], Awaitable[None]]] | None:
    """Where the broker is (with no credentials) and how to check it answers; None if unknown."""
    pool = getattr(broker, "connection_pool", None)
    if isinstance(pool, ConnectionPool):
        kwargs = pool.connection_kwargs
        where = (
            kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        )
        return str(where), lambda: _ping_redis(pool, timeout)
    url = getattr(broker, "url", None)
    if url is None:
        return None
    parts = urlsplit(str(url))
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if not (parts.hostname and port):
        return None
    host = parts.hostname
    return f"{parts.scheme}://{host}:{port}", lambda: _connect(host, port)


async def _ping_redis(pool: ConnectionPool, timeout: float) -> None:
    # A pool of its own: the broker's pool stays untouched for the workers (and their loops).
    # One try, bounded by the timeout: redis-py's default retries would only delay the answer.
    kwargs = {
        **pool.connection_kwargs,
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    probe = Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))
    try:
        await probe.ping()
    finally:
        await probe.aclose(close_connection_pool=True)


async def _connect(host: str, port: int) -> None:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


_logging_configured = False


def configure_logging(level: str | None = None) -> None:
    """Set up logging for a worker process, once per process.

    An app that configured logging at import (the root logger has handlers) keeps its
    configuration: a level given here then only applies to the ``mageflow`` loggers. Otherwise
    log lines go to stderr, at ``level`` (default INFO)."""
    global _logging_configured
    if _logging_configured:
        return
    number = parse_level(level) if level is not None else None
    _logging_configured = True
    root = logging.getLogger()
    if root.handlers:
        if number is not None:
            logging.getLogger("mageflow").setLevel(number)
        return
    logging.basicConfig(level=logging.INFO if number is None else number, format=LOG_FORMAT)
    if root.getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("taskiq.receiver").setLevel(logging.WARNING)  # a line per message
