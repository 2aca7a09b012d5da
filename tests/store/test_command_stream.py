"""The CommandStream: any Redis command streamed over one connection (store/streaming.py), and
transactions written in one piece. The script-call side is in test_streaming.py."""

# ruff: noqa: F811 (the fixtures server and rig come from test_streaming)

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from test_streaming import Rig, rig, server, until_paused_with  # noqa: F401

from mageflow.store.streaming import MAX_IN_FLIGHT, CommandStream

# -- any command ------------------------------------------------------------------------------

CMD_NAME = "command-stream-test"


class Commands:
    """A CommandStream on a blocking pool that does not decode (as the taskiq broker's), and a
    control client."""

    def __init__(self, url: str, window: int = MAX_IN_FLIGHT) -> None:
        self.pool = aioredis.BlockingConnectionPool.from_url(
            url, client_name=CMD_NAME, max_connections=4
        )
        self.stream = CommandStream(self.pool, window)
        self.control = aioredis.Redis.from_url(url, decode_responses=True)
        self.key = f"cmd-test:{time.monotonic_ns()}"

    async def stream_client(self) -> dict[str, Any]:
        found = [c for c in await self.control.client_list() if c["name"] == CMD_NAME]
        assert len(found) == 1, found
        return found[0]

    async def until_held(self, written: int) -> None:
        """Until the paused server holds the stream's first command and ``written`` are out of
        the queue (written, or answered)."""

        def out() -> bool:
            line = self.stream._line
            return line is not None and len(line.flying) == written

        await until_paused_with(self.stream_client, out)


@pytest.fixture
async def commands(server: str) -> AsyncIterator[Commands]:
    rig = Commands(server)
    yield rig
    await rig.control.execute_command("CLIENT", "UNPAUSE")
    await rig.stream.aclose()
    await rig.pool.aclose()
    await rig.control.delete(rig.key, f"{rig.key}:s", f"{rig.key}:l")
    await rig.control.aclose()


async def test_commands_round_trip_with_raw_replies_and_an_error_to_its_caller_only(
    commands: Commands,
) -> None:
    run, key, stream = commands.stream.execute, commands.key, f"{commands.key}:s"
    assert await run("SET", key, "v", "PX", 60_000) == b"OK"
    assert await run("GET", key) == b"v"
    assert await run("XGROUP", "CREATE", stream, "g", "$", "MKSTREAM") == b"OK"
    # one wave of calls: the WRONGTYPE goes to its caller, the calls around it get theirs
    replies = await asyncio.wait_for(
        asyncio.gather(
            run("XADD", stream, "*", "n", 1),
            run("GET", stream),
            run("XADD", stream, "*", "n", 2.5, "raw", b"\xff\x00"),
            run("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", stream, ">"),
            return_exceptions=True,
        ),
        10,
    )
    first, wrong, second, read = replies
    assert isinstance(wrong, redis_errors.ResponseError) and "WRONGTYPE" in str(wrong)
    assert isinstance(first, bytes) and isinstance(second, bytes) and first < second
    by_stream = read if isinstance(read, dict) else dict(read)  # a map in RESP3, pairs in RESP2
    entries = [(entry_id, list(fields)) for entry_id, fields in by_stream[stream.encode()]]
    assert entries == [(first, [b"n", b"1"]), (second, [b"n", b"2.5", b"raw", b"\xff\x00"])]
    assert await run("XACK", stream, "g", first, second, b"0-1") == 2
    assert (await run("XPENDING", stream, "g"))[0] == 0
    assert await run("GET", f"{key}:missing") is None


async def test_a_decoding_pool_gives_str_replies(server: str) -> None:
    client = aioredis.Redis.from_url(server, decode_responses=True)
    stream = CommandStream(client)
    key = f"cmd-test:{time.monotonic_ns()}"
    try:
        assert await stream.execute("SET", key, "ünï") == "OK"
        assert await stream.execute("GET", key) == "ünï"
        assert await stream.execute("DEL", key) == 1
    finally:
        await stream.aclose()
        await client.aclose()


async def test_500_concurrent_commands_run_and_are_answered_in_call_order(
    commands: Commands,
) -> None:
    key, made = f"{commands.key}:l", []

    async def push(i: int) -> tuple[int, int]:
        if i % 3 == 0:  # interleave over loop turns
            await asyncio.sleep(0)
        made.append(i)  # execute() queues synchronously, before its first await
        return i, await commands.stream.execute("RPUSH", key, i)

    answers = await asyncio.wait_for(asyncio.gather(*(push(i) for i in range(500))), 20)
    position = {i: n + 1 for n, i in enumerate(made)}
    assert all(length == position[i] for i, length in answers)  # RPUSH answers the new length
    assert [int(v) for v in await commands.control.lrange(key, 0, -1)] == made


