"""Stream Redis commands over one connection, answers read in call order.

The :class:`~mageflow.store.batching.ScriptBatcher` keeps one pipeline in flight and waits for
all of its answers before it sends the next, so the client and Redis take turns: while Redis
runs a batch the client idles, and the other way round (bench/analysis.md, issue 13). Here a
writer task sends what was queued as soon as it can, without waiting for earlier answers, and a
reader task takes the answers off the same connection, oldest first, and hands each to its
caller. Both sides work at once.

One connection keeps what the batcher promised and the kernel relies on: Redis runs the
commands in the order they were made (a connection's commands run in the order they arrive),
and each caller gets its own answer (answers come back in that same order). A caller that gives
up (cancelled) leaves its command in the line: it may still run, and the reader takes its
answer off and drops it.

:class:`CommandStream` carries any command that gets exactly one reply and leaves the
connection as it found it (not SUBSCRIBE, MONITOR, CLIENT REPLY, SELECT, and not MULTI: other
callers' commands would land inside the transaction); a blocking command (BLPOP, XREADGROUP
BLOCK) holds up every command behind it. :class:`ScriptStream` is the store's: EVALSHA calls
with the ScriptBatcher's interface. A cluster spreads calls over several masters, each on a
connection of its own, so only a plain ``redis.asyncio.Redis`` streams; a ``RedisCluster``
keeps the batcher.

Commands are packed here, not by redis-py's ``pack_command``: it encodes every argument in
Python on every call, and most arguments of a script call are the same strings every time (the
sha, the shard's index keys, the TTL lists), which made packing the largest item of the
client's CPU profile (bench/analysis.md). :class:`Packer` keeps the encoded form of short
strings it has met, and builds the same bytes redis-py would.

Failures: an argument that cannot be encoded fails its call before anything is sent. An error
reply goes to its caller only. An answer ``NOSCRIPT`` to a script call (Redis restarted and
forgot the scripts) loads the scripts and sends that call again, once. A broken connection
fails every command written on it and not yet answered (nobody can tell whether Redis ran it);
commands not yet written go out on a new connection, and the next command opens one if none is
open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, ConnectionPool

#: Commands written and not yet answered, at most; later ones wait in the queue, in their order.
MAX_IN_FLIGHT = 4096
#: Commands per socket write. Redis runs everything it read in one go before it answers any of
#: it, so a whole wave of calls sent at once comes back at once; smaller writes let Redis start
#: on the first calls, and the client on their answers, while the rest are still being packed.
MAX_CHUNK = 16
#: Strings of at most this many characters have their encoded form kept: keys, TTL lists, shas,
#: names. Longer ones are payloads (JSON), which seldom recur and would only fill the cache.
CACHE_MAX_LEN = 100
#: Encoded strings kept at most. Keys of signatures are short and unique, so the cache fills up;
#: then it starts afresh (the constant strings are encoded again once), and memory stays bounded.
CACHE_SIZE = 4096


# -- packing ----------------------------------------------------------------------------------


def _encode(arg: Any, encoding: str, errors: str) -> bytes:
    """``arg`` as redis-py's ``Encoder.encode`` sends it: the same types taken, the same refused
    (with its DataError), so a command fails here exactly when it would fail in redis-py."""
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode(encoding, errors)
    if isinstance(arg, bool):  # an int, but True would go out as "True": refused, as redis-py does
        raise redis_errors.DataError(
            "Invalid input of type: 'bool'. Convert to a bytes, string, int or float first."
        )
    if isinstance(arg, (int, float)):
        return repr(arg).encode()
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    raise redis_errors.DataError(
        f"Invalid input of type: '{type(arg).__name__}'. "
        "Convert to a bytes, string, int or float first."
    )


class _Bulks(dict[Any, bytes]):
    """RESP bulk strings (``$<length>``, CRLF, the bytes, CRLF) by argument. Only exact ``str``
    keys are ever stored: 1, 1.0 and True are equal dict keys but go out as different bytes,
    while a str subclass that equals a stored str (a StrEnum) encodes to the same bytes."""

    __slots__ = ("encoding", "errors")

    def __init__(self, encoding: str, errors: str) -> None:
        super().__init__()
        self.encoding, self.errors = encoding, errors

    def __missing__(self, arg: Any) -> bytes:
        if type(arg) is str:
            data = arg.encode(self.encoding, self.errors)
            bulk = b"$%d\r\n%s\r\n" % (len(data), data)
            if len(arg) <= CACHE_MAX_LEN:
                if len(self) >= CACHE_SIZE:
                    self.clear()
                self[arg] = bulk
            return bulk
        if type(arg) is int and 0 <= arg < len(_SMALL_INTS):  # key counts: one in every call
            return _SMALL_INTS[arg]
        data = _encode(arg, self.encoding, self.errors)
        return b"$%d\r\n%s\r\n" % (len(data), data)


_SMALL_INTS = [b"$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(256)]


class Packer:
    """Commands in RESP, byte for byte what redis-py's ``pack_command`` writes, in one bytes.

    The encoded form of short strings is cached (see :data:`CACHE_MAX_LEN`), so a command made
    mostly of recurring strings costs a dict lookup per argument. The cache belongs to one
    packer: the encoding is its pool's."""

    __slots__ = ("_bulk", "_bulks", "_names")

    def __init__(self, encoding: str = "utf-8", errors: str = "strict") -> None:
        self._bulks = _Bulks(encoding, errors)
        self._bulk = self._bulks.__getitem__  # looked up once: it runs for every argument
        self._names: dict[str, tuple[int, bytes]] = {}

    def pack(self, name: Any, *args: Any) -> bytes:
        """One command. DataError (or UnicodeEncodeError) if an argument cannot be encoded."""
        words, head = (self._names.get(name) if type(name) is str else None) or self._name(name)
        parts = [b"*%d\r\n" % (words + len(args)), head]
        try:
            parts += map(self._bulk, args)  # the loop runs in C while the cache hits
        except (TypeError, ValueError):  # unhashable (bytearray, writable memoryview, list...)
            parts[2:] = [self._bulks.__missing__(arg) for arg in args]  # (raises for a list)
        return b"".join(parts)

    def _name(self, name: Any) -> tuple[int, bytes]:
        """The command name's words, packed. Like redis-py, a name with spaces ("CONFIG GET")
        is several words, and a str name is encoded as UTF-8 whatever the pool's encoding."""
        if isinstance(name, str):
            words: list[Any] = name.encode().split()
        elif isinstance(name, bytes) and b" " in name:
            words = name.split()
        else:
            words = [name]
        packed = len(words), b"".join(self._bulks.__missing__(word) for word in words)
        if type(name) is str:
            if len(self._names) >= CACHE_SIZE:
                self._names.clear()
            self._names[name] = packed
        return packed


