"""docs/benchmarks.md, written from the JSON a run saves (rebuilt without re-running)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import method, scaling
from bench.model import WORKLOADS, Sizes
from bench.stats import fmt, fmt_spread, median

Row = dict[str, Any]
HERE = Path(__file__).resolve().parent
RUN_SCRIPTS = ("start_task", "finish", "ack", "start_container", "swarm_add", "swarm_close")


def _runs(data: dict[str, Any], contender: str, workload: str) -> list[Row]:
    return [
        r
        for r in data["runs"]
        if r["contender"] == contender and r["workload"] == workload and r["ok"]
    ]


def _values(
    data: dict[str, Any], contender: str, workload: str, get: Callable[[Row], Any]
) -> list[float]:
    out = []
    for r in _runs(data, contender, workload):
        value = get(r)
        if value is not None:
            out.append(float(value))
    return out


def _thr(data: dict[str, Any], contender: str, workload: str) -> float:
    return median(_values(data, contender, workload, lambda r: r["throughput"]))


def _reference(contender: Row, family: str) -> str:
    return f"{family}-{max(contender['workers'], 1)}w"


def _ratio(a: float, b: float) -> str:
    return "n/a" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def results_section(data: dict[str, Any], sizes: Sizes) -> list[str]:
    out = ["## Results", ""]
    out.append(
        "Median over the repetitions, with the lowest and highest in brackets. Throughput is "
        "task executions / end-to-end time; *build* is the part of it mageflow spends storing "
        "the workflow (and, in (c), asking for done notices) before the first task starts; "
        "per-task latency is enqueue → completion (see [Method](#method)). Failed runs are "
        "listed under the table and left out of it."
    )
    for workload in WORKLOADS:
        rows = []
        failures = []
        for c in data["contenders"]:
            name = c["name"]
            if not any(r["contender"] == name and r["workload"] == workload for r in data["runs"]):
                continue
            failures += [
                f"- {name}, repetition {r['rep'] + 1}: {r['error']}"
                for r in data["runs"]
                if r["contender"] == name and r["workload"] == workload and not r["ok"]
            ]
            thr = _thr(data, name, workload)
            raw, cel = _reference(c, "raw-taskiq"), _reference(c, "celery")
            rows.append(
                [
                    c["title"],
                    fmt_spread(_values(data, name, workload, lambda r: r["throughput"])),
                    fmt_spread(_values(data, name, workload, lambda r: r["e2e_s"]), 2),
                    fmt_spread(_values(data, name, workload, lambda r: r["build_s"] or None), 2)
                    if name.startswith("mageflow")
                    else "-",
                    fmt_spread(_lat(data, name, workload, "p50"), 1),
                    fmt_spread(_lat(data, name, workload, "p99"), 1),
                    "-" if name.startswith("raw-") else _ratio(thr, _thr(data, raw, workload)),
                    "-" if name.startswith("celery") else _ratio(thr, _thr(data, cel, workload)),
                ]
            )
        if not rows:
            continue
        out += ["", f"### {sizes.title(workload)}", ""]
        header = ["contender", "tasks/s", "end to end (s)", "of which build (s)", "task p50 (ms)"]
        out += _table([*header, "task p99 (ms)", "vs raw Taskiq", "vs Celery"], rows)
        out += ["", *failures] if failures else []
    return out


def _lat(data: dict[str, Any], name: str, workload: str, key: str) -> list[float]:
    return _values(data, name, workload, lambda r: (r["latency_ms"] or {}).get(key))


def cpu_section(data: dict[str, Any]) -> list[str]:
    out = ["", "## CPU per task", ""]
    out.append(
        "CPU time (user + system, from `/proc/<pid>/stat` and `time.process_time()`) spent "
        "during the timed part of a run, divided by the task executions; medians over the "
        "repetitions, in µs. *client* is the bench process (the producer, or everything for the "
        "embedded engine), *workers* the worker processes. On this 2-core machine a total of "
        "1,000 µs per task caps throughput near 2,000 tasks/s."
    )
    parts = ("client", "workers", "broker", "state")
    for workload in WORKLOADS:
        rows = []
        for c in data["contenders"]:
            name = c["name"]
            per = {p: _cpu(data, name, workload, p) for p in parts}
            if all(math.isnan(v) for v in per.values()):
                continue
            total = sum(v for v in per.values() if not math.isnan(v))
            rows.append([c["title"], *(fmt(per[p]) for p in parts), fmt(total)])
        if rows:
            out += ["", f"**{workload}**", ""]
            header = ["contender", "client", "workers", "broker Redis", "state Redis", "total"]
            out += _table(header, rows)
    return out


def _cpu(data: dict[str, Any], name: str, workload: str, part: str) -> float:
    def get(r: Row) -> float | None:
        cpu = r["extra"].get("cpu_s")
        return 1e6 * cpu[part] / r["task_runs"] if cpu and r["task_runs"] else None

    return median(_values(data, name, workload, get))


def calls_section(data: dict[str, Any]) -> list[str]:
    out = ["", "## mageflow's state Redis", "", "### Round trips: calls made by clients", ""]
    out.append(method.CALLS)
    rows = []
    for r in data.get("accounting", []):
        if not r["ok"]:
            rows.append([r["contender"], r["workload"], "failed: " + r["error"], "", "", "", ""])
            continue
        calls: dict[str, int] = r["extra"].get("calls", {})
        n = r["task_runs"]
        run = sum(v for k, v in calls.items() if k.removeprefix("EVALSHA ") in RUN_SCRIPTS)
        build = calls.get("MULTI/EXEC", 0)
        total = sum(calls.values())
        detail = ", ".join(
            f"{k} {v / n:.2f}" for k, v in sorted(calls.items(), key=lambda x: -x[1])
        )
        rows.append(
            [
                r["contender"],
                r["workload"],
                f"**{total / n:.2f}**",
                f"{run / n:.2f}",
                f"{build / n:.3f}",
                f"{(total - run - build) / n:.2f}",
                detail,
            ]
        )
    header = ["contender", "workload", "calls / task", "task runs", "MULTI/EXEC", "other"]
    out += ["", *_table([*header, "per command (per task)"], rows)]
    out += ["", "Commands Redis ran *inside* those scripts, per task (same MONITOR pass):", ""]
    rows = []
    for r in data.get("accounting", []):
        if r["ok"] and r["contender"] == "mageflow-embedded":
            inner: dict[str, int] = r["extra"].get("in_scripts", {})
            n = r["task_runs"]
            top = sorted(inner.items(), key=lambda x: -x[1])[:8]
            text = ", ".join(f"{k.upper()} {v / n:.1f}" for k, v in top)
            rows.append([r["workload"], f"{sum(inner.values()) / n:.1f}", text])
    out += _table(["workload", "in-script commands / task", "most frequent"], rows)
    return out


def commandstats_section(data: dict[str, Any]) -> list[str]:
    out = ["", "### Commands per task (`INFO commandstats`, timed runs)", "", method.COMMANDSTATS]
    rows = []
    for workload in WORKLOADS:
        for c in data["contenders"]:
            name = c["name"]
            runs = _runs(data, name, workload)
            if not runs:
                continue

            def per(get: Callable[[Row], float], runs: list[Row] = runs) -> str:
                return fmt(median([get(r) / r["task_runs"] for r in runs]), 2)

            rows.append(
                [
                    workload,
                    c["title"],
                    per(lambda r: _sum(r["state_calls"], usec=False)),
                    per(lambda r: r["state_calls"].get("evalsha", 0)),
                    per(lambda r: r["state_calls"].get("exec", 0)),
                    _per_call(runs, "evalsha"),
                    per(lambda r: _sum(r["broker_calls"], usec=False)),
                ]
            )
    header = ["workload", "contender", "state cmds / task", "EVALSHA / task", "EXEC / task"]
    out += ["", *_table([*header, "µs per EVALSHA", "broker cmds / task"], rows)]
    return out


def _per_call(runs: list[Row], command: str) -> str:
    """Redis's own time per call of ``command`` (its inner commands included), median."""
    values = [
        r["state_calls"][f"usec:{command}"] / r["state_calls"][command]
        for r in runs
        if r["state_calls"].get(command)
    ]
    return fmt(median(values)) if values else "-"


