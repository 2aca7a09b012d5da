"""Kernel figures: what one task of a 1,000-task swarm costs its state Redis.

``.venv/bin/python -m bench.kernel_figures`` (or ``python bench/kernel_figures.py``, which is how
an older mageflow on ``PYTHONPATH`` is measured: run from outside the repo so that the
``mageflow`` imported is the one on the path).

Workload: the in-process engine (``Mageflow(None, url)``), a trivial task, a swarm of 1,000
members with ``max_concurrency=50`` and ``is_swarm_closed=True``, one success callback on it.

(a) Redis commands per task, counted as ``INFO commandstats`` counts them (every command a Lua
    script runs is counted, plus the EVALSHA itself): the difference of two snapshots, divided by
    the number of members. Two windows: *total* (from signing the callback and creating the swarm
    to the callback's result) and *run* (from ``aio_run_no_wait`` to the callback's result).
(b) Bytes per finished signature: ``used_memory`` after the run minus before the swarm was
    created, divided by the number of members; and ``MEMORY USAGE`` of one finished member.
    A second swarm then runs on the same server: its delta is the steady-state figure (the
    first swarm on a fresh server also pays a one-off growth of the server's own structures).

Each run gets a fresh ``redis-server`` (loopback, free port, ``--save "" --appendonly no``),
stopped by its pid. ``--runs`` runs (3 by default) are made in one process, so they measure the
same code even while the tree is being edited; the medians are reported. One more, untimed run
records MONITOR to split the EVALSHA calls and the commands inside them by script (commandstats
cannot tell scripts apart). Results go to ``bench/results/kernel-figures.json`` under ``--label``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis

import mageflow
from bench.mf_app import COLLECT, NOOP, register
from bench.servers import redis_args
from mageflow import Mageflow, MageflowConfig, SwarmConfig, TTLConfig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "kernel-figures.json"
LONG_TTL = 7 * 24 * 3600.0  # nothing expires during a measurement
SETTLE_S = 0.5  # after the callback's result: trailing writes (outbox clean-ups) land
#: Commands this script sends itself inside a window (never the code under test).
OWN = frozenset({"info", "dbsize", "memory|stats"})
TARGETS = {"commands_per_task": 20.0, "script_calls_per_task": 2.5, "bytes_per_signature": 800.0}


# -- the private server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One redis-server on 127.0.0.1, no persistence; stopped by its pid."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found on PATH")
        self.dir = Path(tempfile.mkdtemp(prefix="kernel-figures-"))
        self.port = free_port()
        argv = redis_args(exe, self.port, self.dir)
        self.log = open(self.dir / "redis.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = redis.Redis(port=self.port, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((self.dir / "redis.log").read_text()) from None
                time.sleep(0.05)
        self.version = str(self.client.info("server")["redis_version"])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def snapshot(self) -> dict[str, Any]:
        stats: Any = self.client.info("commandstats")
        memory: Any = self.client.info("memory")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        mstats: Any = self.client.memory_stats()
        return {
            "memory": {k: v for k, v in {**memory, **mstats}.items() if isinstance(v, int)},
            "calls": calls,
            "used_memory": int(memory["used_memory"]),
            "used_memory_dataset": int(memory["used_memory_dataset"]),
            "keys": int(self.client.dbsize()),
            "t": time.perf_counter(),
        }


def diff_calls(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    out = {}
    for cmd, n in after["calls"].items():
        d = n - before["calls"].get(cmd, 0)
        if d and cmd not in OWN:
            out[cmd] = d
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# -- MONITOR (the untimed pass) ----------------------------------------------------------------

ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
LISTPACK_VALUE = 64  # hash-max-listpack-value: a longer value turns a hash into a hashtable
LINE = re.compile(r'^\+?\d+\.\d+ \[\d+ ([^\]]+)\] "((?:[^"\\]|\\.)*)"(?: "((?:[^"\\]|\\.)*)")?')


class Monitor:
    """Reads a server's MONITOR stream on a thread until the marker comes by."""

    def __init__(self, port: int) -> None:
        self.marker = f"kernel-figures-end-{uuid.uuid4().hex}"
        self.conn = socket.create_connection(("127.0.0.1", port))
        self.conn.sendall(b"MONITOR\r\n")
        self.buf = bytearray()
        while b"+OK\r\n" not in self.buf:
            self.buf += self.conn.recv(1 << 16)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        tail = self.marker.encode()
        while chunk := self.conn.recv(1 << 20):
            self.buf += chunk
            if tail in self.buf[-(len(chunk) + len(tail)) :]:
                return

    def stop(self, client: redis.Redis) -> list[str]:
        client.echo(self.marker)
        self.thread.join(60)
        self.conn.close()
        return self.buf.decode(errors="replace").splitlines()


