"""In-process apps on the embedded Redis, as real processes: killed and restarted, run as the
README shows, and two of them sharing one data folder.

Every test runs its apps with ``REDIS_URL`` removed and ``MAGEFLOW_DATA_DIR`` set to a fresh
folder, so each app uses the private ``redis-server`` of that folder (spawned by the first app,
in a session of its own, stopped by the last app to leave). The folder is made under ``/tmp``
because the server's unix socket lives in it and socket paths must stay short.

Every wait is bounded. The ``folder`` fixture stops, by pid, every app process a test started
and every redis-server it saw on the folder (its pid is in ``<data_dir>/redis.pid`` while it
runs), then deletes the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

from mageflow.store.embedded import _answers_ping, _pid_running
from mageflow.store.schema import FAILED_MARK, Field, SignatureStatus, SubKey

REPO = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
CRASHY_SWARM = APPS / "crashy_swarm.py"
CHAIN_APP = APPS / "chain_app.py"

# What tests/apps/crashy_swarm.py builds: its members return index * 10.
SWARM_MEMBERS = 20
SWARM_CONCURRENCY = 4


def process_running(pid: int) -> bool:
    """The library's own check: a zombie (exited, not reaped yet) counts as gone."""
    return _pid_running(pid)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, app: App | None = None
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, or at once when
    ``app`` (whose output the failure then shows) exits meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if app is not None and app.proc.poll() is not None:
            code = app.proc.returncode
            raise AssertionError(f"{app.name} exited ({code}) before {what}:\n{app.output()}")
        if time.monotonic() >= deadline:
            detail = f":\n{app.output()}" if app is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(0.02)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


class App:
    """One app process; its stdout and stderr go to files, so the test can poll them."""

    def __init__(self, name: str, proc: subprocess.Popen[str], out: Path, err: Path) -> None:
        self.name, self.proc, self.out, self.err = name, proc, out, err

    def stdout_lines(self) -> list[str]:
        return lines(self.out)

    def output(self) -> str:
        return f"--- stdout\n{self.out.read_text()}--- stderr\n{self.err.read_text()}"

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s:\n{self.output()}"
            ) from None


class Folder:
    """An embedded-Redis data folder and every process a test starts on it."""

    def __init__(self, data_dir: Path, work: Path) -> None:
        self.data_dir = data_dir
        self.work = work
        self.socket = data_dir / "redis.sock"
        self.env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        self.env["MAGEFLOW_DATA_DIR"] = str(data_dir)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.env["PYTHONUNBUFFERED"] = "1"
        self.apps: list[App] = []
        self.server_pids: set[int] = set()

    def start(self, name: str, *args: str | Path, stdin: int | IO[str] | None = None) -> App:
        """Start ``python *args`` with the folder's env; stdin is empty unless given."""
        out, err = self.work / f"{name}.out", self.work / f"{name}.err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, *map(str, args)],
                cwd=self.work,  # a stray default .mageflow/ would land here, not in the repo
                env=self.env,
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=stdout,
                stderr=stderr,
                text=True,
            )
        app = App(name, proc, out, err)
        self.apps.append(app)
        return app

    def server_pid(self, timeout: float = 30.0) -> int:
        """The running server's pid, from the pidfile redis writes when it starts (and removes
        at a clean shutdown, which is why the tests read it early and keep it)."""
        pidfile = self.data_dir / "redis.pid"
        wait_for(
            lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(),
            timeout,
            "a pid in " + str(pidfile),
        )
        pid = int(pidfile.read_text().strip())
        self.server_pids.add(pid)
        return pid

    def servers(self) -> set[int]:
        """Live redis-server processes serving this folder (found by their command line, as a
        check that does not trust the pidfile)."""
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"redis-server" in cmdline and str(self.socket).encode() in cmdline:
                pid = int(entry.name)
                if process_running(pid):
                    found.add(pid)
        return found

    def answers(self) -> bool:
        """True if a server answers PING on the folder's socket."""
        return _answers_ping(self.socket)

    def stopped(self) -> bool:
        return (
            not self.answers()
            and not self.servers()
            and not any(process_running(pid) for pid in self.server_pids)
        )

    def redis(self) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(self.socket), decode_responses=True, socket_timeout=5
        )

    def cleanup(self) -> None:
        for app in self.apps:
            if app.proc.poll() is None:
                app.proc.kill()
                app.proc.wait(10)
            if app.proc.stdin is not None:
                app.proc.stdin.close()
        # A server still running (a test failed before its apps left) is killed by pid, after
        # checking that the pid is still a redis-server and was not reused meanwhile.
        for pid in self.server_pids | self.servers():
            try:
                is_redis = b"redis" in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # gone already
            if is_redis and process_running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while process_running(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Folder]:
    # Under /tmp, not tmp_path: <data_dir>/redis.sock must fit in a unix socket address.
    data_dir = Path(tempfile.mkdtemp(prefix="mf", dir="/tmp"))
    made = Folder(data_dir, tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


def test_killed_mid_swarm_then_restarted_finishes_every_member_and_callback_once(
    folder: Folder, tmp_path: Path
) -> None:
    members_log, callback_log = tmp_path / "members.log", tmp_path / "callback.log"
    key_file = tmp_path / "swarm.key"

    # 1. The app builds the swarm, starts it and keeps running it.
    first = folder.start("start", CRASHY_SWARM, "start", tmp_path)
    wait_for(key_file.exists, 60, "the swarm key", first)
    key = key_file.read_text()
    server = folder.server_pid()  # spawned by this first app

    # 2. Kill it with SIGKILL once a quarter of the members finished: members are running and
    #    queued, follow-ups may be unsent, and no exit hook runs.
    wait_for(lambda: len(lines(members_log)) >= 5, 60, "5 finished members", first)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)

    # 3. The workflow is cut off: the swarm has not finished, nor has its callback. The server,
    #    in a session of its own, outlived the killed app and still holds the state.
    assert process_running(server), "the embedded server died with the app that spawned it"
    client = folder.redis()
    try:
        swarm = client.hgetall(key)
        member_keys = client.lrange(key + SubKey.MEMBERS, 0, -1)
        member_states = [client.hget(k, Field.STATUS) for k in member_keys]
        callback_key = json.loads(swarm[Field.SUCCESS])[0]
        callback_state = client.hget(callback_key, Field.STATUS)
    finally:
        client.close()
    assert len(member_keys) == SWARM_MEMBERS
    assert swarm[Field.STATUS] != SignatureStatus.DONE, (swarm, member_states)
    assert member_states.count(SignatureStatus.DONE) < SWARM_MEMBERS, member_states
    assert callback_state != SignatureStatus.DONE
    assert lines(callback_log) == []

    # 4. The same app started again, on the same folder, finishes the swarm: recovery re-sends
    #    what was queued and re-delivers the members whose lease ran out with the dead process.
    resumed = folder.start("resume", CRASHY_SWARM, "resume", tmp_path)
    assert resumed.wait(90) == 0, resumed.output()
    out = resumed.stdout_lines()
    assert out, resumed.output()
    result = json.loads(out[-1])

    # Every member result, in the order the members were added, and none of them failed.
    assert not any(isinstance(r, dict) and FAILED_MARK in r for r in result), result
    assert result == [i * 10 for i in range(SWARM_MEMBERS)]

    # Every member body ran to its end; only a member cut off by the kill may have run twice,
    # and at most max_concurrency members were running then.
    finished = [int(line) for line in lines(members_log)]
    assert sorted(set(finished)) == list(range(SWARM_MEMBERS)), finished
    assert len(finished) <= SWARM_MEMBERS + SWARM_CONCURRENCY, finished

    # The callback ran exactly once, with the swarm's result.
    assert [json.loads(line) for line in lines(callback_log)] == [result]

    # 5. The resumed app was the last user of the server, so its exit stopped it.
    wait_for(folder.stopped, 15, f"the embedded server (pid {server}) to stop")