def _sum(calls: dict[str, int], *, usec: bool) -> float:
    """Calls (or with ``usec``, microseconds) summed over every command of a commandstats diff."""
    return float(sum(v for k, v in calls.items() if k.startswith("usec:") == usec))


def memory_section(data: dict[str, Any]) -> list[str]:
    out = ["", "### Memory per finished signature", "", method.MEMORY, ""]
    rows = []
    for workload in WORKLOADS:
        for c in data["contenders"]:
            runs = [
                r for r in _runs(data, c["name"], workload) if "added_keys" in r["state_memory"]
            ]
            if not runs:
                continue
            mageflow = c["name"].startswith("mageflow")
            count = [r["signatures"] if mageflow else r["task_runs"] for r in runs]
            per = [
                r["state_memory"]["added_key_bytes"] / n for r, n in zip(runs, count, strict=True)
            ]
            keys = [r["state_memory"]["added_keys"] / n for r, n in zip(runs, count, strict=True)]
            unit = "signature" if mageflow else "task result"
            rows.append([workload, c["title"], f"{count[0]:,} x {unit}", fmt_spread(per),
                         fmt(median(keys), 2)])  # fmt: skip
    out += _table(["workload", "contender", "counted", "bytes each", "keys each"], rows)
    shapes = [
        r["extra"]["records"]
        for r in data.get("accounting", [])
        if r["ok"] and r["contender"] == "mageflow-embedded" and r["extra"].get("records")
    ]
    if shapes:
        shape = shapes[-1]
        enc = ", ".join(f"{k} {v}" for k, v in shape["encodings"].items())
        over = ", ".join(f"`{k}` in {v}" for k, v in shape["fields_over_limit"].items())
        out += [
            "",
            f"How the signature hashes are stored: of {shape['sampled']} sampled after the three "
            f"workloads, {enc} (`OBJECT ENCODING`); mean `MEMORY USAGE` "
            f"{fmt(shape['mean_bytes'])} B. Redis keeps a hash as a compact listpack only while "
            f"every value is at most `hash-max-listpack-value` = {shape['limit']} B; values over "
            f"it: {over or 'none'}.",
        ]
    return out


