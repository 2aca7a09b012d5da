"""``python -m bench``: every workload against every contender, several repetitions, then the
accounting pass, the TTL check, the size series of the embedded swarm and (when a target is
missed) the profiles; writes the raw JSON to bench/results/ and the report to
docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import accounting, procs, profiling, report, scaling
from bench.contenders.base import Contender, Env
from bench.contenders.mageflow import MageflowEmbedded, MageflowTaskiq
from bench.contenders.raw_taskiq import RawTaskiq
from bench.model import NEW_WORKLOADS, WORKLOADS, RunResult, Sizes
from bench.servers import RedisServer
from bench.session import run_session

REPO = procs.REPO
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"
PACKAGES = ("mageflow", "taskiq", "taskiq-redis", "celery", "kombu", "redis", "hiredis", "pydantic")


def all_contenders() -> list[Contender]:
    try:
        from bench.contenders.celery5 import Celery5
    except ImportError as exc:  # the bench extra is not installed
        print(f"Celery left out: {exc} (pip install 'mageflow[bench]')", flush=True)
        return [MageflowEmbedded(), MageflowTaskiq(1), MageflowTaskiq(2), RawTaskiq(1),
                RawTaskiq(2)]  # fmt: skip
    return [
        MageflowEmbedded(),
        MageflowTaskiq(1),
        MageflowTaskiq(2),
        RawTaskiq(1),
        RawTaskiq(2),
        Celery5(1),
        Celery5(2),
    ]


ALIASES = {
    "embedded": "mageflow-embedded",
    "mageflow": "mageflow-",
    "mf-taskiq": "mageflow-taskiq",
    "raw": "raw-taskiq",
    "taskiq": "raw-taskiq",
}


def select(contenders: list[Contender], only: str | None) -> list[Contender]:
    if not only:
        return contenders
    wanted = [ALIASES.get(w.strip(), w.strip()) for w in only.split(",") if w.strip()]
    chosen = [c for c in contenders if any(c.name.startswith(w) for w in wanted)]
    if not chosen:
        names = ", ".join(c.name for c in contenders)
        raise SystemExit(f"--only {only!r} matches no contender; choose from {names}")
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="small workloads: a smoke run")
    p.add_argument(
        "--only",
        help="contenders, comma-separated: embedded, mf-taskiq, raw, celery, "
        "or names like mageflow-taskiq-2w",
    )
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, of {','.join(WORKLOADS)}; 'new' stands for "
        f"{','.join(NEW_WORKLOADS)} (with the size series, that is the scenarios of issue 13)",
    )
    p.add_argument(
        "--scaling-sizes",
        default=None,
        help="swarm sizes of the embedded size series, comma-separated (default "
        f"{','.join(str(n) for n in scaling.SIZES)}; with --quick "
        f"{','.join(str(n) for n in scaling.QUICK_SIZES)}); it runs when the embedded "
        "contender is selected",
    )
    p.add_argument("--no-scaling", action="store_true", help="skip the size series")
    p.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default=None,
        help="py-spy profiles: when a target is missed (auto, the default), always, "
        "never (the default with --quick)",
    )
    p.add_argument("--no-profile", dest="profile", action="store_const", const="never")
    p.add_argument("--no-accounting", action="store_true", help="skip the MONITOR and TTL pass")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop starting repetitions after this long (default 18; 2 with --quick)",
    )
    p.add_argument(
        "--doc",
        type=Path,
        default=None,
        help=f"report path (default {DOC.relative_to(REPO)}; with --quick "
        "bench/results/benchmarks-quick.md)",
    )
    p.add_argument("--from-json", type=Path, help="only rewrite the report from a saved run")
    p.add_argument(
        "--reanalyze-profiles",
        action="store_true",
        help="with --from-json: summarize the run's raw py-spy files (bench/results/profiles/) "
        "again, and save the JSON with the new summaries",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, profiles)")
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{mem_kb / 2**20:.0f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
    }


def code_version() -> str:
    """The commit of the work tree, and whether mageflow/ differs from it (read-only git)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        except OSError:
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "mageflow").splitlines()]
    if not changed:
        return f"commit {commit}"
    return f"commit {commit} + uncommitted changes in {', '.join(changed)}"


def packages() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def run_reps(
    env: Env, contenders: list[Contender], workloads: list[str], reps: int, deadline: float
) -> tuple[list[RunResult], bool]:
    results: list[RunResult] = []
    for rep in range(reps):
        order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
        print(f"repetition {rep + 1}/{reps}", flush=True)
        for contender in order:
            if time.monotonic() > deadline:
                print("  time limit reached: no more runs", flush=True)
                return results, True
            results += run_session(env, contender, workloads, rep)
    return results, False


