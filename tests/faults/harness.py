"""What the fault-injection tests share: private Redis servers, worker processes, a producer.

Every Redis here is a ``redis-server`` the test starts on a free loopback port, in its own
directory, with an append-only file (``appendfsync everysec``, no RDB snapshots), and stops by pid.
Every worker is ``python -m mageflow.engines.taskiq_worker faults_app:mf`` in its own process
group, killed with the group when the test ends. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from faults_brokers import group_of, make_broker
from taskiq.labels import prepare_label

from mageflow import Mageflow, MageflowConfig
from mageflow.store.connect import shard_count
from mageflow.store.embedded import find_redis_server
from mageflow.store.keys import KeySchema

HERE = Path(__file__).parent
APP = "faults_app:mf"
TASKS = ["double", "member", "member_ok", "on_err", "slow", "swarm_ok"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


class RedisServer:
    """One private ``redis-server`` on 127.0.0.1:<port>, persisted in ``dir`` by AOF only."""

    def __init__(
        self, root: Path, name: str, *, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.dir = root / name
        self.port = port or free_port()
        self.extra_args = list(extra_args)  # more redis-server options (the cluster tests' own)
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = shutil.which("redis-server") or find_redis_server()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, wipe: bool = False, timeout: float = 15.0) -> None:
        """Start (or restart, on the same port) the server; ``wipe`` drops its data first."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if wipe and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec"]
        args += ["--save", "", "--auto-aof-rewrite-percentage", "0", "--protected-mode", "no"]
        args += ["--logfile", str(self.dir / "redis.log"), "--daemonize", "no", *self.extra_args]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server {self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=1) as r:
                return bool(r.ping())
        except (redis.RedisError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL the server, by its pid (as a crash or an OOM kill would end it)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        path = self.dir / "redis.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, decode_responses=True, encoding_errors="replace", socket_timeout=10
        )

    # -- the append-only file ----------------------------------------------------------------------

    def incr_aof(self) -> Path:
        """The file Redis 7 appends writes to: the last ``type i`` file of the manifest."""
        aof_dir = self.dir / "appendonlydir"
        manifest = (aof_dir / "appendonly.aof.manifest").read_text().splitlines()
        incr = [line.split()[1] for line in manifest if line.split()[-1:] == ["i"]]
        assert incr, f"no incremental AOF in {manifest}"
        return aof_dir / incr[-1]

    def truncate_aof(self, size: int) -> str:
        """Cut the incremental AOF back to ``size`` bytes (the server must be down), then let
        ``redis-check-aof --fix`` drop a command or a MULTI/EXEC block the cut split in two."""
        assert self.proc is None or self.proc.poll() is not None, "stop the server first"
        path = self.incr_aof()
        before = path.stat().st_size
        with path.open("r+b") as fh:
            fh.truncate(size)
        check = shutil.which("redis-check-aof")
        fixed = ""
        if check:  # without it, Redis's aof-load-truncated (the default) drops a cut-off tail
            manifest = str(self.dir / "appendonlydir" / "appendonly.aof.manifest")
            out = subprocess.run(
                [check, "--fix", manifest], input=b"y\n", capture_output=True, timeout=30
            )
            fixed = out.stdout.decode(errors="replace").splitlines()[-1:][0]
        return f"AOF {path.name}: {before} -> {size} -> {path.stat().st_size} bytes ({fixed})"


class AofSampler:
    """Samples a server's incremental AOF size every ``period`` s in the background, so a test
    can cut the file back to where it stood a second before a crash."""

    def __init__(self, server: RedisServer, period: float = 0.05) -> None:
        self.server, self.period = server, period
        self.samples: list[tuple[float, int]] = []  # (time.time(), size)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        path = self.server.incr_aof()
        while True:
            self.samples.append((time.time(), path.stat().st_size))
            await asyncio.sleep(self.period)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def before(self, moment: float) -> tuple[float, int]:
        """The last sample taken at or before ``moment``."""
        earlier = [s for s in self.samples if s[0] <= moment]
        assert earlier, "no AOF sample that early"
        return earlier[-1]


