"""The ``mageflow`` command line: the demo's facts, the typer commands, the installed script."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from pydantic import BaseModel
from rich.console import Console
from typer.testing import CliRunner

from mageflow import Mageflow, __version__
from mageflow.cli import app
from mageflow.demo import run_demo
from mageflow.store.embedded import EmbeddedRedis

runner = CliRunner()


async def test_run_demo_reports_what_ran(redis_url: str, sync_redis: redis.Redis) -> None:
    out = io.StringIO()
    report = await run_demo(redis_url, None, n_tasks=30, console=Console(file=out, width=120))

    receipt = {"order_id": "A-100", "total": 60.0}
    assert report.order_results["A-100"] == receipt
    assert report.success_received == [{"receipt": receipt, "channel": "email"}]
    assert report.order_results["B-200"].startswith("ValueError: invalid amount -5.0")
    (failure,) = report.error_received
    assert (failure["order_id"], failure["amount"]) == ("B-200", -5.0)
    assert failure["error"]["type"] == "ValueError"
    assert failure["error"]["message"] == "invalid amount -5.0 for order B-200"
    assert failure["error"]["task_name"] == "process-order"

    summary = {"stored": 10, "checksum": sum(x * x for x in range(1, 11))}
    assert report.chain_result == summary
    assert report.chain_callback_received == [summary]

    squares = [i * i for i in range(30)]
    assert report.swarm_size == 30
    assert report.swarm_results == squares
    assert report.swarm_callback_received == [squares]
    assert report.swarm_elapsed > 0

    assert report.map_result == "Delhi"
    assert sorted(r["city"] for r in report.map_readings) == ["Cairo", "Delhi", "Lima", "Oslo"]

    assert report.keys_left == 0
    assert list(sync_redis.scan_iter(f"{report.namespace}:*", count=1000)) == []
    text = out.getvalue()
    for line in ("1. Signatures with callbacks", "chain result", "30/30", "hottest", "0 keys left"):
        assert line in text


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"mageflow {__version__}"


def test_demo_command(redis_url: str, sync_redis: redis.Redis) -> None:
    result = runner.invoke(app, ["demo", "--redis-url", redis_url, "--tasks", "20"])
    assert result.exit_code == 0, result.output
    for line in (
        "1. Signatures with callbacks",
        "send-receipt (done)",
        "refund-order (done)",
        "ValueError",
        "chain result: {'stored': 10, 'checksum': 385}",
        "3. A swarm of 20 tasks",
        "20 values, in order",
        "0 keys left",
    ):
        assert line in result.output
    found = re.search(r"namespace (demo-[0-9a-f]+)", result.output)
    assert found is not None
    assert list(sync_redis.scan_iter(f"{found[1]}:*", count=1000)) == []


def test_demo_reports_an_unreachable_redis() -> None:
    result = runner.invoke(app, ["demo", "--redis-url", "redis://127.0.0.1:1/0", "--tasks", "5"])
    assert result.exit_code == 1
    assert "error:" in result.output


class Payment(BaseModel):
    amount: int


class Audit(BaseModel):
    results: int


async def test_show_prints_a_signature(mf: Mageflow, redis_url: str) -> None:
    @mf.task(name="charge")
    async def charge(msg: Payment) -> int:
        return msg.amount * 2

    @mf.task(name="audit")
    async def audit(msg: Audit) -> None:
        return None

    callback = await mf.sign("audit")
    sig = await mf.sign("charge", success_callbacks=[callback], amount=21)
    assert await sig.aio_run() == 42
    await mf.engine.join()  # type: ignore[attr-defined]

    result = await asyncio.to_thread(
        runner.invoke, app, ["show", sig.key, "--redis-url", redis_url]
    )
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    for part in ("kind │ task", "task │ charge", "status │ done", '{"amount": 21}', "│ 42 │"):
        assert part in flat
    assert callback.key in result.output.replace("\n", "").replace(" ", "").replace("│", "")

    chain = await mf.chain([await mf.sign("charge"), await mf.sign("charge")])
    result = await asyncio.to_thread(
        runner.invoke, app, ["show", chain.key, "--redis-url", redis_url]
    )
    assert result.exit_code == 0, result.output
    assert "steps (2)" in result.output
    assert "pending" in result.output


@pytest.mark.parametrize("key", ["mftest-x:sig:{nope}:nope", "bad namespace!:sig:{x}:y"])
def test_show_unknown_key(redis_url: str, key: str) -> None:
    result = runner.invoke(app, ["show", key, "--redis-url", redis_url])
    assert result.exit_code == 1
    assert "error:" in result.output


def test_console_script_with_embedded_redis(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("mageflow")
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(MAGEFLOW_DATA_DIR=str(data_dir), COLUMNS="200")
    proc = subprocess.run(
        [str(script), "demo", "--tasks", "20"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    socket_path = EmbeddedRedis(data_dir).socket_path
    assert f"Redis at unix://{socket_path}" in " ".join(proc.stdout.split())
    assert "0 keys left" in proc.stdout
    assert (data_dir / "redis.log").exists()  # the embedded server really ran
    if socket_path.exists():
        client = redis.Redis(unix_socket_path=str(socket_path), socket_connect_timeout=1)
        with pytest.raises(redis.ConnectionError):
            client.ping()
        client.close()


async def test_dead_letters_lists_and_purges(mf: Mageflow, redis_url: str, namespace: str) -> None:
    from mageflow.poison import poison
    from mageflow.store.schema import PoisonReason

    await mf.start()
    error = poison(PoisonReason.UNKNOWN_TASK, "no task '<b>x</b>' here", "<b>x</b>", "")
    await mf.runtime.dead.bury(error, b'{"sig": 1}', "test-stream")
    args = ["dead-letters", "--redis-url", redis_url, "--namespace", namespace]

    listed = await asyncio.to_thread(runner.invoke, app, [*args, "--json"])
    assert listed.exit_code == 0, listed.output
    [letter] = json.loads(listed.output)
    assert (letter["reason"], letter["task"], letter["source"]) == (
        "unknown_task",
        "<b>x</b>",
        "test-stream",
    )
    assert letter["data"] == '{"sig": 1}' and letter["at"] > 0

    table = await asyncio.to_thread(runner.invoke, app, [*args, "--purge"])
    assert table.exit_code == 0, table.output
    assert "unknown_task" in table.output and "purged 1 dead letter(s)" in table.output
    assert await mf.dead_letters() == []


def test_dead_letters_with_a_bad_namespace_is_one_clear_line(redis_url: str) -> None:
    result = runner.invoke(app, ["dead-letters", "--redis-url", redis_url, "--namespace", "a b"])
    assert result.exit_code == 1
    assert result.output.startswith("error:") and "namespace" in result.output
    assert "Traceback" not in result.output
