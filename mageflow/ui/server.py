"""Running the viewer under uvicorn, with a shutdown that does not wait on open streams."""

from __future__ import annotations

import socket

import uvicorn
from starlette.applications import Starlette

from mageflow.ui.hub import Hub

#: Seconds uvicorn waits for open responses at shutdown before it cancels them. Streams end
#: by themselves within one interval; this bounds anything else.
GRACE = 5


class UiServer(uvicorn.Server):
    """A uvicorn server that first tells the app's event streams to end: uvicorn waits for
    every open response before it stops, and a stream would otherwise never end."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.hub.stop_streams()
        await super().shutdown(sockets)


def make_server(app: Starlette, log_level: str = "warning") -> UiServer:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        loop="asyncio",
        http="h11",
        ws="none",
        proxy_headers=False,  # the viewer is reached directly, not through a trusted proxy
        server_header=False,
        timeout_graceful_shutdown=GRACE,
    )
    return UiServer(config, app.state.hub)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (``port`` 0 picks a free one); OSError if it cannot
    be bound. Binding here, not in uvicorn, makes a port in use one clear error."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
