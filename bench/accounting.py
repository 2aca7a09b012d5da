"""What mageflow asks of its state Redis: client calls per task, bytes per signature, and the
keys left once the done TTL has passed.

Redis's ``INFO commandstats`` counts every command it runs, including the ones a Lua script runs
and the ones queued in MULTI/EXEC, so it cannot tell what the client sent. ``MONITOR`` can: it
shows script-internal commands with the source ``lua``, and a transaction as MULTI, its commands,
EXEC. A call made by the client is therefore one EVALSHA, one MULTI/EXEC block, or one plain
command. MONITOR slows Redis down, so it runs in a separate, untimed pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.contenders.base import Contender, Env, Probe
from bench.contenders.mageflow import MageflowEmbedded, MageflowTaskiq, drive
from bench.mf_app import embedded_client
from bench.model import RunResult, Sizes
from bench.servers import BENCH_COMMANDS, RedisServer
from bench.session import run_session, wiring_for
from mageflow.store.scripts import SCRIPT_NAMES, script_source

LINE = re.compile(r'^\+?\d+\.\d+ \[\d+ ([^\]]+)\] "((?:[^"\\]|\\.)*)"(?: "((?:[^"\\]|\\.)*)")?')
MARK = "bench-monitor-end"
#: Workloads left out of the MONITOR pass: the 10,000-task swarm makes the same calls per task
#: as the 2,000-task one (the size series shows it), and would write half a million MONITOR lines.
NOT_ACCOUNTED = frozenset({"swarm10k"})
#: The scripts a task's own run goes through (claim, finish, outbox clean-up, container start).
RUN_SCRIPTS = ("start_task", "finish", "ack", "start_container", "swarm_add", "swarm_close")


def script_names() -> dict[str, str]:
    return {hashlib.sha1(script_source(n).encode()).hexdigest(): n for n in SCRIPT_NAMES}


@dataclass
class CallCount:
    calls: Counter[str] = field(default_factory=Counter)  # made by clients
    in_scripts: Counter[str] = field(default_factory=Counter)  # run by Lua
    in_transactions: Counter[str] = field(default_factory=Counter)  # queued in MULTI/EXEC


def count_calls(path: Path, shas: dict[str, str]) -> CallCount:
    out = CallCount()
    in_multi: set[str] = set()
    for line in path.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if not m:
            continue
        source, cmd, arg = m.group(1), m.group(2).lower(), m.group(3) or ""
        if source == "lua":
            out.in_scripts[cmd] += 1
        elif cmd == "multi":
            in_multi.add(source)
        elif cmd in ("exec", "discard"):
            in_multi.discard(source)
            out.calls["MULTI/EXEC"] += 1
        elif source in in_multi:
            out.in_transactions[cmd] += 1
        elif cmd == "evalsha":
            out.calls[f"EVALSHA {shas.get(arg, arg[:10])}"] += 1
        elif cmd not in BENCH_COMMANDS and not (cmd == "echo" and arg.startswith(MARK)):
            out.calls[cmd.upper()] += 1
    return out


class MonitorProbe(Probe):
    """Records the state server's MONITOR stream for the timed part of one run."""

    def __init__(self, server: RedisServer, path: Path) -> None:
        self.server = server
        self.path = path
        self.proc: procs.Proc | None = None

    def begin(self) -> None:
        self.path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "bench.monitor", str(self.server.port), str(self.path)]
        self.proc = procs.spawn("monitor", argv, self.path.with_suffix(".log"))
        self._until(lambda text: text.startswith("+OK"), "MONITOR to start")

    def end(self, result: RunResult) -> None:
        marker = f"{MARK}-{uuid.uuid4().hex}"
        self.server.client.echo(marker)  # everything before it has reached the file
        self._until(lambda text: marker in text, "the monitor to catch up")
        assert self.proc is not None
        procs.stop(self.proc, timeout=5)
        counted = count_calls(self.path, script_names())
        result.extra["calls"] = dict(counted.calls)
        result.extra["in_scripts"] = dict(counted.in_scripts)
        result.extra["in_transactions"] = dict(counted.in_transactions)

    def _until(self, check: Any, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            text = self.path.read_text(errors="replace") if self.path.exists() else ""
            if check(text):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.05)