def script_shas() -> dict[str, str]:
    from mageflow.store.scripts import SCRIPT_NAMES, script_source

    return {hashlib.sha1(script_source(n).encode()).hexdigest(): n for n in SCRIPT_NAMES}


def by_script(lines: list[str], shas: dict[str, str]) -> dict[str, Any]:
    """EVALSHA calls per script and the commands run inside each; the client's other commands.
    In Redis 7 MONITOR shows a script's own commands right after its EVALSHA."""
    scripts: Counter[str] = Counter()
    inside: dict[str, Counter[str]] = {}
    plain: Counter[str] = Counter()
    long_values: Counter[str] = Counter()  # HSET field -> writes of a value over 64 bytes
    current = "?"
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        source, cmd, arg = m.group(1), m.group(2).lower(), m.group(3) or ""
        if cmd == "hset":
            args = [a.encode().decode("unicode_escape", "replace") for a in ARG.findall(line)]
            for f, v in zip(args[2::2], args[3::2], strict=False):
                if len(v) > LISTPACK_VALUE:
                    long_values[f"{'lua' if source == 'lua' else 'client'}:{f}"] += 1
        if source == "lua":
            inside.setdefault(current, Counter())[cmd] += 1
        elif cmd in ("evalsha", "eval"):
            current = shas.get(arg, arg[:10]) if cmd == "evalsha" else "eval"
            scripts[current] += 1
        elif cmd not in ("echo", "memory", *OWN):
            plain[cmd] += 1
    return {
        "evalsha": dict(scripts.most_common()),
        "inside": {s: dict(c.most_common()) for s, c in inside.items()},
        "client_commands": dict(plain.most_common()),
        "hset_values_over_listpack_limit": dict(long_values.most_common()),
    }


# -- one run -------------------------------------------------------------------------------------


def client_for(url: str, namespace: str) -> Mageflow:
    ttl = TTLConfig(active_ttl=LONG_TTL, done_ttl=LONG_TTL)
    mf = Mageflow(None, url, config=MageflowConfig(namespace=namespace, ttl=ttl))
    register(mf)  # the bench's own two trivial tasks
    return mf


async def announce(mf: Mageflow, key: str) -> None:
    """Ask for the end notice of ``key`` before it can end (``watch`` now, ``mark`` before)."""
    notifier: Any = mf.notifier
    fn = getattr(notifier, "watch", None) or notifier.mark
    await fn(key)


async def swarm_once(mf: Mageflow, server: Server, n: int, concurrency: int) -> dict[str, Any]:
    """One swarm from signing its callback to the callback's result, between snapshots."""
    s0 = server.snapshot()
    collect = await mf.sign(COLLECT)
    swarm = await mf.swarm(
        [NOOP] * n,
        config=SwarmConfig(max_concurrency=concurrency),
        success_callbacks=[collect],
        is_swarm_closed=True,
    )
    await announce(mf, collect.key)
    s1 = server.snapshot()
    await swarm.aio_run_no_wait({"x": 1})
    value = await collect.aresult(timeout=300)
    t_done = time.perf_counter()
    await asyncio.sleep(SETTLE_S)
    s2 = server.snapshot()
    if value != n:
        raise AssertionError(f"callback returned {value!r}, expected {n}")
    return {"s": (s0, s1, s2), "t_done": t_done, "swarm": swarm, "collect": collect}


async def measure(server: Server, n: int, concurrency: int, monitor: bool) -> dict[str, Any]:
    """The measured swarm on a fresh server, then a second one on the same server and client
    (its memory delta is the steady-state cost, without the first swarm's one-off growth)."""
    namespace = f"kf{uuid.uuid4().hex[:6]}"
    mf = client_for(server.url, namespace)
    async with mf:
        await asyncio.sleep(0.2)  # start-up (registry, first recovery round) is not measured
        mon = Monitor(server.port) if monitor else None
        first = await swarm_once(mf, server, n, concurrency)
        lines = mon.stop(server.client) if mon else []
        members = await first["swarm"].tasks()
        swarm_key, collect_key = first["swarm"].key, first["collect"].key
        kept = storage(server, namespace, members, swarm_key, collect_key)
        second = await swarm_once(mf, server, n, concurrency)
    s0, s1, s2 = first["s"]
    w0, _, w2 = second["s"]
    return {
        "namespace": namespace,
        "build_s": s1["t"] - s0["t"],
        "run_s": first["t_done"] - s1["t"],
        "total": diff_calls(s0, s2),
        "build": diff_calls(s0, s1),
        "run": diff_calls(s1, s2),
        "used_memory_delta": s2["used_memory"] - s0["used_memory"],
        "used_memory_dataset_delta": s2["used_memory_dataset"] - s0["used_memory_dataset"],
        "keys_delta": s2["keys"] - s0["keys"],
        "memory_deltas": {
            k: s2["memory"][k] - s0["memory"].get(k, 0)
            for k in s2["memory"]
            if s2["memory"][k] != s0["memory"].get(k, 0) and not k.startswith(("total_", "rss"))
        },
        "warm": {
            "total": diff_calls(w0, w2),
            "used_memory_delta": w2["used_memory"] - w0["used_memory"],
            "used_memory_dataset_delta": w2["used_memory_dataset"] - w0["used_memory_dataset"],
            "keys_delta": w2["keys"] - w0["keys"],
        },
        "storage": kept,
        "monitor": by_script(lines, script_shas()) if monitor else None,
    }