# -- the stream -------------------------------------------------------------------------------


class _Call:
    __slots__ = ("future", "packed", "replies", "resend")

    def __init__(
        self, packed: bytes, future: asyncio.Future[Any], resend: bool, replies: int = 1
    ) -> None:
        self.packed, self.future = packed, future
        self.resend = resend  # a script call: sent again once if Redis answers NOSCRIPT
        self.replies = replies  # replies still to read; the last one is the answer


class _Line:
    """One connection, and the calls written on it that await their answer, oldest first."""

    __slots__ = ("broken", "flying", "reader", "sent", "wake", "writer")

    def __init__(self) -> None:
        self.flying: deque[_Call] = deque()
        self.wake = asyncio.Event()  # for the writer: calls are queued, or room in the window
        self.sent = asyncio.Event()  # for the reader: calls await their answer
        self.broken = False
        self.writer: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[None] | None = None


class _Stale(Exception):
    """The server closed the idle connection (it restarted, or a timeout dropped it): nothing
    was in flight on it, so the queued calls simply go out on a new one."""


class CommandStream:
    """Redis commands over one connection of a pool: run in call order, each answered to its
    caller. The connection is taken from the pool when the first command comes (and again
    after one breaks) and held until :meth:`aclose`; the pool itself stays the caller's."""

    def __init__(
        self, client: aioredis.Redis | ConnectionPool, window: int = MAX_IN_FLIGHT
    ) -> None:
        pool = client.connection_pool if isinstance(client, aioredis.Redis) else client
        self._pool = pool
        encoder = pool.get_encoder()  # type: ignore[no-untyped-call]
        self._packer = Packer(encoder.encoding, encoder.encoding_errors)
        self._window = window
        self._queue: deque[_Call] = deque()  # made, not yet written
        self._line: _Line | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def execute(self, *args: Any) -> Any:
        """Run one command (name and arguments as ``Redis.execute_command`` takes them) and
        return its reply as the connection's parser gives it: no response callbacks, so bytes
        unless the pool decodes. An error reply raises ResponseError here, to this caller only;
        an argument that cannot be encoded raises DataError and nothing is sent. If the
        connection breaks before the reply, ConnectionError (TimeoutError if a read outlasts the
        pool's ``socket_timeout``): the command may or may not have run. A caller cancelled
        while it waits leaves its command in the line: it still runs."""
        return await self._enqueue(self._packer.pack(*args), resend=False)

    async def transaction(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run ``commands`` in one MULTI/EXEC, written together so that nothing else lands
        inside it; their replies. If one of them failed (Redis runs the others all the same,
        as it does for any MULTI), its error is raised, as redis-py's pipeline does."""
        pack = self._packer.pack
        packed = b"".join([pack("MULTI"), *(pack(*c) for c in commands), pack("EXEC")])
        replies = await self._enqueue(packed, resend=False, replies=len(commands) + 2)
        if isinstance(replies, list):
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return list(replies)

    def abandon(self, exc: Exception) -> None:
        """Give up on the current connection (say, no answer came in time): the commands
        written on it and not answered fail with ``exc``; queued ones go out on a new one."""
        if self._line is not None:
            self._drop(self._line, exc)

    async def aclose(self) -> None:
        """Stop the writer and reader and give the connection back; calls still unanswered get
        a ConnectionError (as they would if the client closed under a pipeline)."""
        self._closed = True
        line, self._line = self._line, None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = [*(line.flying if line else ()), *self._queue]
        self._queue = deque()
        _fail_closed(left)

    def _enqueue(self, packed: bytes, resend: bool, replies: int = 1) -> asyncio.Future[Any]:
        """Queue a packed command (synchronously: the order of calls is the order of
        execution); the future gets its answer."""
        if self._closed:
            raise redis_errors.ConnectionError("the stream is closed")
        call = _Call(packed, asyncio.get_running_loop().create_future(), resend, replies)
        self._queue.append(call)
        self._kick()
        return call.future

    # -- the line -------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._line is None:
            self._open()
        else:
            self._line.wake.set()

    def _open(self) -> None:
        line = self._line = _Line()
        line.writer = self._spawn(self._serve(line))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self, line: _Line) -> None:
        """Take a connection from the pool, write the queued calls on it until it breaks (or
        the stream closes), then give it back."""
        try:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        except Exception as exc:  # Redis is unreachable: what waits to be sent hears it
            self._drop(line, exc, queued=True)
            return
        line.reader = self._spawn(self._read(line, conn))
        try:
            await self._write(line, conn)
        except _Stale:
            self._drop(line, None)
        except Exception as exc:
            self._drop(line, exc)
        finally:
            line.reader.cancel()
            # Answers may still be on the socket: close it, so the pool hands out a clean one.
            with contextlib.suppress(Exception):  # closing a broken socket may fail as well
                await conn.disconnect(nowait=True)
            await self._pool.release(conn)

    async def _write(self, line: _Line, conn: AbstractConnection) -> None:
        queue = self._queue
        while True:
            if not queue or len(line.flying) >= self._window:
                line.wake.clear()
                await line.wake.wait()
                continue
            if not line.flying:
                await _check_idle(conn)
            if not conn.is_connected:  # the reader saw it break: do not let redis-py reconnect
                raise redis_errors.ConnectionError("the connection closed")
            chunk = [
                queue.popleft()
                for _ in range(min(len(queue), MAX_CHUNK, self._window - len(line.flying)))
            ]
            line.flying.extend(chunk)
            line.sent.set()
            packed = b"".join([call.packed for call in chunk])
            await conn.send_packed_command(packed, check_health=False)
            if queue:  # let Redis start on this chunk, and the reader hand out answers
                await asyncio.sleep(0)

    async def _read(self, line: _Line, conn: AbstractConnection) -> None:
        try:
            while True:
                if not line.flying:
                    line.sent.clear()
                    await line.sent.wait()
                    continue
                try:
                    reply = await conn.read_response()
                except redis_errors.ResponseError as exc:  # an error reply: an answer
                    reply = exc
                call = line.flying[0]
                call.replies -= 1
                if call.replies > 0:  # MULTI's OK and the QUEUEDs: EXEC's reply tells
                    continue
                self._answer(line.flying.popleft(), reply)
                if self._queue:  # the writer may be waiting for room in the window
                    line.wake.set()
        except Exception as exc:
            self._drop(line, exc)

    def _drop(self, line: _Line, exc: Exception | None, queued: bool = False) -> None:
        """The line is done: its unanswered calls (and with ``queued`` the unsent ones) fail
        with ``exc``; unsent calls left go out on a new line."""
        if line.broken:
            return
        line.broken = True
        failed = [*line.flying, *(self._queue if queued else ())]
        line.flying.clear()
        if queued:
            self._queue.clear()
        for call in failed:
            _settle(call, exc or redis_errors.ConnectionError("the connection closed"))
        current = asyncio.current_task()
        for task in (line.writer, line.reader):
            if task is not None and task is not current:
                task.cancel()
        if self._line is line:
            self._line = None
            if self._queue and not self._closed:
                self._open()

    def _answer(self, call: _Call, reply: Any) -> None:
        _settle(call, reply)


