"""Operating figures: how long listing workflows takes with 10,000 of them stored.

``.venv/bin/python -m bench.operate_figures [--workflows 10000] [--repeat 5]``

A private ``redis-server`` (loopback, free port, no persistence, stopped by pid) gets
``--workflows`` launched root workflows from the in-process engine: a task that succeeds, and
one in a thousand a task that fails (so a ``--status failed`` filter reads the whole index and
still finds fewer than a page). Then, each ``--repeat`` times, median reported:

- ``mageflow ls`` as a user runs it: the installed console script in a fresh process (Python
  start-up and imports included), the default page of 50, and ``--status failed --limit 50``
  (reads every index entry), and ``--limit 10000 --json`` (every row printed);
- the same reads in-process (``list_workflows``), which is what the web viewer's API does per
  request;
- ``GET /api/workflows`` through the web viewer's ASGI app, when ``mageflow[ui]`` is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.servers import RedisServer
from mageflow import Mageflow, MageflowConfig
from mageflow.inspection import WorkflowFilter, list_workflows, open_store

NAMESPACE = "opbench"


async def fill(url: str, count: int) -> None:
    mf = Mageflow(None, url, config=MageflowConfig(namespace=NAMESPACE))

    @mf.task(name="ok")
    async def ok(msg: dict[str, Any]) -> int:
        return 1

    @mf.task(name="bad")
    async def bad(msg: dict[str, Any]) -> int:
        raise ValueError("planned failure")

    async with mf:
        for start in range(0, count, 200):
            batch = [
                await mf.sign("bad" if i % 1000 == 999 else "ok") for i in range(start, start + 200)
            ]
            await asyncio.gather(*(sig.aio_run_no_wait() for sig in batch))
        await mf.engine.join()  # type: ignore[attr-defined]


def timed(fn: Callable[[], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def cli_run(url: str, *args: str) -> Callable[[], Any]:
    script = shutil.which("mageflow", path=str(Path(sys.executable).parent)) or "mageflow"
    argv = [script, "ls", "--redis-url", url, "--namespace", NAMESPACE, *args]

    def run() -> None:
        out = subprocess.run(argv, capture_output=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr

    return run


def in_process(url: str, wanted: WorkflowFilter) -> Callable[[], Any]:
    async def read() -> int:
        async with open_store(url, NAMESPACE) as store:
            return len(await list_workflows(store, wanted))

    return lambda: asyncio.run(read())


def api_run(url: str, query: str) -> Callable[[], Any] | None:
    try:
        from starlette.testclient import TestClient

        from mageflow.ui.app import create_app
    except ImportError:
        return None
    # The test client sends Host "testserver": allow it as the one name besides loopback.
    app = create_app(url=url, namespace=NAMESPACE, allowed_hosts=["testserver"])
    client = TestClient(app).__enter__()

    def get() -> None:
        response = client.get(f"/api/workflows{query}")
        assert response.status_code == 200, response.text

    return get


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer("operate", Path(tmp))
        server.start()
        try:
            url = server.url()
            began = time.perf_counter()
            asyncio.run(fill(url, args.workflows))
            stored = server.client.zcard(f"{NAMESPACE}:workflows")
            print(
                f"{stored} workflows stored in {time.perf_counter() - began:.1f} s "
                f"(redis-server {server.version()}, pid {os.getpid()})"
            )
            cases: list[tuple[str, Callable[[], Any] | None]] = [
                ("mageflow ls (default 50)", cli_run(url)),
                ("mageflow ls --status failed", cli_run(url, "--status", "failed")),
                ("mageflow ls --limit 10000 --json", cli_run(url, "--limit", "10000", "--json")),
                ("list_workflows (50)", in_process(url, WorkflowFilter())),
                ("list_workflows status=failed", in_process(url, WorkflowFilter("failed"))),
                ("list_workflows (10000)", in_process(url, WorkflowFilter(limit=10_000))),
                ("GET /api/workflows", api_run(url, "")),
                ("GET /api/workflows?status=failed", api_run(url, "?status=failed")),
                ("GET /api/workflows?limit=1000", api_run(url, "?limit=1000")),
            ]
            for name, fn in cases:
                if fn is None:
                    print(f"{name:40s} skipped: mageflow[ui] is not installed")
                    continue
                print(
                    f"{name:40s} {timed(fn, args.repeat) * 1000:8.1f} ms (median of {args.repeat})"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
