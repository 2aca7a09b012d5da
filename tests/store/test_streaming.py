"""The streams (mageflow/store/streaming.py) on a real Redis of its own: execution and answers
in call order, a forgotten script reloaded, a killed connection, cancelled callers; the packer's
bytes against redis-py's, and any command (XADD, XACK, GET, SET...) over a CommandStream.

The server is private (started here, stopped by pid): the tests flush its scripts and pause it,
which must not reach the shared test Redis. ``CLIENT PAUSE ... WRITE`` holds every script call
unanswered in the server (EVALSHA counts as a write), so the tests know calls are in flight.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from mageflow import Mageflow, MageflowConfig, SwarmConfig
from mageflow.config import TTLConfig
from mageflow.store.batching import ScriptBatcher
from mageflow.store.embedded import find_redis_server
from mageflow.store.keys import KeySchema
from mageflow.store.redis_store import Store
from mageflow.store.schema import Kind
from mageflow.store.streaming import (
    CACHE_MAX_LEN,
    CACHE_SIZE,
    MAX_IN_FLIGHT,
    Packer,
    ScriptStream,
)

#: Counts its calls in KEYS[1] and answers (the count, ARGV[1]): the count is the position at
#: which Redis ran the call, ARGV[1] tells whose answer it is.
COUNT = "return {redis.call('INCR', KEYS[1]), ARGV[1]}"
NAME = "stream-test"  # the CLIENT SETNAME of the stream's pool, to find its connection


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("stream-redis")
    args = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(workdir), "--protected-mode", "no"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if redis.Redis(port=port, socket_connect_timeout=0.5).ping():
                    break
            except redis.RedisError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Rig:
    """A stream on its own client, a control client, and the script under test."""

    def __init__(self, url: str, window: int = MAX_IN_FLIGHT) -> None:
        self.client = aioredis.Redis.from_url(url, decode_responses=True, client_name=NAME)
        self.control = aioredis.Redis.from_url(url, decode_responses=True)
        self.reloads = 0
        self.stream = ScriptStream(self.client, self.reload, window)
        self.sha = ""
        self.key = f"stream-test:{time.monotonic_ns()}"

    async def reload(self) -> None:
        self.reloads += 1
        self.sha = await self.control.script_load(COUNT)

    async def call(self, tag: str) -> tuple[int, str]:
        count, echoed = await self.stream.call(self.sha, 1, [self.key, tag])
        return int(count), echoed

    async def stream_client(self) -> dict[str, Any]:
        """The server's CLIENT LIST entry of the stream's connection."""
        found = [
            c
            for c in await self.control.client_list()
            if c["name"] == NAME and c["cmd"] == "evalsha"
        ]
        assert len(found) == 1, found
        return found[0]

    async def until_held(self) -> None:
        """Wait until every call made is written (none left in the stream's queue) and the
        paused server holds the first of them."""
        await until_paused_with(self.stream_client, lambda: not self.stream._queue)


async def until_paused_with(
    stream_client: Callable[[], Awaitable[dict[str, Any]]], ready: Callable[[], bool]
) -> None:
    """Wait (10 s at most) until the paused server holds the stream's connection (its CLIENT
    LIST flag ``b``: postponed) and ``ready()``."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        entry = await stream_client()
        if "b" in entry["flags"] and ready():
            return
        assert asyncio.get_running_loop().time() < deadline, entry
        await asyncio.sleep(0.02)


@pytest.fixture
async def rig(server: str) -> AsyncIterator[Rig]:
    rig = Rig(server)
    await rig.reload()
    yield rig
    await rig.control.execute_command("CLIENT", "UNPAUSE")
    await rig.stream.aclose()
    await rig.client.aclose()
    await rig.control.delete(rig.key)
    await rig.control.aclose()


@pytest.mark.parametrize("window", [MAX_IN_FLIGHT, 7])
async def test_redis_runs_and_answers_calls_in_call_order(server: str, window: int) -> None:
    """Many callers, each making calls one after another, interleaved over loop turns (and
    with a small window, most of them waiting for room): each gets its own answer, and Redis
    ran the calls in exactly the order they were made."""
    rig = Rig(server, window)
    await rig.reload()
    made: list[str] = []

    async def caller(n: int) -> list[tuple[int, str]]:
        got = []
        for i in range(40):
            tag = f"{n}.{i}"
            made.append(tag)  # call() queues synchronously, before its first await
            got.append(await rig.call(tag))
            if i % 7 == n % 7:
                await asyncio.sleep(0)
        return got

    try:
        answers = await asyncio.gather(*(caller(n) for n in range(100)))
    finally:
        await rig.stream.aclose()
        await rig.client.aclose()
    position = {tag: i + 1 for i, tag in enumerate(made)}
    for n, got in enumerate(answers):
        assert [tag for _, tag in got] == [f"{n}.{i}" for i in range(40)]
        assert [count for count, _ in got] == [position[tag] for _, tag in got]
    assert len(made) == 4000
    assert int(await rig.control.get(rig.key)) == 4000
    await rig.control.delete(rig.key)
    await rig.control.aclose()


