"""Size series: what one task of a swarm costs on the embedded default as the swarm grows, and
what a finished signature costs Redis in memory.

``.venv/bin/python -m bench.scaling [--sizes 1000,10000,50000] [--concurrency 50]`` runs the
series alone (``python -m bench`` runs it too, after the contenders, and puts it in the report).

For each size, one run on a fresh private ``redis-server`` (loopback, free port, no persistence,
stopped by its pid): an embedded client (``Mageflow(InProcEngine(), url)``, default TTLs, so
nothing expires), a warm-up swarm of 100 (scripts loaded, registry written, connections open),
then the measured swarm: ``swarm([noop] x N, SwarmConfig(max_concurrency=50),
success_callbacks=[collect], is_swarm_closed=True)``, timed from signing the callback to the
callback's result, as workload (a). Around it:

- time per task: end to end / task runs (N members + the callback), and the same for the run
  alone (after the swarm was written) and for the build alone per signature written;
- CPU per task of the client process (``time.process_time``) and of the state server;
- ``INFO commandstats``: EVALSHA and commands per task, and Redis's own time per EVALSHA;
- memory per finished signature (N members + callback + swarm): the growth of ``used_memory``
  (``MEMORY STATS`` total.allocated: everything Redis allocated, hash-table buckets included),
  of the dataset (``dataset.bytes`` + db 0's dict overheads), and the sum of ``MEMORY USAGE key
  SAMPLES 0`` over the keys the swarm added, each divided by the signatures written; plus
  ``OBJECT ENCODING`` of a sample of the finished members.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import procs
from bench.contenders.base import SETTLE_S, clock
from bench.contenders.mageflow import swarm_of
from bench.mf_app import embedded_client
from bench.servers import RedisServer
from bench.stats import fmt, latency_summary
from bench.wiring import Wiring

SIZES = (1000, 10_000, 50_000)
QUICK_SIZES = (200, 1000, 2000)
CONCURRENCY = 50
WARMUP = 100
RESULTS = procs.REPO / "bench" / "results"


def parse_sizes(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip() and int(x) > 0]


def _snapshot(server: RedisServer) -> dict[str, Any]:
    assert server.proc is not None
    keys, key_bytes = server.key_bytes("bench:*")
    return {
        "calls": server.command_calls(),
        "memory": server.memory(),
        "keys": keys,
        "key_bytes": key_bytes,
        "cpu_client": time.process_time(),
        "cpu_state": procs.tree_cpu([server.proc.pid]),
    }


def _encodings(server: RedisServer, keys: list[str], sample: int = 200) -> dict[str, int]:
    chosen = random.Random(0).sample(keys, min(sample, len(keys)))
    return dict(Counter(str(server.client.object("encoding", k)) for k in chosen))


async def _measure(server: RedisServer, n: int, concurrency: int, timeout: float) -> dict[str, Any]:
    wiring = Wiring(broker_url="", state_url=server.url(), queue="scaling")
    mf, engine = embedded_client(wiring)
    async with mf:
        await swarm_of(mf, WARMUP, concurrency, timeout)
        await asyncio.sleep(SETTLE_S)
        engine.sent.clear()
        engine.done.clear()
        before = _snapshot(server)
        t0 = clock()
        built, keys_fn = await asyncio.wait_for(swarm_of(mf, n, concurrency, timeout), timeout)
        e2e = clock() - t0
        cpu_client = time.process_time() - before["cpu_client"]
        await asyncio.sleep(SETTLE_S)
        after = _snapshot(server)
        members = (await keys_fn())[:-1]
    calls = {k: v - before["calls"].get(k, 0) for k, v in after["calls"].items()}
    runs, signatures = n + 1, n + 2
    lat = [(engine.done[k] - engine.sent[k]) * 1000 for k in engine.done if k in engine.sent]
    mem_before, mem_after = before["memory"], after["memory"]
    evalsha = calls.get("evalsha", 0)
    return {
        "members": n,
        "task_runs": runs,
        "signatures": signatures,
        "e2e_s": e2e,
        "build_s": built,
        "run_s": e2e - built,
        "us_per_task": 1e6 * e2e / runs,
        "run_us_per_task": 1e6 * (e2e - built) / runs,
        "build_us_per_signature": 1e6 * built / signatures,
        "throughput": runs / e2e,
        "cpu_us_per_task": {
            "client": 1e6 * cpu_client / runs,
            "state": 1e6 * (after["cpu_state"] - before["cpu_state"]) / runs,
        },
        "evalsha_per_task": evalsha / runs,
        "commands_per_task": sum(v for k, v in calls.items() if not k.startswith("usec:")) / runs,
        "us_per_evalsha": calls.get("usec:evalsha", 0) / evalsha if evalsha else None,
        "latency_ms": latency_summary(lat),
        "memory": {
            "used_memory_per_signature": (mem_after["used_memory"] - mem_before["used_memory"])
            / signatures,
            "data_per_signature": (mem_after["data"] - mem_before["data"]) / signatures,
            "memory_usage_per_signature": (after["key_bytes"] - before["key_bytes"]) / signatures,
            "keys_per_signature": (after["keys"] - before["keys"]) / signatures,
            "member_encodings": _encodings(server, members),
        },
    }


def run_one(n: int, workdir: Path, concurrency: int = CONCURRENCY, timeout: float = 600.0) -> dict:
    """One measured swarm of ``n`` members on its own fresh redis-server."""
    server = RedisServer(f"scaling-{n}", workdir)
    server.start()
    try:
        result = asyncio.run(_measure(server, n, concurrency, timeout))
        result["redis"] = server.version()
        return result
    except Exception as exc:  # reported, the series goes on
        return {"members": n, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


def describe(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"swarm of {r['members']:,}: FAILED {r['error']}"
    m = r["memory"]
    return (
        f"swarm of {r['members']:,}: {r['e2e_s']:.2f} s (build {r['build_s']:.2f} s), "
        f"{r['us_per_task']:.0f} µs/task, client CPU {r['cpu_us_per_task']['client']:.0f} µs/task, "
        f"{m['used_memory_per_signature']:.0f} B used_memory / signature, "
        f"{m['memory_usage_per_signature']:.0f} B MEMORY USAGE / signature"
    )


def series(
    sizes: list[int], workdir: Path, concurrency: int = CONCURRENCY, log: Any = print
) -> dict[str, Any]:
    runs = []
    for n in sizes:
        runs.append(run_one(n, workdir, concurrency))
        log(f"  scaling {describe(runs[-1])}", flush=True)
    return {"concurrency": concurrency, "warmup": WARMUP, "runs": runs}


def table(data: dict[str, Any]) -> list[list[str]]:
    """Rows for the report (see report.scaling_section)."""
    rows = []
    for r in data["runs"]:
        if "error" in r:
            rows.append([f"{r['members']:,}", f"failed: {r['error']}", *[""] * 10])
            continue
        m, cpu, lat = r["memory"], r["cpu_us_per_task"], r["latency_ms"]
        rows.append(
            [
                f"{r['members']:,}",
                f"{r['e2e_s']:.2f}",
                f"{r['build_s']:.2f}",
                fmt(r["us_per_task"]),
                fmt(r["run_us_per_task"]),
                fmt(r["build_us_per_signature"]),
                fmt(cpu["client"]),
                fmt(cpu["state"]),
                f"{r['evalsha_per_task']:.2f} / {fmt(r['us_per_evalsha'] or float('nan'))}",
                f"{fmt(lat.get('p50', float('nan')), 1)} / {fmt(lat.get('p99', float('nan')), 1)}",
                fmt(m["used_memory_per_signature"]),
                fmt(m["memory_usage_per_signature"]),
            ]
        )
    return rows


HEADER = [
    "members",
    "end to end (s)",
    "of which build (s)",
    "µs / task",
    "run µs / task",
    "build µs / signature",
    "client CPU µs / task",
    "state Redis CPU µs / task",
    "EVALSHA / task, µs each",
    "task p50 / p99 (ms)",
    "used_memory B / signature",
    "MEMORY USAGE B / signature",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(str(n) for n in SIZES))
    ap.add_argument("--concurrency", type=int, default=CONCURRENCY)
    ap.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/...)")
    args = ap.parse_args()
    procs.install_cleanup()
    workdir = Path(tempfile.mkdtemp(prefix="mageflow-scaling-"))
    try:
        data = series(parse_sizes(args.sizes), workdir, args.concurrency)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(" | ".join(HEADER))
    for row in table(data):
        print(" | ".join(row))
    out = args.out or RESULTS / f"scaling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