def keys_section(data: dict[str, Any]) -> list[str]:
    info = data.get("keys_left")
    if not info:
        return []
    out = ["", "### Keys left after the done TTL", ""]
    out.append(
        f"Small versions of the three workloads (swarm of 50, chain of 10, 50 tasks with "
        f"callbacks) with `TTLConfig(done_ttl={info['done_ttl_s']:g})`; keys of the namespace "
        f"counted {info['wait_s']:g} s after the last one finished."
    )
    rows = []
    for name, v in info.items():
        if isinstance(v, dict):
            left = ", ".join(
                f"`{k}` ({t}, ttl {v['left_ttl_ms'].get(k)})" for k, t in v["left"].items()
            )
            rows.append([name, str(v["keys_at_end"]), str(v["keys_left"]), left or "none"])
    out += ["", *_table(["contender", "keys at the end", "keys left", "which"], rows)]
    return out


def profile_section(data: dict[str, Any]) -> list[str]:
    profiles: dict[str, Any] = data.get("profiles") or {}
    if not profiles:
        return []
    out = ["", "## Profiles (py-spy)", "", method.PROFILES]
    for name, p in profiles.items():
        out += ["", f"### {name}", ""]
        if "error" in p:
            out.append(f"not profiled: {p['error']}")
            continue
        out.append(
            f"{p['samples']} samples, {p['cpu_s']:.2f} s CPU for {p['tasks']:,} task runs: "
            f"**{p['cpu_us_per_task']:.0f} µs CPU per task** in this process; "
            f"{p['in_core_pct']:.0f}% of samples have a mageflow frame on the stack"
            + (
                f" ({p['epoll_samples']} idle samples left out: waiting in `epoll`, or an "
                "executor thread waiting for work)."
                if p.get("epoll_samples")
                else "."
            )
        )
        areas = ", ".join(f"{a} {v:.0f}%" for a, v in p["areas"])
        out += ["", f"By library of the innermost frame: {areas}.", ""]
        rows = [[f"{v:.1f}%", f"`{k}`"] for k, v in p["self"][:10]]
        out += _table(["self", "function (innermost frame)"], rows)
        if p.get("paths"):
            out += [""]
            rows = [[f"{v:.1f}%", k.replace("  ", "↳ ")] for k, v in p["paths"]]
            out += _table(["inclusive", "code path"], rows)
        if p["core_inclusive"]:
            out += [""]
            rows = [[f"{v:.1f}%", f"`{k}`"] for k, v in p["core_inclusive"][:12]]
            out += _table(["inclusive", "mageflow function (anywhere on the stack)"], rows)
        if p.get("core_self"):
            out += [""]
            rows = [[f"{v:.1f}%", f"`{k}`"] for k, v in p["core_self"][:8]]
            out += _table(["self", "mageflow function (innermost frame)"], rows)
    return out


