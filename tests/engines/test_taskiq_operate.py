"""Operating a Taskiq workflow from the command line: the CLI has no broker of the app, yet it
finds a workflow, suspends, resumes and cancels it while real worker processes run it.

A resume from the command line commits the transition and marks what it queued as due; the
recovery round of a worker (or any client) sends it. A cancel reaches the worker running the
task through the cancel channel.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from test_taskiq import Cluster, clusters, registered, until  # noqa: F401 (a fixture)
from typer.testing import CliRunner, Result

from mageflow import SwarmConfig
from mageflow.cli import app

runner = CliRunner()


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def cli_json(*args: str) -> Any:
    result = await cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.timeout(120)
async def test_find_suspend_resume_and_cancel_a_taskiq_workflow(
    clusters: Callable[..., Cluster],  # noqa: F811 (the fixture imported above)
    redis_url: str,
) -> None:
    cluster = clusters("stream", lease=1.0)  # the worker's recovery runs every ~0.3 s
    worker = cluster.start(concurrency=10)
    await cluster.ready(worker)
    ns = ["--redis-url", redis_url, "--namespace", cluster.namespace]
    async with cluster.producer() as mf:
        await registered(cluster, mf)
        members = [await mf.sign("member", i=i, sleep=0.8) for i in range(6)]
        swarm = await mf.swarm(
            members,
            config=SwarmConfig(max_concurrency=2),
            is_swarm_closed=True,
            task_name="nightly",
        )
        await swarm.aio_run_no_wait({})
        await until(lambda: len(cluster.records("member", 0)) == 1, 30, "the first member")

        [row] = await cli_json("ls", *ns, "--status", "active")
        assert (row["key"], row["kind"], row["name"]) == (swarm.key, "swarm", "nightly")
        paused = await cli("suspend", swarm.key, "--redis-url", redis_url)
        assert paused.output.strip() == f"{swarm.key}: suspended", paused.output

        def ran() -> int:
            return sum(len(cluster.records("member", i)) for i in range(6))

        await asyncio.sleep(2.5)  # the running members finish; nothing new starts
        stopped_at = ran()
        assert 2 <= stopped_at < 6
        await asyncio.sleep(1.0)
        assert ran() == stopped_at
        tree = await cli_json("tree", swarm.key, "--redis-url", redis_url)
        assert tree["status"] == "suspended" and tree["swarm"]["done"] == stopped_at

        resumed = await cli("resume", swarm.key, "--redis-url", redis_url)
        assert resumed.output.strip() == f"{swarm.key}: active", resumed.output
        assert await swarm.aresult(timeout=45) == [i * i for i in range(6)]
        assert [len(cluster.records("member", i)) for i in range(6)] == [1] * 6

        slow = await mf.sign("slow", tag="cli", seconds=30)
        await slow.aio_run_no_wait({})
        await until(lambda: cluster.sync.exists(cluster.key("started", "cli")), 30, "slow")
        canceled = await cli("cancel", slow.key, "--redis-url", redis_url)
        assert canceled.output.strip() == f"{slow.key}: canceled", canceled.output
        await until(lambda: "canceled on request" in cluster.log(worker), 10, "the worker stop")

        rows = await cli_json("workers", *ns)
        assert any(r["engine"] == "taskiq" and "member" in r["tasks"] for r in rows), rows
    assert not cluster.sync.exists(cluster.key("finished", "cli"))
    assert worker.poll() is None