async def test_scripts_flushed_are_loaded_again_and_the_calls_sent_again(rig: Rig) -> None:
    assert await rig.call("before") == (1, "before")
    await rig.control.script_flush()
    tags = [f"t{i}" for i in range(300)]
    answers = await asyncio.gather(*(rig.call(tag) for tag in tags))
    assert [tag for _, tag in answers] == tags
    assert sorted(count for count, _ in answers) == list(range(2, 302))
    assert rig.reloads >= 2  # the fixture's load, and at least one after the flush


async def test_a_failing_reload_fails_the_calls_it_held(rig: Rig) -> None:
    await rig.call("open")

    async def broken() -> None:
        raise redis_errors.ConnectionError("no Redis")

    rig.stream._reload = broken  # type: ignore[method-assign]
    await rig.control.script_flush()
    results = await asyncio.gather(*(rig.call(f"t{i}") for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, redis_errors.ConnectionError) for r in results), results
    await rig.reload()
    assert (await rig.call("after"))[1] == "after"


async def test_a_killed_connection_fails_the_calls_in_flight_and_the_next_calls_work(
    rig: Rig,
) -> None:
    assert await rig.call("open") == (1, "open")
    victim = (await rig.stream_client())["id"]
    await rig.control.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    calls = [asyncio.create_task(rig.call(f"t{i}")) for i in range(20)]
    await rig.until_held()
    assert await rig.control.client_kill_filter(_id=victim) == 1
    await rig.control.execute_command("CLIENT", "UNPAUSE")
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, redis_errors.ConnectionError) for r in results), results
    assert await rig.control.get(rig.key) == "1"  # none of them ran
    tags = [f"after{i}" for i in range(50)]
    answers = await asyncio.gather(*(rig.call(tag) for tag in tags))
    assert answers == [(i + 2, tag) for i, tag in enumerate(tags)]
    assert (await rig.stream_client())["id"] != victim


async def test_a_connection_killed_while_idle_is_replaced_without_failing_a_call(
    rig: Rig,
) -> None:
    await rig.call("open")
    await rig.control.client_kill_filter(_id=(await rig.stream_client())["id"])
    await asyncio.sleep(0.1)  # the close reaches the client's socket
    assert await rig.call("after") == (2, "after")


async def test_cancelled_callers_do_not_shift_the_answers_of_the_others(rig: Rig) -> None:
    await rig.call("open")
    await rig.control.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    calls = [asyncio.create_task(rig.call(f"t{i}")) for i in range(30)]
    await rig.until_held()
    for task in calls[::3]:
        task.cancel()
    await rig.control.execute_command("CLIENT", "UNPAUSE")
    results = await asyncio.gather(*calls, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, asyncio.CancelledError)
        else:  # ran in call order, cancelled calls included: they had been sent
            assert result == (i + 2, f"t{i}")
    # The stream is still in step: later answers are the later calls'.
    answers = await asyncio.gather(*(rig.call(f"n{i}") for i in range(10)))
    assert answers == [(32 + i, f"n{i}") for i in range(10)]


async def test_cancelling_callers_at_random_points_keeps_every_other_answer_right(
    rig: Rig,
) -> None:
    async def caller(n: int) -> None:
        for i in range(20):
            tag = f"{n}.{i}"
            assert (await rig.call(tag))[1] == tag

    tasks = [asyncio.create_task(caller(n)) for n in range(60)]
    for k in range(30):
        await asyncio.sleep(0)
        tasks[2 * k].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is None for r in results[1::2]), results[1::2]


async def test_close_stops_every_task_and_later_calls_fail(rig: Rig) -> None:
    await rig.call("open")
    await rig.control.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    held = asyncio.create_task(rig.call("held"))
    await rig.until_held()
    await rig.stream.aclose()
    with pytest.raises(redis_errors.ConnectionError):
        await held
    assert asyncio.all_tasks() == {asyncio.current_task()}
    with pytest.raises(redis_errors.ConnectionError):
        await rig.call("late")


async def test_the_store_streams_on_a_single_redis_and_batches_on_a_small_pool(
    server: str,
) -> None:
    keys, ttl = KeySchema("stream-test", 1), TTLConfig()
    plain = aioredis.Redis.from_url(server, decode_responses=True)
    small = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(server, max_connections=2)
    )
    try:
        assert isinstance(Store(plain, keys, ttl)._scripts, ScriptStream)
        assert isinstance(Store(small, keys, ttl)._scripts, ScriptBatcher)
    finally:
        await plain.aclose()
        await small.aclose()


