"""What every ``mageflow`` command shares: the console, common options, one-line errors, and
how an operating command finds its Redis.

An operating command (``ls``, ``tree``, ``watch``, ``workers``, ``suspend`` ...) reads what a
running app wrote, so it never starts an empty Redis of its own: with no ``--redis-url`` and no
``$REDIS_URL`` it uses the embedded server of the data dir only when that dir holds one.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mageflow.config import MageflowConfig
from mageflow.errors import ConfigurationError
from mageflow.store.embedded import embedded_default

console = Console()
#: Errors go to stderr, so ``--json`` output stays parseable.
err_console = Console(stderr=True)

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="Redis to use. Default: $REDIS_URL, else the embedded server of the data dir.",
    ),
]
DataDir = Annotated[
    str | None,
    typer.Option(
        "--data-dir", help="Embedded Redis data dir (default $MAGEFLOW_DATA_DIR or .mageflow)."
    ),
]
Namespace = Annotated[
    str | None,
    typer.Option(
        "--namespace", help="Key namespace. Default: $MAGEFLOW_NAMESPACE, else 'mageflow'."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(exc: BaseException | str) -> typer.Exit:
    """Print one clear line for a user's mistake (never a traceback); exit code 1."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def stop_embedded(redis_url: str | None, data_dir: str | None) -> None:
    """Shut down the embedded server this process started (at exit it would stop anyway)."""
    if redis_url is None and not os.environ.get("REDIS_URL"):
        embedded_default(data_dir).stop()


def namespace_or_default(namespace: str | None) -> str:
    return namespace or os.environ.get("MAGEFLOW_NAMESPACE") or MageflowConfig().namespace


def existing_redis(redis_url: str | None, data_dir: str | None) -> str:
    """The Redis URL an operating command reads: ``--redis-url``, ``$REDIS_URL``, else the
    embedded server of the data dir if the dir holds one (started if it is not running, so its
    saved state is read). ConfigurationError when there is none, rather than an empty server."""
    url = redis_url or os.environ.get("REDIS_URL")
    if url:
        return url
    server = embedded_default(data_dir)
    if not ((server.data_dir / "appendonlydir").is_dir() or server.socket_path.exists()):
        raise ConfigurationError(
            f"no Redis to read: no --redis-url, no $REDIS_URL, and no embedded server under "
            f"{server.data_dir} (pass --redis-url, or --data-dir of the app that ran the "
            "workflows)"
        )
    return server.start()
