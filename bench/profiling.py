"""Where the time goes: py-spy samples of mageflow (embedded, and a Taskiq worker) and of a raw
Taskiq worker running the same swarm, summed per function and per library.

py-spy runs the target as its child (``py-spy record -- python ...``) and leaves out idle samples
(a thread waiting in ``epoll``), so a sample is CPU time of the process; samples / rate / tasks is
the CPU time one task costs that process. py-spy tells idle threads by their OS state, which does
not always work (on some virtual machines most waits in ``epoll`` come through as active), so
samples whose innermost frame is the selector's ``select`` (or an executor thread's wait for
work) are left out here too, and counted apart (``epoll_samples``). ``reanalyze`` summarizes the
raw files of a saved run again (``python -m bench --from-json ... --reanalyze-profiles``).
"""

from __future__ import annotations

import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench import procs
from bench.contenders.base import Env, Probe
from bench.contenders.mageflow import MageflowTaskiq
from bench.contenders.raw_taskiq import RawTaskiq
from bench.model import Sizes
from bench.session import wiring_for

RATE = 250
#: Innermost frames of a thread that waits: in epoll (the event loop), or an executor thread
#: blocked on its work queue.
IDLE = re.compile(r"^(\w*Selector\.select \(selectors\.py|_worker \(concurrent/futures/thread)")
FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
AREAS = (
    ("mageflow/", "mageflow"),
    ("bench/", "bench (task bodies, driver)"),
    ("redis/", "redis-py"),
    ("hiredis", "redis-py"),
    ("taskiq_redis/", "taskiq-redis"),
    ("taskiq_dependencies/", "taskiq"),
    ("taskiq/", "taskiq"),
    ("pydantic", "pydantic"),
    ("asyncio/", "asyncio"),
    ("json/", "json"),
)


#: Code paths worth naming, as (label, frames that must all be on the stack).
PATHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mageflow Runtime.run (one delivery: claim, call, finish, follow-ups)", ("Runtime.run",)),
    ("  Store.start_task (the claim, through the batcher)", ("Store.start_task",)),
    ("  Store.finish (the finish, through the batcher)", ("Store.finish",)),
    ("  Sender.send (follow-ups: engine.dispatch, start_container)", ("Sender.send",)),
    ("  build_message + task call (pydantic, the function)", ("Runtime.run", "build_message")),
    ("  TaskiqEngine.send (follow-ups kicked through taskiq)", ("TaskiqEngine.send",)),
    ("ScriptBatcher._flush (pipelines of EVALSHA on the wire)", ("ScriptBatcher._flush",)),
    ("  redis-py packing the commands (pack_command)", ("ScriptBatcher._flush", "pack_command")),
    ("  redis-py reading the replies", ("ScriptBatcher._flush", "read_response")),
    ("mageflow building signatures (Plan.commit, create_swarm)", ("Plan.commit",)),
    ("mageflow waiting (Notifier, aresult)", ("Notifier.",)),
    ("mageflow recovery and heartbeat loops", ("recovery.py",)),
    ("taskiq Receiver.callback (parse, run, ack)", ("Receiver.callback",)),
    ("  MageflowReceiver.inspect (decode, poison checks)", ("MageflowReceiver.inspect",)),
    ("  XACK through mageflow's shared client", ("ack_generator.<locals>.ack",)),
    ("XADD through mageflow's shared client (kick)", ("share_stream_client.<locals>.kick",)),
    ("taskiq-redis kick (XADD)", ("RedisStreamBroker.kick",)),
    ("taskiq-redis ack (XACK)", ("_ack_generator.<locals>._ack",)),
    ("  redis-py Redis() built per kick / ack (Redis.__init__)", ("Redis.__init__",)),
    ("taskiq fetching (Receiver.prefetcher)", ("Receiver.prefetcher",)),
    ("  mageflow's stream listener (XREADGROUP)", ("_listen (mageflow/",)),
    ("  taskiq-redis listen (XREADGROUP, XAUTOCLAIM)", ("RedisStreamBroker.listen",)),
    ("raw Taskiq result push (PushResultBackend.set_result)", ("PushResultBackend.set_result",)),
)


EMBEDDED = "mageflow embedded, swarm"
MF_SWARM = "mageflow on Taskiq, worker process, swarm"
RAW_SWARM = "raw Taskiq, worker process, swarm"
MF_CHAIN = "mageflow on Taskiq, worker process, chain"
RAW_CHAIN = "raw Taskiq, worker process, chain"
#: Each profile's raw py-spy file (in the work dir, copied to bench/results/profiles/).
FILES = {
    EMBEDDED: "embedded.txt",
    MF_SWARM: "mageflow-worker-swarm.txt",
    RAW_SWARM: "raw-worker-swarm.txt",
    MF_CHAIN: "mageflow-worker-chain.txt",
    RAW_CHAIN: "raw-worker-chain.txt",
}


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def split_frame(frame: str) -> tuple[str, str]:
    m = FRAME.match(frame)
    if not m:
        return frame, ""
    return m.group("fn"), m.group("file")


def area(file: str) -> str:
    for needle, name in AREAS:
        if needle in file:
            return name
    return "other (stdlib, uuid, logging, ...)"


