"""``mageflow ui``: serve the web viewer for one namespace.

starlette and uvicorn are imported inside the command, so ``mageflow --help`` and the other
commands neither load them nor need them installed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Annotated

import typer

from mageflow.cli_common import (
    DataDir,
    Namespace,
    RedisUrl,
    console,
    existing_redis,
    fail,
    namespace_or_default,
    stop_embedded,
)
from mageflow.errors import MageflowError
from mageflow.inspection import open_store

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MISSING = "the web viewer needs starlette and uvicorn: pip install 'mageflow[ui]'"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine: localhost, 127.0.0.0/8, ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to a public address


async def _reachable(url: str, namespace: str) -> None:
    async with open_store(url, namespace):
        return


def ui(
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on. Other than loopback needs --token."),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free).")
    ] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="MAGEFLOW_UI_TOKEN",
            show_default=False,
            help="Require this bearer token on every API request (default $MAGEFLOW_UI_TOKEN).",
        ),
    ] = None,
    redis_url: RedisUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
) -> None:
    """Serve a live web viewer: workflows, their trees and statuses, and the four controls.

    Open the printed address in a browser. With a token, open it with #token=<token> at the
    end, or enter the token when the page asks.
    """
    if not token and not is_loopback(host):
        raise fail(
            f"refusing to serve on {host} without a token: anyone who can reach it could "
            "cancel workflows. Pass --token (or set MAGEFLOW_UI_TOKEN), or bind to 127.0.0.1."
        )
    try:
        from mageflow.ui.app import create_app
        from mageflow.ui.server import make_server
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in {"starlette", "uvicorn"}:
            raise
        raise fail(MISSING) from None
    ns = namespace_or_default(namespace)
    url, sock = _open(redis_url, data_dir, ns, host, port)
    # Without a token, only loopback names may reach the app (DNS rebinding, see guard.py).
    allowed = None if token else LOOPBACK_NAMES | {host.strip("[]").lower()}
    app = create_app(url=url, namespace=ns, token=token, allowed_hosts=allowed)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    note = "  (token required)" if token else ""
    address = f"http://{shown}:{sock.getsockname()[1]}/"
    console.print(
        f"mageflow ui: namespace {ns!r} at {address}{note}", markup=False, highlight=False
    )
    try:
        make_server(app).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # Ctrl+C is how a server is stopped: not an error
    finally:
        sock.close()
        stop_embedded(redis_url, data_dir)


def _open(
    redis_url: str | None, data_dir: str | None, namespace: str, host: str, port: int
) -> tuple[str, socket.socket]:
    """The Redis URL (checked to answer) and the bound socket; a failure is one line."""
    from mageflow.ui.server import listening_socket

    try:
        url = existing_redis(redis_url, data_dir)
        asyncio.run(_reachable(url, namespace))
        return url, listening_socket(host, port)
    except MageflowError as exc:
        stop_embedded(redis_url, data_dir)
        raise fail(exc) from None
    except OSError as exc:
        stop_embedded(redis_url, data_dir)
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
