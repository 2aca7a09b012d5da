"""Helpers of the web viewer's tests: a real uvicorn server in a thread, tasks held on gates
the test opens, and a bounded wait.

A served viewer runs in a thread with its own event loop, as it would in its own process, so
the test's loop keeps running the in-process app's tasks while the test reads from the server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used, so a missing ui extra is a skip, not an import error
    from starlette.applications import Starlette

    from mageflow.ui.hub import Hub
    from mageflow.ui.server import UiServer


async def until(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for ``check()`` (sync or async) to be true, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.05)


@dataclass
class Served:
    url: str
    app: Starlette
    server: UiServer
    thread: threading.Thread

    @property
    def hub(self) -> Hub:
        from mageflow.ui.hub import Hub

        hub = self.app.state.hub
        assert isinstance(hub, Hub)
        return hub

    def stop(self, timeout: float = 15.0) -> float:
        """Stop the server as Ctrl+C would; the seconds it took. Fails if it did not stop."""
        began = time.monotonic()
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the server did not stop within {timeout} s"
        return time.monotonic() - began


@contextmanager
def serving(app: Starlette) -> Iterator[Served]:
    """``app`` under uvicorn on a free loopback port, in a thread; stopped on exit."""
    from mageflow.ui.server import listening_socket, make_server

    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    served = Served(f"http://127.0.0.1:{port}", app, server, thread)
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() < deadline, "the server did not start within 15 s"
            time.sleep(0.02)
        yield served
    finally:
        if thread.is_alive():
            served.stop()
        sock.close()
