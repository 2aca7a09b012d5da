"""Live tests of the Hatchet engine against a real Hatchet server and a real worker process.

Skipped unless ``HATCHET_CLIENT_TOKEN`` is set and the server it points to answers. To run them,
start Hatchet (e.g. hatchet-lite), create an API token, then::

    HATCHET_CLIENT_TOKEN=... HATCHET_CLIENT_TLS_STRATEGY=none .venv/bin/pytest \
        tests/engines/test_hatchet_live.py

The worker (``hatchet_app.py``) runs in a subprocess under a fresh Hatchet namespace, so runs of
these tests do not meet other workers' tasks on a shared server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hatchet_sdk import ClientConfig, Hatchet

from mageflow import Mageflow, MageflowConfig, SignatureStatus, SwarmConfig, TaskFailedError

HERE = Path(__file__).parent
TASKS = {"live-double", "live-on-success", "live-fail", "live-on-error", "live-flaky"}
TASKS |= {"live-add-one", "live-square", "live-collect"}


def _server_problem() -> str | None:
    """Why the live tests cannot run here, or None when a Hatchet server answers."""
    if not os.environ.get("HATCHET_CLIENT_TOKEN"):
        return (
            "HATCHET_CLIENT_TOKEN is not set: these tests need a running Hatchet server and an "
            "API token for it (see docs/engines/hatchet.md); they were not run"
        )
    try:
        host_port = ClientConfig().host_port
    except Exception as exc:
        return f"HATCHET_CLIENT_TOKEN is set but unusable ({exc}); the live tests were not run"
    host, _, port = host_port.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        return (
            f"HATCHET_CLIENT_TOKEN is set but the Hatchet server at {host_port} is not "
            f"reachable ({exc}); the live tests were not run"
        )
    return None


_PROBLEM = _server_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")


@pytest.fixture(scope="module")
def live_names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"hatchet": f"mftest_{tag}", "mageflow": f"mflive-{tag}"}


@pytest.fixture(scope="module")
def worker(redis_url: str, live_names: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "MAGEFLOW_NAMESPACE": live_names["mageflow"],
        "HATCHET_CLIENT_NAMESPACE": live_names["hatchet"],
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-m", "hatchet_app"], env=env, cwd=HERE.parent.parent)
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
async def producer(
    worker: subprocess.Popen[bytes],
    redis_url: str,
    live_names: dict[str, str],
    sync_redis: redis.Redis,
) -> AsyncIterator[Mageflow]:
    """A client in the test process that signs the worker's tasks by name."""
    hatchet = Hatchet(config=ClientConfig(namespace=live_names["hatchet"]))
    client = Mageflow(hatchet, redis_url, config=MageflowConfig(namespace=live_names["mageflow"]))
    await client.start()
    deadline = time.monotonic() + 90
    while not set(client._remote_meta) >= TASKS:
        assert worker.poll() is None, f"the worker exited with {worker.returncode}"
        assert time.monotonic() < deadline, "the worker did not register its tasks in 90 s"
        await asyncio.sleep(0.5)
        await client.refresh_registry()
    yield client
    await client.close()


async def test_success_callback(producer: Mageflow) -> None:
    callback = await producer.sign("live-on-success", field_int=7)
    sig = await producer.sign("live-double", success_callbacks=[callback])
    assert await sig.aio_run({"x": 21}, timeout=60) == {"doubled": 42}
    assert await callback.aresult(timeout=60) == {"task_result": {"doubled": 42}, "field_int": 7}
    assert (await sig.aload())._record.get("run")  # the Hatchet run id was stored


async def test_error_callback_after_the_retries(producer: Mageflow) -> None:
    on_error = await producer.sign("live-on-error", label="failed")
    sig = await producer.sign("live-fail", error_callbacks=[on_error])
    with pytest.raises(TaskFailedError, match="attempt 2 of x=3"):
        await sig.aio_run({"x": 3}, timeout=120)
    got: Any = await on_error.aresult(timeout=60)
    assert got == {"x": 3, "label": "failed", "error": "attempt 2 of x=3"}


async def test_retries_use_hatchets_retry_count(producer: Mageflow) -> None:
    sig = await producer.sign("live-flaky")
    assert await sig.aio_run({"x": 1}, timeout=120) == {"attempt": 2}


async def test_chain(producer: Mageflow) -> None:
    chain = await producer.chain(["live-add-one", "live-add-one", "live-add-one"])
    assert await chain.aio_run({"x": 10}, timeout=120) == 13


async def test_swarm(producer: Mageflow) -> None:
    collect = await producer.sign("live-collect")
    members = [await producer.sign("live-square", x=i) for i in range(5)]
    swarm = await producer.swarm(
        members,
        success_callbacks=[collect],
        config=SwarmConfig(max_concurrency=2),
        is_swarm_closed=True,
    )
    assert await swarm.aio_run({}, timeout=120) == [0, 1, 4, 9, 16]
    assert await collect.aresult(timeout=60) == {"values": [0, 1, 4, 9, 16]}
    assert await swarm.astatus() is SignatureStatus.DONE