async def test_a_killed_connection_fails_the_commands_in_flight_and_sends_the_unwritten(
    server: str,
) -> None:
    """With a window of 5, five XADDs are written (and held by the paused server) and fifteen
    wait unwritten. Killing the connection fails the five with ConnectionError (none ran); the
    fifteen go out on a new connection, in their order."""
    rig = Commands(server, window=5)
    stream_key = f"{rig.key}:s"
    try:
        await rig.stream.execute("PING")
        victim = (await rig.stream_client())["id"]
        await rig.control.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        calls = [
            asyncio.create_task(rig.stream.execute("XADD", stream_key, f"{i}-1", "i", i))
            for i in range(1, 21)
        ]
        await rig.until_held(written=5)
        assert await rig.control.client_kill_filter(_id=victim) == 1
        await rig.control.execute_command("CLIENT", "UNPAUSE")
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert all(isinstance(r, redis_errors.ConnectionError) for r in results[:5]), results
        assert results[5:] == [f"{i}-1".encode() for i in range(6, 21)]
        entries = await rig.control.xrange(stream_key)
        assert [entry_id for entry_id, _ in entries] == [f"{i}-1" for i in range(6, 21)]
        assert (await rig.stream_client())["id"] != victim
    finally:
        await rig.control.execute_command("CLIENT", "UNPAUSE")
        await rig.stream.aclose()
        await rig.pool.aclose()
        await rig.control.delete(stream_key)
        await rig.control.aclose()


async def test_close_fails_what_is_unanswered_and_gives_the_connection_back(
    commands: Commands,
) -> None:
    await commands.stream.execute("PING")
    await commands.control.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    held = asyncio.create_task(commands.stream.execute("SET", commands.key, "x"))
    await commands.until_held(written=1)
    await commands.stream.aclose()
    with pytest.raises(redis_errors.ConnectionError):
        await asyncio.wait_for(held, 10)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert not commands.pool._in_use_connections
    with pytest.raises(redis_errors.ConnectionError):
        await commands.stream.execute("PING")


async def test_only_script_calls_are_sent_again_after_noscript(rig: Rig) -> None:
    """execute() on a ScriptStream is a plain command: its NOSCRIPT goes to its caller, and
    no reload is started for it."""
    await rig.call("open")
    with pytest.raises(redis_errors.NoScriptError):
        await asyncio.wait_for(rig.stream.execute("EVALSHA", "0" * 40, 0), 10)
    assert rig.reloads == 1
    assert await rig.call("after") == (2, "after")


# -- transactions ---------------------------------------------------------------------------------


async def test_a_transaction_answers_its_commands_replies(commands: Commands) -> None:
    key = commands.key
    replies = await commands.stream.transaction(
        [["SET", key, "a"], ["APPEND", key, "b"], ["GET", key]]
    )
    assert replies == [b"OK", 2, b"ab"]


async def test_a_failing_command_raises_and_redis_ran_the_others(commands: Commands) -> None:
    """As in any MULTI, and as redis-py's pipeline reports it: the error is raised after EXEC,
    and the commands around it ran."""
    key, other = commands.key, f"{commands.key}:s"
    with pytest.raises(redis_errors.ResponseError, match="not an integer"):
        await commands.stream.transaction([["SET", key, "x"], ["INCR", key], ["SET", other, "y"]])
    assert await commands.control.mget(key, other) == ["x", "y"]
    # A command Redis refuses to queue aborts the whole transaction: nothing of it ran.
    with pytest.raises(redis_errors.ExecAbortError):
        await commands.stream.transaction([["SET", key, "z"], ["GET"]])
    assert await commands.control.get(key) == "x"
    assert await commands.stream.execute("GET", key) == b"x"  # the line goes on


async def test_commands_of_other_callers_never_land_inside_a_transaction(
    commands: Commands,
) -> None:
    items = f"{commands.key}:l"

    async def push(i: int) -> Any:
        await asyncio.sleep(0.001 * (i % 7))
        return await commands.stream.execute("RPUSH", items, f"c{i}")

    async def pair() -> Any:
        await asyncio.sleep(0.003)
        return await commands.stream.transaction(
            [["RPUSH", items, "t1"], ["RPUSH", items, "t2"], ["RPUSH", items, "t3"]]
        )

    await asyncio.wait_for(asyncio.gather(*(push(i) for i in range(300)), pair()), 20)
    listed = await commands.control.lrange(items, 0, -1)
    assert len(listed) == 303
    first = listed.index("t1")
    assert listed[first : first + 3] == ["t1", "t2", "t3"]