Rows = list[list[str]]


def _add(
    rows: Rows, target: str, value: float, goal: float, text: str, at_least: bool = True
) -> None:
    """A target's row, unless a contender it needs was not run."""
    if math.isnan(value) or math.isnan(goal):
        return
    ok = value >= goal if at_least else value <= goal
    rows.append([target, text, "**met**" if ok else "**missed**"])


def _workers(w: int) -> str:
    return f"{w} worker{'s' if w > 1 else ''}"


def issue13_rows(data: dict[str, Any]) -> Rows:
    """Issue 13's throughput targets: mageflow against raw Taskiq in the same run."""
    s = Sizes(**data["meta"]["sizes"])

    def e2e(name: str, workload: str) -> float:
        return median(_values(data, name, workload, lambda r: r["e2e_s"]))

    def p99(name: str, workload: str) -> float:
        return median(_lat(data, name, workload, "p99"))

    rows: Rows = []
    for w in (1, 2):
        workers = _workers(w)
        mf, raw = f"mageflow-taskiq-{w}w", f"raw-taskiq-{w}w"
        a, b = _thr(data, mf, "swarm"), _thr(data, raw, "swarm")
        goal = 0.9 if w == 1 else 1.3
        target = f"fan-out of {s.swarm_n:,} + callback on Taskiq ≥ {goal}x raw Taskiq ({workers})"
        _add(rows, target, a / b, goal, f"{fmt(a)} vs {fmt(b)} tasks/s = {_ratio(a, b)}")
    emb, raw1 = _thr(data, "mageflow-embedded", "swarm"), _thr(data, "raw-taskiq-1w", "swarm")
    client = _cpu(data, "mageflow-embedded", "swarm", "client")
    state = _cpu(data, "mageflow-embedded", "swarm", "state")
    _add(
        rows,
        "embedded default fan-out ≥ 2.5x raw Taskiq, 1 worker (about 5,000 tasks/s)",
        emb / raw1,
        2.5,
        f"{fmt(emb)} vs {fmt(raw1)} tasks/s = {_ratio(emb, raw1)}; client "
        f"process {fmt(client)} µs CPU per task (state Redis {fmt(state)})",
    )
    for w in (1, 2):
        workers = _workers(w)
        mf, raw = e2e(f"mageflow-taskiq-{w}w", "chain"), e2e(f"raw-taskiq-{w}w", "chain")
        _add(
            rows,
            f"chain of {s.chain_n} on Taskiq ≥ 1.2x raw Taskiq step by step ({workers})",
            raw / mf,
            1.2,
            f"{fmt(mf, 3)} s vs {fmt(raw, 3)} s = {_ratio(raw, mf)}",
        )
    for w in (1, 2):
        workers = _workers(w)
        mf, raw = f"mageflow-taskiq-{w}w", f"raw-taskiq-{w}w"
        a, b = _thr(data, mf, "callbacks"), _thr(data, raw, "callbacks")
        target = f"{s.callbacks_n:,} signed tasks + 1 callback each on Taskiq ≥ 1.5x raw Taskiq"
        _add(
            rows,
            f"{target} ({workers})",
            a / b,
            1.5,
            f"{fmt(a)} vs {fmt(b)} tasks/s = {_ratio(a, b)}",
        )
    for w in (1, 2):
        workers = _workers(w)
        a, b = p99(f"mageflow-taskiq-{w}w", "swarm"), p99(f"raw-taskiq-{w}w", "swarm")
        _add(
            rows,
            f"fan-out task p99 ≤ 1.5x raw Taskiq's ({workers})",
            a / b,
            1.5,
            f"{fmt(a, 1)} vs {fmt(b, 1)} ms = {_ratio(a, b)}",
            at_least=False,
        )
    ok_runs = [r for r in (data.get("scaling") or {}).get("runs", []) if "error" not in r]
    if len(ok_runs) > 1:
        lo, hi = ok_runs[0], ok_runs[-1]
        growth = hi["us_per_task"] / lo["us_per_task"]
        _add(
            rows,
            f"embedded swarm stays linear: time per task at {hi['members']:,} ≤ 1.2x at "
            f"{lo['members']:,} (the bench's reading of 'linear')",
            growth,
            1.2,
            f"{fmt(hi['us_per_task'])} vs {fmt(lo['us_per_task'])} µs per task = {growth:.2f}x",
            at_least=False,
        )
    return rows