def record_shapes(server: RedisServer, sample: int = 300) -> dict[str, Any]:
    """How signature hashes are stored: Redis keeps a small hash as a compact listpack only
    while every field value is at most ``hash-max-listpack-value`` bytes (64 by default)."""
    config: Any = server.client.config_get("hash-max-listpack-value")
    limit = int(config["hash-max-listpack-value"])
    keys = [k for k in server.keys("bench:sig:*") if k.count(":") == 3]
    keys = random.sample(keys, min(sample, len(keys)))
    encodings: Counter[str] = Counter()
    long_fields: Counter[str] = Counter()
    sizes: list[int] = []
    for key in keys:
        encodings[str(server.client.object("encoding", key))] += 1
        fields: Any = server.client.hgetall(key)
        long_fields.update(f for f, v in fields.items() if len(v) > limit)
        sizes.append(int(server.client.memory_usage(key, samples=0) or 0))
    return {
        "sampled": len(keys),
        "limit": limit,
        "encodings": dict(encodings),
        "fields_over_limit": dict(long_fields),
        "mean_bytes": sum(sizes) / len(sizes) if sizes else 0,
    }


def account(env: Env, contenders: list[Contender], workloads: list[str]) -> list[RunResult]:
    """One MONITOR-recorded run of each workload for the embedded engine and one Taskiq worker
    (more workers make the same calls)."""
    out: list[RunResult] = []
    for contender in contenders:
        if not isinstance(contender, MageflowEmbedded | MageflowTaskiq) or contender.workers > 1:
            continue

        def probe_for(workload: str, c: Contender = contender) -> Probe:
            return _AccountingProbe(env, env.workdir / f"monitor-{c.name}-{workload}.txt")

        out += run_session(env, contender, workloads, rep=0, probe_for=probe_for, warmup=True)
    return out


class _AccountingProbe(MonitorProbe):
    """MONITOR, plus the keys and ``MEMORY USAGE`` bytes the run added."""

    def __init__(self, env: Env, path: Path) -> None:
        super().__init__(env.state, path)
        self.env = env
        self._before = (0, 0)

    def begin(self) -> None:
        self._before = self.env.state.key_bytes("bench:*")
        super().begin()

    def end(self, result: RunResult) -> None:
        super().end(result)
        keys, size = self.env.state.key_bytes("bench:*")
        result.extra["keys"] = keys - self._before[0]
        result.extra["key_bytes"] = size - self._before[1]
        result.extra["records"] = record_shapes(self.env.state)


def keys_left(
    env: Env, contenders: list[Contender], done_ttl: float = 2.0, wait_s: float = 3.0
) -> dict[str, Any]:
    """Run small workloads with ``TTLConfig(done_ttl=...)`` on the embedded engine and on one
    Taskiq worker (those of ``contenders``); list the namespace's keys ``wait_s`` seconds after
    the last one finished."""
    small = Sizes(swarm_n=50, chain_n=10, callbacks_n=50, run_timeout=60.0)
    report: dict[str, Any] = {"done_ttl_s": done_ttl, "wait_s": wait_s}
    names = {c.name for c in contenders}
    chosen: list[Contender] = []
    if "mageflow-embedded" in names:
        chosen.append(MageflowEmbedded())
    if any(n.startswith("mageflow-taskiq") for n in names):
        chosen.append(MageflowTaskiq(1))
    for contender in chosen:
        env.broker.reset()
        env.state.reset()
        wiring = wiring_for(env, contender, "ttl", done_ttl=done_ttl)
        contender.start(env, wiring)
        try:
            if isinstance(contender, MageflowEmbedded):
                asyncio.run(_embedded_small(env, small, done_ttl))
            else:
                for workload in ("swarm", "chain", "callbacks"):
                    result = contender.run(workload, 0, Probe(), small)
                    if not result.ok:
                        raise RuntimeError(result.error)
            created = len(env.state.keys("bench:*"))
            time.sleep(wait_s)
            left = env.state.keys("bench:*")
        finally:
            contender.stop()
        report[contender.name] = {
            "keys_at_end": created,
            "keys_left": len(left),
            "left": {k: env.state.client.type(k) for k in left[:20]},
            "left_ttl_ms": {k: env.state.client.pttl(k) for k in left[:20]},
        }
    return report


async def _embedded_small(env: Env, sizes: Sizes, done_ttl: float) -> None:
    wiring = wiring_for(env, MageflowEmbedded(), "ttl", done_ttl=done_ttl)
    mf, _ = embedded_client(wiring)
    async with mf:
        for workload in ("swarm", "chain", "callbacks"):
            await drive(mf, workload, sizes, Probe(), RunResult("ttl", workload, 0))
