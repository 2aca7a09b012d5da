"""Operating workflows from the command line: the workflow index, ls, tree, watch, the lifecycle
controls and workers, against a real Redis and a running in-process app.

The commands run in a thread (they start their own event loop, as the installed script does)
while the app runs in the test's loop, so a control from the command line reaches a live app.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from gated import Gates, register_gated_tasks
from typer.testing import CliRunner, Result

from mageflow import Mageflow, MageflowConfig, SwarmConfig
from mageflow.cli import app

runner = CliRunner()


@pytest.fixture
def config(namespace: str) -> MageflowConfig:
    # A short lease: the app's keeper sends what a command-line resume queued within ~0.3 s.
    return MageflowConfig(namespace=namespace, lease_seconds=1.0)


@pytest.fixture
async def gates(mf: Mageflow) -> AsyncIterator[Gates]:
    gates = register_gated_tasks(mf)
    yield gates
    gates.open.set()


async def cli(*args: str) -> Result:
    """``mageflow ARGS`` in a thread; the test's loop keeps running the app meanwhile."""
    # A wide terminal, so rich never folds a key across two lines of a table.
    return await asyncio.to_thread(runner.invoke, app, list(args), env={"COLUMNS": "200"})


async def cli_json(*args: str) -> Any:
    result = await cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# -- the index and ls ------------------------------------------------------------------------------


async def test_ls_lists_launched_roots_newest_first(
    mf: Mageflow, gates: Gates, redis_url: str, namespace: str
) -> None:
    task = await mf.sign("work", tag="solo", error_callbacks=[await mf.sign("report")])
    assert await task.aio_run() == "solo"
    chain = await mf.chain([await mf.sign("work", tag="a"), await mf.sign("work", tag="b")])
    assert await chain.aio_run() == "b"
    members = [await mf.sign("work", tag=f"m{i}") for i in range(3)]
    swarm = await mf.swarm(members, is_swarm_closed=True)
    await swarm.aio_run()
    await mf.sign("work", tag="never launched")

    rows = await cli_json("ls", "--redis-url", redis_url, "--namespace", namespace)
    assert [(r["key"], r["kind"], r["status"]) for r in rows] == [
        (swarm.key, "swarm", "done"),
        (chain.key, "chain", "done"),
        (task.key, "task", "done"),
    ]
    assert rows[2]["name"] == rows[2]["task"] == "work"
    assert rows[0]["created_at"] >= rows[1]["created_at"] >= rows[2]["created_at"]
    assert all(r["created_at"].endswith("Z") and r["finished_at"] for r in rows)


async def test_ls_filters_by_status_and_task_and_limits(
    mf: Mageflow, gates: Gates, redis_url: str, namespace: str
) -> None:
    ok = await mf.sign("work", tag="ok")
    await ok.aio_run()
    bad = await mf.sign("work", tag="bad", fail=True)
    with pytest.raises(Exception, match="bad bad"):
        await bad.aio_run()
    pipeline = await mf.chain([await mf.sign("work", tag="x")], name="nightly")
    await pipeline.aio_run()
    base = ["ls", "--redis-url", redis_url, "--namespace", namespace]

    failed = await cli_json(*base, "--status", "failed")
    assert [r["key"] for r in failed] == [bad.key]
    named = await cli_json(*base, "--task", "nightly")
    assert [r["key"] for r in named] == [pipeline.key]
    assert [r["key"] for r in await cli_json(*base, "--task", "work")] == [bad.key, ok.key]
    assert [r["key"] for r in await cli_json(*base, "--limit", "1")] == [pipeline.key]

    table = await cli(*base, "--status", "failed")
    assert table.exit_code == 0 and bad.key.split(":")[-1][:8] in table.output
    wrong = await cli(*base, "--status", "broken")
    assert wrong.exit_code == 1 and wrong.output.startswith("error:")
    assert "broken" in wrong.output and "Traceback" not in wrong.output