def analyze(path: Path, tasks: int, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares per function, shares per library, CPU per task."""
    stacks: Counter[str] = Counter()
    waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or "_find_and_load" in stack:  # imports left out
            continue
        if IDLE.search(stack.rpartition(";")[2]):
            waiting += int(count)
            continue
        stacks[stack] += int(count)
    total = sum(stacks.values()) or 1
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    in_core = 0
    paths: Counter[str] = Counter()
    for stack, n in stacks.items():
        for label, needles in PATHS:
            if all(x in stack for x in needles):
                paths[label] += n
        frames = [split_frame(f) for f in stack.split(";")]
        fn, file = frames[-1]
        self_fn[f"{fn} ({file})"] += n
        areas[area(file)] += n
        names = {f"{f} ({p})" for f, p in frames}
        for name in names:
            incl_fn[name] += n
        in_core += n if any("mageflow/" in p for _, p in frames) else 0

    def pct(counter: Counter[str], keep: Any = None) -> list[tuple[str, float]]:
        rows = [(k, 100 * v / total) for k, v in counter.most_common() if keep is None or keep(k)]
        return rows[:top]

    def core(name: str) -> bool:  # mageflow frames, without the entry points every stack has
        return "(mageflow/" in name and incl_fn[name] < 0.95 * total

    return {
        "samples": total,
        "cpu_s": total / RATE,
        "cpu_us_per_task": 1e6 * total / RATE / max(tasks, 1),
        "tasks": tasks,
        "areas": pct(areas),
        "self": pct(self_fn),
        "core_inclusive": pct(incl_fn, core),
        "core_self": pct(self_fn, lambda k: "(mageflow/" in k),
        "paths": [(label, 100 * paths[label] / total) for label, _ in PATHS if paths[label]],
        "in_core_pct": 100 * in_core / total,
        "epoll_samples": waiting,
    }


def profile_embedded(env: Env, sizes: Sizes, repeat: int, out: Path) -> dict[str, Any]:
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not installed"}
    env.state.reset()
    argv = [
        spy,
        "record",
        "--rate",
        str(RATE),
        "--format",
        "raw",
        "-o",
        str(out),
        "--",
        sys.executable,
        "-m",
        "bench.profile_target",
        env.state.url(),
        "swarm",
        str(sizes.swarm_n),
        str(repeat),
    ]
    proc = procs.spawn("py-spy embedded", argv, out.with_suffix(".log"))
    proc.popen.wait(sizes.run_timeout * repeat)
    procs.stop(proc)
    if not out.exists():
        return {"error": f"no profile written:\n{proc.text()[-2000:]}"}
    return analyze(out, repeat * sizes.task_runs("swarm"))


def profile_worker(
    env: Env,
    contender: MageflowTaskiq | RawTaskiq,
    workload: str,
    sizes: Sizes,
    repeat: int,
    out: Path,
) -> dict[str, Any]:
    """Sample the one worker process of ``contender`` while it serves ``repeat`` runs."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not installed"}
    prefix = [spy, "record", "--rate", str(RATE), "--format", "raw", "-o", str(out), "--"]
    env.broker.reset()
    env.state.reset()
    wiring = wiring_for(env, contender, "profile")
    contender.spy_prefix = prefix
    contender.start(env, wiring)
    try:
        for i in range(repeat):
            result = contender.run(workload, i, Probe(), sizes)
            if not result.ok:
                return {"error": result.error}
    finally:
        contender.stop_signal = signal.SIGINT  # py-spy writes its file when its child exits
        contender.stop()
    if not out.exists():
        return {"error": "no profile written"}
    return analyze(out, repeat * sizes.task_runs(workload))


def profile_all(env: Env, sizes: Sizes, repeat: int = 2) -> dict[str, dict[str, Any]]:
    """The embedded swarm, and the worker process of mageflow and of raw Taskiq (one worker
    each) serving swarms and chains."""
    out = env.workdir / "profiles"
    out.mkdir(exist_ok=True)
    chains = max(1, 1000 // sizes.chain_n)  # about a thousand steps
    files = {name: out / file for name, file in FILES.items()}
    return {
        EMBEDDED: profile_embedded(env, sizes, repeat + 1, files[EMBEDDED]),
        MF_SWARM: profile_worker(env, MageflowTaskiq(1), "swarm", sizes, repeat, files[MF_SWARM]),
        RAW_SWARM: profile_worker(env, RawTaskiq(1), "swarm", sizes, repeat, files[RAW_SWARM]),
        MF_CHAIN: profile_worker(env, MageflowTaskiq(1), "chain", sizes, chains, files[MF_CHAIN]),
        RAW_CHAIN: profile_worker(env, RawTaskiq(1), "chain", sizes, chains, files[RAW_CHAIN]),
    }


def reanalyze(profiles: dict[str, dict[str, Any]], folder: Path) -> dict[str, dict[str, Any]]:
    """The summaries of a saved run, made again from its raw py-spy files in ``folder``."""
    out = {}
    for name, summary in profiles.items():
        path = folder / FILES.get(name, "")
        ok = name in FILES and path.is_file() and "tasks" in summary
        out[name] = analyze(path, summary["tasks"]) if ok else summary
    return out
