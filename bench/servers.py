"""Private redis-server processes for the bench, and what it reads from them."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any

import redis

from bench import procs

#: Commands the bench itself sends (never the code under test); left out of every count.
BENCH_COMMANDS = frozenset(
    {
        "info",
        "config|resetstat",
        "config|set",
        "config|get",
        "flushall",
        "scan",
        "type",
        "pttl",
        "xrange",
        "dbsize",
        "monitor",
        "client|setname",
        "command|docs",
        "hello",
        "ping",
    }
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_args(server: str, port: int, folder: Path) -> list[str]:
    """A throwaway redis-server on loopback: nothing kept on disk."""
    return [
        server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(folder), "--daemonize", "no",
    ]  # fmt: skip


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, no persistence, stopped with the bench."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.dir = workdir / name
        self.port = 0
        self.proc: procs.Proc | None = None
        self._client: redis.Redis | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            from mageflow.store.embedded import find_redis_server

            server = find_redis_server()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [*redis_args(server, self.port, self.dir), "--maxclients", "4096"]
        self.proc = procs.spawn(f"redis-{self.name}", argv, self.dir / "redis.log")
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client.ping():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline or not self.proc.alive():
                raise RuntimeError(f"redis-server {self.name} did not start:\n{self.proc.text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None:
            procs.stop(self.proc, timeout=5)
            self.proc = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis(port=self.port, decode_responses=True, socket_timeout=30)
        return self._client

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def reset(self) -> None:
        """Empty the server and zero its counters (between benchmark sessions)."""
        self.client.flushall()
        self.client.config_resetstat()

    def command_calls(self) -> dict[str, int]:
        """Calls per command since the last reset (``INFO commandstats``), bench's own left out,
        plus ``usec:<command>``: microseconds Redis spent in it. Redis counts commands run inside
        Lua scripts and inside MULTI/EXEC here too (and their time within the EVALSHA's)."""
        stats: dict[str, Any] = self.client.info("commandstats")
        out: dict[str, int] = {}
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name not in BENCH_COMMANDS:
                out[name] = int(value["calls"])
                out[f"usec:{name}"] = int(value["usec"])
        return out

    def memory(self) -> dict[str, int]:
        """``MEMORY STATS``: *data* is the dataset plus the main and expires dict overheads of db
        0 (what keys cost, without client buffers, scripts or start-up allocations)."""
        stats: dict[str, Any] = self.client.memory_stats()
        db0: dict[str, Any] = stats.get("db.0") or {}
        data = int(stats["dataset.bytes"]) + sum(
            int(db0.get(k, 0)) for k in ("overhead.hashtable.main", "overhead.hashtable.expires")
        )
        return {
            "used_memory": int(stats["total.allocated"]),
            "clients": int(stats["clients.normal"]),
            "data": data,
            "keys": int(stats.get("keys.count", 0)),
        }

    def keys(self, pattern: str) -> list[str]:
        return sorted(self.client.scan_iter(match=pattern, count=1000))

    def key_bytes(self, pattern: str) -> tuple[int, int]:
        """(keys, bytes by ``MEMORY USAGE key SAMPLES 0``) matching ``pattern``; registries of
        task names are left out."""
        keys = [k for k in self.keys(pattern) if not k.endswith(":registry")]
        total = 0
        for start in range(0, len(keys), 1000):
            pipe = self.client.pipeline(transaction=False)
            for key in keys[start : start + 1000]:
                pipe.memory_usage(key, samples=0)
            total += sum(int(v or 0) for v in pipe.execute())
        return len(keys), total