async def test_a_client_streams_a_swarm_and_leaves_no_task_behind_when_closed(server: str) -> None:
    """End to end on the in-process engine: a swarm runs on the stream, and close() stops the
    stream's writer and reader with everything else."""
    mf = Mageflow(None, server, config=MageflowConfig(namespace=f"stream-{time.monotonic_ns()}"))
    done = asyncio.Event()
    total: list[int] = []

    @mf.task(name="item")
    async def item(msg: dict[str, Any]) -> int:
        return int(msg["i"])

    @mf.task(name="sum_up")
    async def sum_up(msg: dict[str, Any]) -> None:
        total.append(sum(msg["results"]))
        done.set()

    async with mf:
        assert isinstance(mf.store._scripts, ScriptStream)
        async with mf.abounded_field():
            members = [await mf.sign("item", i=i) for i in range(300)]
            swarm = await mf.swarm(
                members,
                success_callbacks=[await mf.sign("sum_up")],
                config=SwarmConfig(max_concurrency=20),
                is_swarm_closed=True,
            )
        await swarm.aio_run_no_wait({})
        await asyncio.wait_for(done.wait(), 60)
    assert total == [sum(range(300))]
    assert asyncio.all_tasks() == {asyncio.current_task()}


# -- the packer ------------------------------------------------------------------------------

#: Commands with every kind of argument redis-py takes; each is packed twice (the second time
#: from the cache) and compared with what redis-py packs.
COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 8, "mf:outbox:{a1b}", "mf:leases:{a1b}", "86400000,86400000,86400000"),
    ("SET", "k", "v", "PX", 1500),
    ("XADD", b"stream", "*", "data", b"\x00\xff\r\n raw", "n", -17, "f", 0.1),
    ("HSET", "h", "unicode", "ünïcödé ✓ 日本語 🚀", "empty", "", "long", "x" * (CACHE_MAX_LEN + 1)),
    ("ZADD", "z", 1.5, "a", -0.0, "b", float("inf"), "c", 1e100, "d", 2**70, "e", 255, "f", 256),
    ("RPUSH", "l", bytearray(b"ba"), memoryview(b"mv"), memoryview(bytearray(b"writable"))),
    ("CONFIG GET", "maxmemory"),  # a name of two words: redis-py splits it, so must we
    (b"CLIENT LIST",),
    ("HSET", "e", "TASK", Kind.TASK, "task", Kind.SWARM),  # a StrEnum goes out as its value
]


def redis_py_packs(conn: Any, command: tuple[Any, ...]) -> bytes:
    return b"".join(conn.pack_command(*command))


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_the_packer_writes_the_bytes_redis_py_writes(encoding: str) -> None:
    conn = aioredis.ConnectionPool(encoding=encoding, encoding_errors="replace").make_connection()
    packer = Packer(encoding, "replace")
    for command in COMMANDS * 2:
        ours = packer.pack(*command)
        assert ours == redis_py_packs(conn, command), command
        # the same as redis-py's pure-Python packer too (used when hiredis is not installed)
        assert ours == b"".join(conn._pack_command_python(*command)), command


def test_the_packer_cache_stays_bounded_and_right_after_it_starts_afresh() -> None:
    conn = aioredis.ConnectionPool().make_connection()
    packer = Packer()
    for i in range(3 * CACHE_SIZE):
        command = ("HSET", f"mf:sig:{{a1b}}:{i}", "f", "86400000,86400000,86400000", i)
        assert packer.pack(*command) == redis_py_packs(conn, command)
        assert len(packer._bulks) <= CACHE_SIZE


@pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}, object(), ("t",)])
def test_the_packer_refuses_what_redis_py_refuses(bad: Any) -> None:
    conn = aioredis.ConnectionPool().make_connection()
    with pytest.raises(redis_errors.DataError):
        conn.pack_command("SET", "k", bad)
    with pytest.raises(redis_errors.DataError):
        Packer().pack("SET", "k", bad)


async def test_an_argument_that_cannot_be_encoded_fails_that_call_only(rig: Rig) -> None:
    """A bad argument fails its own call before anything is sent (it does not run, and does
    not take a place in the order); the calls around it run and are answered as usual."""
    await rig.call("open")
    bad: list[Any] = [True, None, ["list"], {"d": 1}]

    async def call(i: int) -> Any:
        tag = bad[i // 10 % len(bad)] if i % 10 == 3 else f"t{i}"
        return await rig.stream.call(rig.sha, 1, [rig.key, tag])

    results = await asyncio.wait_for(
        asyncio.gather(*(call(i) for i in range(100)), return_exceptions=True), 20
    )
    good = [r for i, r in enumerate(results) if i % 10 != 3]
    assert all(isinstance(r, redis_errors.DataError) for r in results[3::10]), results[3::10]
    assert [(int(c), t) for c, t in good] == [
        (n + 2, f"t{i}") for n, i in enumerate(i for i in range(100) if i % 10 != 3)
    ]
    # the same through execute on the same stream, between two commands that run
    key = f"{rig.key}:plain"
    done = await asyncio.gather(
        rig.stream.execute("SET", key, "1"),
        rig.stream.execute("SET", key, None),
        rig.stream.execute("GET", key),
        return_exceptions=True,
    )
    assert done[0] == "OK" and isinstance(done[1], redis_errors.DataError) and done[2] == "1"
    await rig.control.delete(key)