def targets_missed(data: dict[str, Any]) -> bool:
    text = "\n".join(report.targets_section(data))
    return "**missed**" in text


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        if args.reanalyze_profiles and saved.get("profiles"):
            saved["profiles"] = profiling.reanalyze(saved["profiles"], RESULTS / "profiles")
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            saved["meta"]["profiles_summarized_again"] = stamp
            args.from_json.write_text(json.dumps(saved, indent=1, default=str))
        doc = args.doc or DOC
        doc.write_text(report.render(saved, args.from_json.name))
        print(f"wrote {doc}")
        return 0
    sizes = Sizes.quick() if args.quick else Sizes()
    reps = args.reps or (1 if args.quick else 3)
    profile = args.profile or ("never" if args.quick else "auto")
    limit_min = args.max_minutes or (2.0 if args.quick else 18.0)
    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
    wanted = [n for w in wanted for n in (NEW_WORKLOADS if w == "new" else (w,))]
    unknown = [w for w in wanted if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; choose from {WORKLOADS}")
    workloads = [w for w in WORKLOADS if w in wanted]
    default_sizes = scaling.QUICK_SIZES if args.quick else scaling.SIZES
    scale_sizes = (
        scaling.parse_sizes(args.scaling_sizes) if args.scaling_sizes else list(default_sizes)
    )
    contenders = select(all_contenders(), args.only)
    procs.install_cleanup()
    started, wall = datetime.now(UTC), time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mageflow-bench-"))
    broker, state = RedisServer("broker", workdir), RedisServer("state", workdir)
    try:
        broker.start()
        state.start()
        env = Env(broker, state, workdir, sizes)
        deadline = wall + 60 * limit_min
        runs, truncated = run_reps(env, contenders, workloads, reps, deadline)
        data: dict[str, Any] = {
            "meta": {
                "date": started.strftime("%Y-%m-%d %H:%M UTC"),
                "machine": {
                    **machine(),
                    "Redis": f"{state.version()} (redis-server, 2 private "
                    "processes: broker + state, TCP 127.0.0.1, no persistence)",
                },
                "packages": packages(),
                "code": code_version(),
                "sizes": sizes.__dict__,
                "reps": reps,
                "concurrency": env.concurrency,
                "truncated": truncated,
            },
            "contenders": [
                {"name": c.name, "title": c.title, "family": c.family, "workers": c.workers}
                for c in contenders
            ],
            "workloads": workloads,
            "runs": [r.to_json() for r in runs],
        }
        if not args.no_accounting and any(c.name.startswith("mageflow") for c in contenders):
            print("accounting pass (MONITOR on the state server)", flush=True)
            counted = [w for w in workloads if w not in accounting.NOT_ACCOUNTED]
            data["accounting"] = [r.to_json() for r in accounting.account(env, contenders, counted)]
            print("done-TTL check", flush=True)
            data["keys_left"] = accounting.keys_left(env, contenders)
        if (
            not args.no_scaling
            and scale_sizes
            and any(c.name == "mageflow-embedded" for c in contenders)
        ):
            print(f"size series, embedded swarm of {scale_sizes}", flush=True)
            data["scaling"] = scaling.series(scale_sizes, workdir, env.concurrency)
        if profile == "always" or (profile == "auto" and targets_missed(data)):
            print("profiling with py-spy", flush=True)
            data["profiles"] = profiling.profile_all(env, sizes)
            shutil.copytree(workdir / "profiles", RESULTS / "profiles", dirs_exist_ok=True)
        took = time.monotonic() - wall
        shown = list(sys.argv[1:] if argv is None else argv)
        data["meta"]["run"] = (
            f"`{' '.join(['python -m bench', *shown])}`"
            + f", {reps} repetition(s), {took / 60:.1f} min"
            + (" (stopped early at the time limit)" if truncated else "")
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = f"bench-{started.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
        (RESULTS / name).write_text(json.dumps(data, indent=1, default=str))
        doc = args.doc or (RESULTS / "benchmarks-quick.md" if args.quick else DOC)
        doc.write_text(report.render(data, name))
        print(f"wrote {RESULTS / name} and {doc} in {took:.0f} s", flush=True)
        return 0
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): stopping every process the bench started")
        return 130
    finally:
        broker.stop()
        state.stop()
        procs.stop_all()
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
