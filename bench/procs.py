"""Every process the bench starts, and stopping all of them on the way out, whatever happens.

Each child gets a session (and so a process group) of its own: terminal Ctrl-C does not reach it,
and stopping it signals its whole group, children included (the mageflow supervisor's workers, the
process under py-spy). ``stop_all`` runs from ``finally`` blocks, from ``atexit`` and after
SIGTERM/SIGHUP (turned into KeyboardInterrupt so the same ``finally`` blocks run).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent


class Proc:
    """A child process with its own process group and a log file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, marker: str, count: int = 1, timeout: float = 60.0) -> None:
        """Wait until ``marker`` appears ``count`` times in the log; fail if the process exits."""
        deadline = time.monotonic() + timeout
        while self.text().count(marker) < count:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                tail = self.text()[-3000:]
                raise RuntimeError(f"{self.name}: no {marker!r} in {timeout} s:\n{tail}")
            time.sleep(0.05)

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the group, wait up to ``timeout`` s, then kill it; the exit code."""
        if self.alive():
            self.signal_group(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(10)
        self.signal_group(signal.SIGKILL)  # anything left in the group (orphaned grandchildren)
        return self.popen.returncode


_running: list[Proc] = []
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one live process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def tree_cpu(roots: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for root in roots for pid in tree(root))


def spawn(name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = Proc(name, popen, log)
    _running.append(proc)
    return proc


def stop(proc: Proc, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
    try:
        return proc.stop(timeout, sig)
    finally:
        if proc in _running:
            _running.remove(proc)


def stop_all() -> None:
    """Stop every process still running, newest first (workers before the servers they use);
    further SIGINT/SIGTERM are ignored meanwhile, so a second Ctrl-C cannot cut it short."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # (only the main thread may set handlers)
            signal.signal(sig, signal.SIG_IGN)
    while _running:
        proc = _running.pop()
        with contextlib.suppress(Exception):
            proc.stop(timeout=5.0)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install_cleanup() -> None:
    atexit.register(stop_all)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of the whole machine, from /proc/stat (Linux)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


def wait_quiet(idle_share: float = 0.85, window: float = 0.2, limit: float = 5.0) -> float:
    """Wait until the machine was at least ``idle_share`` idle over ``window`` seconds (what a
    previous contender left winding down, such as Celery's pool children, would slow the next
    timed run by a third on 2 cores), for at most ``limit`` seconds; the idle share last seen."""
    if not os.path.exists("/proc/stat"):
        return 1.0
    deadline = time.monotonic() + limit
    share = 0.0
    while True:
        idle0, total0 = _cpu_times()
        time.sleep(window)
        idle1, total1 = _cpu_times()
        share = (idle1 - idle0) / max(total1 - total0, 1)
        if share >= idle_share or time.monotonic() >= deadline:
            return share