def earlier_rows(data: dict[str, Any]) -> Rows:
    """Targets of earlier issues still worth watching."""
    earlier: Rows = []
    for w in (1, 2):
        workers = _workers(w)
        mf, cel = _thr(data, f"mageflow-taskiq-{w}w", "swarm"), _thr(data, f"celery-{w}w", "swarm")
        _add(
            earlier,
            f"swarm ≥ 3x Celery chord ({workers})",
            mf / cel,
            3.0,
            f"{fmt(mf)} vs {fmt(cel)} tasks/s = {_ratio(mf, cel)}",
        )
    for r in data.get("accounting", []):
        if r["ok"]:
            per = sum(r["extra"].get("calls", {}).values()) / r["task_runs"]
            _add(
                earlier,
                f"≤ 3 state round trips per task ({r['contender']}, {r['workload']})",
                per,
                3.0,
                f"{per:.2f} calls per task",
                at_least=False,
            )
    return earlier


def targets_section(data: dict[str, Any]) -> list[str]:
    rows, earlier = issue13_rows(data), earlier_rows(data)
    out = [
        "## Targets",
        "",
        "Reported, not asserted; targets whose contenders were not run are left out. Ratios are "
        "of medians over the repetitions of this one run (throughput, or end-to-end time for "
        "the chain: raw Taskiq's time / mageflow's).",
        "",
        "### Issue 13 (throughput)",
        "",
        *_table(["target", "measured", ""], rows),
    ]
    if earlier:
        out += ["", "### Earlier targets", "", *_table(["target", "measured", ""], earlier)]
    return out


def scaling_section(data: dict[str, Any]) -> list[str]:
    info = data.get("scaling")
    if not info:
        return []
    out = ["", "## Size series: embedded swarm at growing sizes", "", method.SCALING, ""]
    out += _table(scaling.HEADER, scaling.table(info))
    ok_runs = [r for r in info["runs"] if "error" not in r]
    if ok_runs:

        def encodings(r: Row) -> str:
            shares = r["memory"]["member_encodings"].items()
            return f"{r['members']:,}: " + ", ".join(f"{k} {v}" for k, v in shares)

        enc = "; ".join(encodings(r) for r in ok_runs)
        keys = ", ".join(f"{r['memory']['keys_per_signature']:.2f}" for r in ok_runs)
        out += [
            "",
            f"Keys per signature: {keys}. `OBJECT ENCODING` of 200 sampled finished members "
            f"({enc}).",
        ]
    return out


def machine_section(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    rows = [[k, str(v)] for k, v in m["machine"].items()]
    rows += [["packages", ", ".join(f"{k} {v}" for k, v in m["packages"].items())]]
    rows += [["mageflow code", m.get("code", "unknown")]]
    rows += [["run", m["run"]]]
    return _table(["", ""], rows)


def render(data: dict[str, Any], json_name: str) -> str:
    sizes = Sizes(**data["meta"]["sizes"])
    m = data["meta"]
    out = [
        "# Benchmarks",
        "",
        f"Written by `python -m bench` (`make bench`) on {m['date']} from "
        f"`bench/results/{json_name}` (raw data, git-ignored). Re-run it to refresh every "
        "number below; the analysis at the end is kept in `bench/analysis.md`.",
        "",
        *machine_section(data),
        "",
        *targets_section(data),
        "",
        *results_section(data, sizes),
        *cpu_section(data),
        *calls_section(data),
        *commandstats_section(data),
        *memory_section(data),
        *keys_section(data),
        *scaling_section(data),
        *profile_section(data),
        "",
        method.render(sizes, m),
    ]
    analysis = HERE / "analysis.md"
    if analysis.exists():
        out += ["", analysis.read_text().strip()]
    return "\n".join(out).rstrip() + "\n"
