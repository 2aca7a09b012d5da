"""The pytest plugin, as a user meets it: a user's own suite, run by pytest's ``pytester``.

The user's app is built for a Taskiq broker that is not running (its Redis URL points at a
closed port) and names a Redis that is not running either; the plugin runs its workflows
in-process on the test Redis, in a namespace that is gone afterwards. The suite mixes checks that
must pass with ones that must fail, and the failures must say what was dispatched instead.
"""

from __future__ import annotations

import pytest
import redis

pytest_plugins = ["pytester"]

CLOSED = "redis://127.0.0.1:1/0"  # nothing listens on port 1

APP = f'''
from pydantic import BaseModel
from taskiq_redis import RedisStreamBroker

import mageflow
from mageflow import Mageflow, ReturnValue, SwarmConfig

broker = RedisStreamBroker("{CLOSED}", queue_name="shop")
mf = Mageflow(broker, "{CLOSED}")


class Order(BaseModel):
    order_id: int
    cents: int


class Receipt(BaseModel):
    total: ReturnValue[int]
    channel: str


class Item(BaseModel):
    sku: str


class Packed(BaseModel):
    boxes: ReturnValue[list[str]]


@mf.task(name="charge")
async def charge(msg: Order) -> int:
    return msg.cents


@mf.task(name="send-receipt")
async def send_receipt(msg: Receipt) -> str:
    return f"{{msg.total}} by {{msg.channel}}"


@mf.task(name="pack")
async def pack(msg: Item) -> str:
    return msg.sku.upper()


@mf.task(name="summarize")
async def summarize(msg: Packed) -> str:
    return "+".join(msg.boxes)


async def checkout(order_id: int, cents: int) -> object:
    receipt = await mageflow.sign("send-receipt", channel="email")
    return await mageflow.sign(charge, success_callbacks=[receipt], order_id=order_id, cents=cents)


async def packing(skus: list[str]) -> object:
    members = [await mageflow.sign(pack, sku=s) for s in skus]
    config = SwarmConfig(max_concurrency=2)
    swarm = await mageflow.swarm(members, config=config, is_swarm_closed=True)
    return await mageflow.chain([swarm, await mageflow.sign(summarize)])
'''

SUITE = """
import pytest

from shop.tasks import checkout, packing


async def test_checkout_charges_and_sends_the_receipt(mageflow_client):
    sig = await checkout(7, 1250)
    assert await sig.aio_run() == 1250
    mageflow_client.assert_task_dispatched("charge", {"order_id": 7})
    mageflow_client.assert_task_dispatched(
        "send-receipt", {"total": 1250, "channel": "email"}, exact=True
    )
    assert [d.task_name for d in mageflow_client.dispatches] == ["charge", "send-receipt"]


async def test_packing_chain_and_swarm(mageflow_client):
    flow = await packing(["a", "b", "c"])
    assert await flow.aio_run() == "A+B+C"
    mageflow_client.assert_chain_dispatched(["swarm", "summarize"])
    mageflow_client.assert_swarm_dispatched(["pack", "pack", "pack"])
    mageflow_client.assert_task_dispatched("pack", {"sku": "b"})
    mageflow_client.clear()
    mageflow_client.assert_nothing_dispatched()


@pytest.mark.mageflow(execute=False)
async def test_records_without_running(mageflow_client):
    sig = await checkout(8, 99)
    await sig.aio_run_no_wait()
    mageflow_client.assert_task_dispatched("charge", {"order_id": 8, "cents": 99}, exact=True)
    assert [d.task_name for d in mageflow_client.dispatches] == ["charge"]  # it never ran


async def test_FAILS_wrong_input(mageflow_client):
    await (await checkout(9, 10)).aio_run()
    mageflow_client.assert_task_dispatched("charge", {"order_id": 10})


async def test_FAILS_not_dispatched(mageflow_client):
    await (await checkout(9, 10)).aio_run()
    mageflow_client.assert_task_dispatched("refund")


async def test_FAILS_exact(mageflow_client):
    await (await checkout(9, 10)).aio_run()
    mageflow_client.assert_task_dispatched("charge", {"order_id": 9}, exact=True)


async def test_FAILS_wrong_chain(mageflow_client):
    await (await packing(["x"])).aio_run()
    mageflow_client.assert_chain_dispatched(["summarize", "swarm"])


async def test_FAILS_nothing(mageflow_client):
    await (await checkout(1, 1)).aio_run_no_wait()
    mageflow_client.assert_nothing_dispatched()
"""


def _user_suite(pytester: pytest.Pytester, settings: str) -> None:
    pytester.mkpydir("shop")
    (pytester.path / "shop" / "tasks.py").write_text(APP)
    pytester.makepyprojecttoml(
        f"""
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"

{settings}
"""
    )


@pytest.mark.timeout(180)
def test_a_users_suite_passes_and_fails_where_it_should(
    pytester: pytest.Pytester,
    redis_url: str,
    sync_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)  # the plugin then uses the test Redis
    _user_suite(pytester, '[tool.mageflow.testing]\nclient = "shop.tasks:mf"')
    pytester.makepyfile(test_shop=SUITE)
    before = set(sync_redis.scan_iter("mfpytest-*", count=1000))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=150)

    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("failed")) == (3, 5), result.stdout.str()
    failed = [line for line in result.outlines if line.startswith("FAILED")]
    assert all("test_FAILS_" in line for line in failed), failed
    text = result.stdout.str()
    assert "task 'charge' was not dispatched with {'order_id': 10}" in text
    assert "Dispatched instead, in order:" in text
    assert "task 'charge' {'order_id': 9, 'cents': 10}" in text
    assert "task 'refund' was not dispatched" in text
    assert "no chain of ['summarize', 'swarm'] was dispatched" in text
    assert "chain 'chain' of [swarm, summarize]" in text
    assert "expected no dispatch" in text
    # Each test's namespace is gone afterwards.
    left = set(sync_redis.scan_iter("mfpytest-*", count=1000)) - before  # (others may expire)
    assert left == set(), sorted(left)[:5]


@pytest.mark.timeout(120)
def test_the_client_named_by_a_marker_and_a_clear_error_without_one(
    pytester: pytest.Pytester, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    _user_suite(pytester, "")
    pytester.makepyfile(
        test_marker="""
import pytest

pytestmark = pytest.mark.mageflow(client="shop.tasks:mf")


async def test_runs(mageflow_client):
    assert sorted(mageflow_client.tasks) == ["charge", "pack", "send-receipt", "summarize"]
    sig = await mageflow_client.sign("pack", sku="q")
    assert await sig.aio_run() == "Q"
""",
        test_unnamed="""
async def test_no_client(mageflow_client):
    pass
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=100)
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("errors")) == (1, 1), result.stdout.str()
    assert "mageflow_client needs your client" in result.stdout.str()


def test_without_redis_url_the_plugin_starts_a_private_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    _user_suite(pytester, '[tool.mageflow.testing]\nclient = "shop.tasks:mf"')
    pytester.makepyfile(
        test_private="""
import os

async def test_private(mageflow_client):
    assert "REDIS_URL" not in os.environ
    assert mageflow_client.redis_url.startswith("unix://")
    sig = await mageflow_client.sign("pack", sku="z")
    assert await sig.aio_run() == "Z"
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=100)
    assert result.parseoutcomes().get("passed") == 1, result.stdout.str()