async def test_an_expired_workflow_leaves_the_index(
    mf: Mageflow, gates: Gates, redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    first = await mf.sign("work", tag="1")
    await first.aio_run()
    await asyncio.sleep(0.01)  # creation times are in ms: keep the two apart
    second = await mf.sign("work", tag="2")
    await second.aio_run()
    shards = mf.keys.all_shards

    def entries(index: str) -> list[str]:
        rows = [
            r for s in shards for r in sync_redis.zrange(getattr(s, index), 0, -1, withscores=True)
        ]
        return [key for key, _score in sorted(rows, key=lambda r: r[1])]

    assert entries("workflows") == []  # an end moves a workflow to the ended index
    assert entries("ended") == [first.key, second.key]
    for index in (mf.keys.shard(first.key).ended, mf.keys.shard(first.key).expiry):
        assert sync_redis.pttl(index) > 0
    sync_redis.delete(first.key)  # as its TTL would

    rows = await cli_json("ls", "--redis-url", redis_url, "--namespace", namespace)
    assert [r["key"] for r in rows] == [second.key]
    assert entries("ended") == [second.key]
    assert entries("expiry") == [second.key]


async def test_running_and_ended_workflows_list_together_newest_first(
    mf: Mageflow, gates: Gates, redis_url: str, namespace: str
) -> None:
    done = await mf.sign("work", tag="done")
    await done.aio_run()
    await asyncio.sleep(0.01)  # creation times are in ms: keep the three apart
    held = await mf.sign("work", tag="held", hold=True)
    await held.aio_run_no_wait()
    await asyncio.sleep(0.01)
    later = await mf.sign("work", tag="later")
    await later.aio_run()
    rows = await cli_json("ls", "--redis-url", redis_url, "--namespace", namespace)
    assert [(r["key"], r["status"]) for r in rows] == [
        (later.key, "done"),
        (held.key, "active"),
        (done.key, "done"),
    ]


# -- tree ------------------------------------------------------------------------------------------


async def test_tree_shows_steps_members_counts_callbacks_and_errors(
    mf: Mageflow, gates: Gates, redis_url: str
) -> None:
    members = [await mf.sign("work", tag="m0"), await mf.sign("work", tag="m1", fail=True)]
    swarm = await mf.swarm(members, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
    first = await mf.sign("work", tag="first")
    chain = await mf.chain([first, swarm], success_callbacks=[await mf.sign("report")])
    await chain.aio_run()

    tree = await cli_json("tree", chain.key, "--redis-url", redis_url)
    assert (tree["key"], tree["kind"], tree["status"]) == (chain.key, "chain", "done")
    step, group = tree["children"]
    assert (step["kind"], step["status"], step["result"], step["attempt"]) == (
        "task",
        "done",
        "first",
        0,
    )
    assert group["kind"] == "swarm"
    assert group["swarm"] | {"max_concurrency": 1} == {
        "done": 1,
        "failed": 1,
        "canceled": 0,
        "running": 0,
        "queued": 0,
        "total": 2,
        "closed": True,
        "max_concurrency": 1,
    }
    ok, failed = group["children"]
    assert ok["result"] == "m0" and failed["status"] == "failed"
    assert failed["error"] == {"type": "ValueError", "message": "bad m1", "task": "work"}
    assert failed["kwargs"] == {"tag": "m1", "fail": True}
    [callback] = tree["callbacks"]["success"]
    assert (callback["task"], callback["status"]) == ("report", "done")

    with_tb = await cli_json("tree", chain.key, "--redis-url", redis_url, "--traceback")
    assert "ValueError: bad m1" in with_tb["children"][1]["children"][1]["error"]["traceback"]

    shown = await cli("tree", chain.key, "--redis-url", redis_url)
    assert shown.exit_code == 0
    for text in ("chain", "swarm", "1 done, 1 failed", "ValueError: bad m1", "on success"):
        assert text in shown.output, text


async def test_markup_in_user_data_is_shown_as_written(mf: Mageflow, redis_url: str) -> None:
    @mf.task(name="[bold red]x[/] <script>")
    async def odd(msg: dict[str, Any]) -> str:
        return "[blink]y[/blink]"

    sig = await mf.sign("[bold red]x[/] <script>")
    await sig.aio_run()
    shown = await cli("tree", sig.key, "--redis-url", redis_url)
    assert "[bold red]x[/] <script>" in shown.output
    assert "[blink]y[/blink]" in shown.output


# -- controls --------------------------------------------------------------------------------------


async def test_suspend_resume_and_cancel_from_the_command_line(
    mf: Mageflow, gates: Gates, redis_url: str
) -> None:
    members = [await mf.sign("work", tag=f"m{i}", hold=True) for i in range(4)]
    swarm = await mf.swarm(members, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True)
    await swarm.aio_run_no_wait()
    await until(lambda: _true(len(gates.started) == 2))

    paused = await cli("suspend", swarm.key, "--redis-url", redis_url)
    assert paused.exit_code == 0, paused.output
    assert paused.output.strip() == f"{swarm.key}: suspended"
    gates.open.set()  # the two running members finish; nothing new starts while suspended
    await until(lambda: _status_is(mf, members[1].key, "done"))
    await asyncio.sleep(0.5)
    assert len(gates.started) == 2

    resumed = await cli("resume", swarm.key, "--redis-url", redis_url)
    assert resumed.output.strip() == f"{swarm.key}: active", resumed.output
    assert await swarm.aresult(timeout=20) == ["m0", "m1", "m2", "m3"]

    again = await cli("resume", swarm.key, "--redis-url", redis_url)
    assert again.exit_code == 1 and again.output.startswith("error:")
    assert "Traceback" not in again.output

    held = await mf.sign("work", tag="held", hold=True)
    gates.open.clear()
    await held.aio_run_no_wait()
    await until(lambda: _true("held" in gates.started))
    canceled = await cli("cancel", held.key, "--redis-url", redis_url)
    assert canceled.output.strip() == f"{held.key}: canceled"
    # The app's heartbeat sees the canceled status and stops the run in its process.
    await until(lambda: _true(held.key not in mf.engine.running_keys()))


async def _true(value: bool) -> bool:
    return value


async def _status_is(mf: Mageflow, key: str, status: str) -> bool:
    return (await mf.load_signature(key)).status.value == status


async def test_watch_follows_a_workflow_until_it_ends(
    mf: Mageflow, gates: Gates, redis_url: str
) -> None:
    members = [await mf.sign("work", tag=f"m{i}", hold=True) for i in range(3)]
    swarm = await mf.swarm(members, is_swarm_closed=True)
    await swarm.aio_run_no_wait()
    await until(lambda: _true(len(gates.started) == 3))
    args = ["watch", swarm.key, "--redis-url", redis_url, "--interval", "0.1", "--timeout", "20"]
    watching = asyncio.create_task(cli(*args))
    await asyncio.sleep(0.5)
    assert not watching.done()
    gates.open.set()
    result = await asyncio.wait_for(watching, 30)
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("ended: done")

    short = await cli(
        "watch", (await mf.sign("work")).key, "--redis-url", redis_url, "--timeout", "0.3"
    )
    assert short.exit_code == 1 and "did not end within 0.3 s" in short.output


# -- workers ---------------------------------------------------------------------------------------


async def test_workers_lists_the_processes_with_tasks(
    mf: Mageflow, gates: Gates, redis_url: str, namespace: str
) -> None:
    await mf.start()
    rows = await cli_json("workers", "--redis-url", redis_url, "--namespace", namespace)
    me = f"{socket.gethostname()}:{os.getpid()}"
    [row] = [r for r in rows if r["worker"] == me]
    assert row["tasks"] == ["report", "work"] and row["engine"] == "inproc"
    assert row["seconds_since_heartbeat"] < 5
    await mf.close()
    rows = await cli_json("workers", "--redis-url", redis_url, "--namespace", namespace)
    assert me not in [r["worker"] for r in rows]


# -- mistakes are one line -------------------------------------------------------------------------


async def test_bad_keys_and_unreachable_redis_are_one_line(
    mf: Mageflow, redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    missing = f"{namespace}:sig:{{abc}}:abc"
    not_record = f"{namespace}:sig:{{abc}}:def"
    sync_redis.set(not_record, "x", ex=60)
    cases = [
        (["tree", missing, "--redis-url", redis_url], "no signature"),
        (["tree", not_record, "--redis-url", redis_url], "not"),
        (["tree", "just-a-word", "--redis-url", redis_url], "not"),
        (["cancel", missing, "--redis-url", redis_url], "no signature"),
        (["ls", "--redis-url", "redis://127.0.0.1:1"], "127.0.0.1:1"),
    ]
    for args, words in cases:
        result = await cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("error:") and words in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert "Traceback" not in result.output


def test_no_redis_is_said_instead_of_starting_an_empty_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    data = tmp_path / "nothing-here"
    result = subprocess.run(
        [sys.executable, "-m", "mageflow", "ls", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: no Redis to read"), result.stderr
    assert not data.exists()


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["ls", "--bogus"], 2, "No such option: --bogus"),
        (["ls", "--limit", "many"], 2, "--limit"),
        (["tree"], 2, "Missing argument"),
    ],
)
def test_usage_mistakes_are_one_line(args: list[str], code: int, words: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mageflow", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == code
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], lines


def test_python_m_and_version_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mageflow", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.startswith("mageflow ")