class FaultCluster:
    """The workers of one test and its producer: one namespace, one stream, on private servers.

    ``state``: the Redis of mageflow's records; ``broker``: the Redis of the taskiq stream;
    ``record``: where tasks record their runs (pick the server the test does not break).
    """

    def __init__(
        self,
        tmp: Path,
        state: RedisServer,
        broker: RedisServer,
        record: RedisServer,
        *,
        lease: float = 2.0,
        grace: float = 2.0,
        idle_ms: int = 3000,
        xread_count: int = 4,
        run_here: bool = True,
    ) -> None:
        self.tmp, self.state, self.broker, self.record = tmp, state, broker, record
        self.run_here = run_here
        self.lease, self.grace, self.idle_ms, self.xread_count = lease, grace, idle_ms, xread_count
        uid = uuid.uuid4().hex[:10]
        self.namespace = f"mff-{uid}"
        self.queue = f"mff-{uid}-queue"
        self.group = group_of(self.queue)
        self.marker = tmp / f"marker-{uid}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def env(self, concurrency: int) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "MFF_NAMESPACE": self.namespace,
            "MFF_STATE_URL": self.state.url,
            "MFF_BROKER_URL": self.broker.url,
            "MFF_RECORD_URL": self.record.url,
            "MFF_QUEUE": self.queue,
            "MFF_LEASE": str(self.lease),
            "MFF_GRACE": str(self.grace),
            "MFF_IDLE_MS": str(self.idle_ms),
            "MFF_XREAD_COUNT": str(self.xread_count),
            "MFF_CONCURRENCY": str(concurrency),
            "MFF_MARKER": str(self.marker),
            "MFF_RUN_HERE": "1" if self.run_here else "0",
        }

    def start_worker(self, concurrency: int = 10) -> subprocess.Popen[bytes]:
        """One standalone worker (``--workers 1``: no supervisor to restart it)."""
        log = self.tmp / f"worker-{len(self.procs)}.log"
        args = [APP, "--workers", "1", "--concurrency", str(concurrency)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "mageflow.engines.taskiq_worker", *args],
            cwd=HERE,
            env=self.env(concurrency),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one
        )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def all_logs(self, tail: int = 6000) -> str:
        text = "\n".join(f"--- worker {pid} ---\n{p.read_text()}" for pid, p in self.logs.items())
        return text[-tail:]

    async def ready(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        await until(
            lambda: "mageflow worker ready" in self.log(proc) or proc.poll() is not None,
            timeout,
            f"worker {proc.pid} to be ready:\n{self.all_logs()}",
        )
        assert proc.poll() is None, f"worker exited with {proc.poll()}:\n{self.log(proc)}"

    def producer(self) -> Mageflow:
        broker = make_broker(self.broker.url, self.queue, idle_ms=self.idle_ms)
        config = MageflowConfig(
            namespace=self.namespace, lease_seconds=self.lease, accepted_grace_seconds=self.grace
        )
        return Mageflow(broker, self.state.url, config=config)

    async def registered(self, mf: Mageflow, names: list[str] = TASKS) -> None:
        async def published() -> bool:
            await mf.refresh_registry()
            return all(mf.task_meta(n) is not None for n in names)

        try:
            await until(published, 30, f"workers to register {names}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.all_logs()}") from None

    # -- reading what happened ---------------------------------------------------------------------

    def records(self, *parts: object) -> list[dict[str, Any]]:
        """Every run a task recorded under ``parts``, oldest first."""
        with self.record.client() as r:
            key = ":".join([self.namespace, "t", *map(str, parts)])
            return [json.loads(v) for v in r.lrange(key, 0, -1)]

    def pending(self) -> int:
        """Messages of the stream delivered to a worker and not acknowledged yet."""
        with self.broker.client() as r:
            return int(r.xpending(self.queue, self.group)["pending"])

    def dead_letters(self) -> list[dict[str, str]]:
        with self.state.client() as r:
            return [fields for _id, fields in r.xrange(f"{self.namespace}:dead")]

    def indexes(self) -> dict[str, int]:
        """Entries left in the outbox (unsent or unclaimed messages) and the lease index."""
        with self.state.client() as r:
            shards = KeySchema(self.namespace, shard_count(r, None)).all_shards
            return {
                "outbox": sum(int(r.zcard(s.outbox)) for s in shards),
                "leases": sum(int(r.zcard(s.leases)) for s in shards),
            }

    def xadd(self, fields: dict[str, str | bytes]) -> str:
        """Put a raw entry on the broker stream, as any client of the broker's Redis could."""
        with self.broker.client() as r:
            return str(r.xadd(self.queue, fields))  # type: ignore[arg-type]

    def kill_workers(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def taskiq_message(
    task: str,
    kwargs: dict[str, Any],
    *,
    labels: dict[str, Any] | None = None,
    args: list[Any] | None = None,
    labels_types: dict[str, int] | None = None,
) -> bytes:
    """The ``data`` field taskiq's JSON formatter would write for a kick of ``task``: a
    TaskiqMessage (task id, name, labels with their types, args, kwargs) as JSON."""
    prepared: dict[str, Any] = {}
    types: dict[str, int] = {}
    for name, value in (labels if labels is not None else {"ack_type": "manual"}).items():
        prepared[name], types[name] = prepare_label(value)
    message = {
        "task_id": uuid.uuid4().hex,
        "task_name": task,
        "labels": prepared,
        "labels_types": labels_types if labels_types is not None else types,
        "args": args or [],
        "kwargs": kwargs,
    }
    return json.dumps(message).encode()


def snapshot(r: redis.Redis, key: str) -> tuple[str, Any, int]:
    """(type, contents, TTL ms) of any key, to show a poison message left it alone."""
    kind = str(r.type(key))
    readers: dict[str, Callable[[str], Any]] = {
        "hash": r.hgetall,
        "string": r.get,
        "list": lambda k: r.lrange(k, 0, -1),
        "set": r.smembers,
        "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
        "none": lambda k: None,
    }
    return kind, readers[kind](key), int(r.pttl(key))  # type: ignore[arg-type]