def storage(
    server: Server, namespace: str, members: list[str], swarm_key: str, collect_key: str
) -> dict[str, Any]:
    """What the finished workflow leaves: one member's hash, and MEMORY USAGE by kind of key."""
    r = server.client
    member = members[len(members) // 2]
    fields: Any = r.hgetall(member)
    member_set = set(members)
    groups: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for key in r.scan_iter(match=f"{namespace}:*", count=1000):
        if key in member_set:
            kind = "member hash"
        elif key == swarm_key:
            kind = "swarm hash"
        elif key == collect_key:
            kind = "callback hash"
        elif key.startswith(swarm_key + ":"):
            kind = "swarm " + key[len(swarm_key) + 1 :]
        else:
            kind = key[len(namespace) + 1 :].split(":")[0] + f" ({r.type(key)!s})"
        groups[kind] += int(r.memory_usage(key, samples=0) or 0)
        counts[kind] += 1
    return {
        "member_key": member,
        "member_memory_usage": int(r.memory_usage(member, samples=0) or 0),
        "member_encoding": str(r.object("encoding", member)),
        "member_ttl_s": r.ttl(member),
        "member_fields": {f: len(v.encode()) for f, v in fields.items()},
        "member_values": {f: v for f, v in fields.items() if len(v) <= 80},
        "memory_usage_by_kind": {
            k: {"keys": counts[k], "bytes": groups[k]} for k, _ in groups.most_common()
        },
    }


def one(n: int, concurrency: int, monitor: bool) -> dict[str, Any]:
    server = Server()
    try:
        result = asyncio.run(measure(server, n, concurrency, monitor))
        result["redis_version"] = server.version
        return result
    finally:
        server.stop()


# -- summary -------------------------------------------------------------------------------------


def figures(run: dict[str, Any], n: int) -> dict[str, Any]:
    def window(calls: dict[str, int]) -> dict[str, Any]:
        return {
            "commands_per_task": sum(calls.values()) / n,
            "script_calls_per_task": calls.get("evalsha", 0) / n,
            "per_task": {c: v / n for c, v in calls.items()},
        }

    return {
        "total": window(run["total"]),
        "build": window(run["build"]),
        "run": window(run["run"]),
        "bytes_per_signature": run["used_memory_delta"] / n,
        "dataset_bytes_per_signature": run["used_memory_dataset_delta"] / n,
        "member_memory_usage": run["storage"]["member_memory_usage"],
        "keys_per_signature": run["keys_delta"] / n,
        "warm_bytes_per_signature": run["warm"]["used_memory_delta"] / n,
        "warm_dataset_bytes_per_signature": run["warm"]["used_memory_dataset_delta"] / n,
        "warm_commands_per_task": sum(run["warm"]["total"].values()) / n,
        "warm_script_calls_per_task": run["warm"]["total"].get("evalsha", 0) / n,
    }


def median_figures(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    out: dict[str, Any] = {}
    for w in ("total", "build", "run"):
        cmds = sorted({c for f in per_run for c in f[w]["per_task"]})
        per_task = {c: med([f[w]["per_task"].get(c, 0.0) for f in per_run]) for c in cmds}
        out[w] = {
            "commands_per_task": med([f[w]["commands_per_task"] for f in per_run]),
            "script_calls_per_task": med([f[w]["script_calls_per_task"] for f in per_run]),
            "per_task": dict(sorted(per_task.items(), key=lambda kv: -kv[1])),
        }
    for k in (
        "bytes_per_signature",
        "dataset_bytes_per_signature",
        "member_memory_usage",
        "keys_per_signature",
        "warm_bytes_per_signature",
        "warm_dataset_bytes_per_signature",
        "warm_commands_per_task",
        "warm_script_calls_per_task",
    ):
        out[k] = med([f[k] for f in per_run])
    return out


def code_identity() -> dict[str, Any]:
    pkg = Path(mageflow.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(pkg.rglob("*")):
        if path.suffix in (".py", ".lua"):
            digest.update(str(path.relative_to(pkg)).encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(pkg), *args], capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "mageflow_file": str(Path(mageflow.__file__).resolve()),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", ".")),
        "source_sha256": digest.hexdigest()[:16],
    }


def print_table(label: str, med: dict[str, Any], runs: list[dict[str, Any]], n: int) -> None:
    t = med["total"]
    calls = "script_calls_per_task"
    rows = [
        ("commands/task (sign..result)", t["commands_per_task"], TARGETS["commands_per_task"]),
        ("  of which run alone", med["run"]["commands_per_task"], None),
        ("  of which build", med["build"]["commands_per_task"], None),
        ("EVALSHA/task (sign..result)", t["script_calls_per_task"], TARGETS[calls]),
        ("  of which run alone", med["run"]["script_calls_per_task"], None),
        ("  second swarm: cmds/task", med["warm_commands_per_task"], None),
        ("  second swarm: EVALSHA/task", med["warm_script_calls_per_task"], None),
        ("bytes/finished signature", med["bytes_per_signature"], TARGETS["bytes_per_signature"]),
        ("  second swarm, same server", med["warm_bytes_per_signature"], None),
        ("MEMORY USAGE of a member", med["member_memory_usage"], None),
        ("keys/signature", med["keys_per_signature"], None),
    ]
    print(f"\n== {label}: median of {len(runs)} runs, {n} members ==")
    for name, value, target in rows:
        mark = "" if target is None else ("  ok" if value <= target else f"  MISS (≤{target:g})")
        print(f"{name:32} {value:10.2f}{mark}")
    print("breakdown per task (sign..result):")
    for cmd, v in t["per_task"].items():
        print(f"  {cmd:28} {v:8.3f}   run alone {med['run']['per_task'].get(cmd, 0.0):8.3f}")
    print("MEMORY USAGE by kind of key (first run):")
    for kind, v in runs[0]["storage"]["memory_usage_by_kind"].items():
        print(f"  {kind:28} {v['keys']:6} keys {v['bytes']:10} B  ({v['bytes'] / n:.1f} B/task)")
    fields = runs[0]["storage"]["member_fields"]
    print(f"finished member: {runs[0]['storage']['member_encoding']} encoding")
    print(
        "finished member fields (value bytes): " + ", ".join(f"{k}={v}" for k, v in fields.items())
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="current")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--no-monitor", action="store_true", help="skip the per-script MONITOR pass")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    ident = code_identity()
    print(
        f"mageflow from {ident['mageflow_file']} @ {ident['commit'][:10]}"
        f"{' (dirty)' if ident['dirty'] else ''}",
        file=sys.stderr,
    )
    runs = []
    for i in range(args.runs):
        runs.append(one(args.n, args.concurrency, monitor=False))
        f = figures(runs[-1], args.n)
        print(
            f"run {i + 1}: {f['total']['commands_per_task']:.2f} cmds/task, "
            f"{f['total']['script_calls_per_task']:.2f} evalsha/task, "
            f"{f['bytes_per_signature']:.0f} B/sig, run {runs[-1]['run_s']:.2f}s",
            file=sys.stderr,
        )
    per_run = [figures(r, args.n) for r in runs]
    med = median_figures(per_run)
    scripts = None
    if not args.no_monitor:
        mon = one(args.n, args.concurrency, monitor=True)["monitor"]
        scripts = {
            "evalsha_per_task": {s: v / args.n for s, v in mon["evalsha"].items()},
            "inside_per_task": {
                s: {c: v / args.n for c, v in cs.items()} for s, cs in mon["inside"].items()
            },
            "client_commands_per_task": {c: v / args.n for c, v in mon["client_commands"].items()},
            "hset_values_over_listpack_limit": mon["hset_values_over_listpack_limit"],
        }
    print_table(args.label, med, runs, args.n)
    if scripts:
        print("by script (MONITOR pass, per task): EVALSHA / commands inside")
        for s, v in scripts["evalsha_per_task"].items():
            inside = scripts["inside_per_task"].get(s, {})
            detail = ", ".join(f"{c} {x:.2f}" for c, x in inside.items())
            print(f"  {s:16} {v:6.3f} / {sum(inside.values()):6.2f}  ({detail})")
        other = scripts["client_commands_per_task"]
        print("  plain client commands: " + ", ".join(f"{c} {x:.3f}" for c, x in other.items()))
        long = scripts["hset_values_over_listpack_limit"]
        print(
            f"HSET values over {LISTPACK_VALUE} bytes (turn a hash into a hashtable), per task: "
            + (", ".join(f"{f} {v / args.n:.3f}" for f, v in long.items()) or "none")
        )

    data: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    data[args.label] = {
        "code": ident,
        "workload": {
            "members": args.n,
            "max_concurrency": args.concurrency,
            "success_callbacks": 1,
            "engine": "in-process",
        },
        "targets": TARGETS,
        "median": med,
        "by_script": scripts,
        "runs": runs,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"\nwrote {args.out} [{args.label}]", file=sys.stderr)


if __name__ == "__main__":
    main()