def test_the_readme_first_example_runs_its_callback(folder: Folder, tmp_path: Path) -> None:
    # The first python block of the README, as written, plus the line that runs it.
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert blocks, "README.md has no python block"
    script = tmp_path / "readme_first.py"
    script.write_text(blocks[0] + "\nimport asyncio; asyncio.run(main())\n")

    example = folder.start("readme", script)
    assert example.wait(90) == 0, example.output()
    out = example.stdout_lines()
    assert "42" in out, example.output()
    assert "receipt for 42 via email" in out, example.output()

    # It ran on the embedded server of the folder, and its exit stopped that server.
    assert (folder.data_dir / "redis.log").exists(), "no embedded server ran on the folder"
    wait_for(folder.stopped, 15, "the embedded server to stop")


def test_two_processes_share_one_embedded_folder(folder: Folder, tmp_path: Path) -> None:
    progress_a, progress_b = tmp_path / "a.progress", tmp_path / "b.progress"
    long_chain = 10

    # 1. App A spawns the server, runs a short chain, and stays alive until told to go.
    a = folder.start("a", CHAIN_APP, "A", "3", "0.1", progress_a, stdin=subprocess.PIPE)
    wait_for(lambda: bool(a.stdout_lines()), 60, "A's chain result", a)
    assert json.loads(a.stdout_lines()[-1]) == ["A0", "A1", "A2"]
    server = folder.server_pid()

    # 2. App B joins the same server and starts a long chain (it exits once the chain is done).
    b = folder.start("b", CHAIN_APP, "B", str(long_chain), "0.4", progress_b)
    wait_for(lambda: len(lines(progress_b)) >= 2, 60, "B to be mid-chain", b)

    # 3. A exits normally while B is still working: A's exit hooks must leave the server to B.
    assert a.proc.stdin is not None
    a.proc.stdin.write("exit\n")
    a.proc.stdin.close()
    assert a.wait(30) == 0, a.output()
    assert b.proc.poll() is None and len(lines(progress_b)) < long_chain, (
        "B finished before A left, so the test did not exercise the shared case"
    )
    assert process_running(server) and folder.answers(), (
        f"A's exit shut the server (pid {server}) down under B"
    )

    # 4. B still completes its chain, on the server A spawned, and exits 0.
    assert b.wait(60) == 0, b.output()
    assert json.loads(b.stdout_lines()[-1]) == [f"B{i}" for i in range(long_chain)]

    # 5. B was the last user: its exit stopped the server.
    wait_for(folder.stopped, 15, f"the embedded server (pid {server}) to stop")
