"""The prose of docs/benchmarks.md: how each figure is measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.model import Sizes
from bench.wiring import IDLE_TIMEOUT_MS, SOCKET_TIMEOUT_S, XREAD_BLOCK_MS

TEMPLATE = Path(__file__).with_name("method.md")

CALLS = (
    "`INFO commandstats` counts every command Redis runs, including the ones a Lua script runs "
    "and the ones queued inside MULTI/EXEC, so it cannot tell what the client sent. The bench "
    "therefore records the state server's `MONITOR` stream (in a separate, untimed pass: MONITOR "
    "slows Redis down) and counts a *call* as what a client sends: one `EVALSHA`, one "
    "`MULTI`…`EXEC` block, or one plain command. Lines MONITOR marks with the source `lua` "
    "(commands inside scripts) and the commands queued inside a transaction are not calls. "
    "Calls are not network round trips: mageflow sends the script calls of one event-loop turn "
    "as one pipeline, so round trips over the wire are fewer still. *task runs* are the "
    "EVALSHAs of a task's own life (`start_task`, `finish`, `sent` — the outbox clean-up — and "
    "`start_container`); *MULTI/EXEC* writes the signatures; *other* is mostly the client "
    "waiting: `HSET w` asks for a done notice, `HGETALL` reads the finished record, `PSUBSCRIBE` "
    "listens for notices."
)

COMMANDSTATS = (
    "Differences of `INFO commandstats` around each timed run, divided by the task executions. "
    "*state* is mageflow's state server, Celery's result backend, or the list raw Taskiq pushes "
    "results onto; *broker* carries the messages. The state counts include the commands run "
    "inside Lua scripts and MULTI/EXEC (Redis counts those too); *µs per EVALSHA* is the time "
    "Redis reports per script call, its inner commands included. Redis's whole CPU time per "
    "task is in the CPU table above."
)

MEMORY = (
    "The keys a timed run added to the state server (mageflow's namespace, or Celery's "
    "`celery-task-meta-*` results), summed with `MEMORY USAGE key SAMPLES 0` (the value, the "
    "key and its dict entry), divided by the signatures the workload wrote (swarm: members + "
    "callback + the swarm; chain: steps + the chain; callbacks: tasks + callbacks) or, for "
    "Celery, by the task results. Default TTLs (24 h), so nothing expired. Raw Taskiq keeps "
    "nothing (its results list is drained). A callback signed on its own and then attached to "
    "a task moves under the task's workflow and leaves a forwarding note at its old key (with "
    "the done TTL), hence 1.5 keys per signature in workload (c)."
)

SCALING = (
    "One run per size, each on a fresh private `redis-server`: an embedded client "
    "(`Mageflow(InProcEngine(), url)`, default TTLs) runs a warm-up swarm of 100, then "
    "`swarm([noop] x N, SwarmConfig(max_concurrency=50), success_callbacks=[collect], "
    "is_swarm_closed=True)`, timed from signing the callback to the callback's result as in "
    "(a). *µs / task* is end to end / (N + 1) task runs; *run* leaves out the build (writing "
    "the swarm), which is given per signature written. CPU is the client process "
    "(`time.process_time`) and the state server, per task run. *EVALSHA / task* and *µs each* "
    "come from `INFO commandstats` (Redis's own time per script call). Memory per finished "
    "signature (N members + callback + swarm, all finished, nothing expired): *used_memory* is "
    "the growth of everything Redis allocated (`MEMORY STATS` total.allocated, dict buckets "
    "included), *MEMORY USAGE* the sum of `MEMORY USAGE key SAMPLES 0` over the keys the swarm "
    "added. `python -m bench.scaling --sizes 1000,10000,50000` runs the series alone."
)

PROFILES = (
    "py-spy samples one process at 250 Hz while it runs full-size swarms (three for the "
    "embedded engine, two for the workers) or about a thousand chain steps; "
    "idle samples (waiting in `epoll`) are left out, so every sample is CPU time (py-spy "
    "tells idle threads by their OS state, which misses many waits on some virtual machines, "
    "so samples whose innermost frame is the selector's `select` are left out as well). "
    "*self* is the "
    "innermost frame; *inclusive* counts a function when it is anywhere on the stack. The "
    "Taskiq profiles are of the single worker process: raw Taskiq's orchestration runs in the "
    "client instead (see the CPU table for both sides)."
)


def render(sizes: Sizes, meta: dict[str, Any]) -> str:
    """The Method section, from the template ``method.md`` (``str.format`` fields)."""
    c = int(meta.get("concurrency", 50))
    return TEMPLATE.read_text().format(
        c=c,
        pool=c + 20,
        s=sizes,
        swarm_runs=sizes.swarm_n + 1,
        callback_runs=2 * sizes.callbacks_n,
        big_swarm_runs=sizes.big_swarm_n + 1,
        burst_runs=sizes.burst_n * sizes.burst_len,
        reps=meta.get("reps", "?"),
        block=XREAD_BLOCK_MS,
        socket_timeout=SOCKET_TIMEOUT_S,
        idle=IDLE_TIMEOUT_MS,
    )