class ScriptStream(CommandStream):
    """Script calls to one Redis, answered in call order (the ScriptBatcher's interface)."""

    def __init__(
        self,
        client: aioredis.Redis,
        reload: Callable[[], Awaitable[None]],
        window: int = MAX_IN_FLIGHT,
    ) -> None:
        super().__init__(client, window)
        self._reload = reload
        self._missing: list[_Call] = []  # answered NOSCRIPT, to send again after a reload
        self._reloading = False

    async def call(self, sha: str, numkeys: int, args: list[Any]) -> Any:
        return await self._enqueue(self._packer.pack("EVALSHA", sha, numkeys, *args), True)

    async def aclose(self) -> None:
        await super().aclose()
        missing, self._missing = self._missing, []
        _fail_closed(missing)

    def _answer(self, call: _Call, reply: Any) -> None:
        if call.resend and isinstance(reply, redis_errors.NoScriptError):
            call.resend = False
            self._missing.append(call)
            if not self._reloading:
                self._reloading = True
                self._spawn(self._reload_and_resend())
            return
        _settle(call, reply)

    async def _reload_and_resend(self) -> None:
        """Redis forgot the scripts (it restarted): load them, then send the calls it refused
        again, ahead of anything still queued. Calls written after them (already run) have
        overtaken them; the batcher has the same caveat, with the rest of a batch."""
        try:
            await self._reload()
        except Exception as exc:
            missing, self._missing = self._missing, []
            for call in missing:
                _settle(call, exc)
            return
        finally:
            self._reloading = False
        missing, self._missing = self._missing, []
        self._queue.extendleft(reversed(missing))
        if not self._closed:
            self._kick()


async def _check_idle(conn: AbstractConnection) -> None:
    """Before writing on a connection with nothing in flight: _Stale if the server has closed
    it meanwhile (what the pool checks when it hands out a connection), so the queued calls go
    out on a fresh one instead of failing."""
    try:
        if not await conn.can_read():
            return
    except (redis_errors.ConnectionError, OSError):
        pass
    raise _Stale  # closed, or bytes nobody asked for: either way not a line to write on


def _fail_closed(calls: list[_Call]) -> None:
    closed = redis_errors.ConnectionError("the stream is closed")
    for call in calls:
        _settle(call, closed)


def _settle(call: _Call, result: Any) -> None:
    if call.future.done():  # the caller gave up (cancelled)
        return
    if isinstance(result, BaseException):
        call.future.set_exception(result)
    else:
        call.future.set_result(result)
