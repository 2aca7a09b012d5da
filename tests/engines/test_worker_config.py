"""``mageflow worker`` with settings that cannot work: one clear line, exit code 2, no traceback,
and no children started (a supervisor would otherwise restart them forever). Also: a worker
keeps the logging set up by the app it imports.

Every command runs as a subprocess of the real CLI (``python -m mageflow.cli worker``) with its
app module written into tmp_path, which is put on PYTHONPATH.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

pytest.importorskip("taskiq_redis")

EXIT_CONFIG = 2


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def env_for(tmp_path: Path) -> dict[str, str]:
    paths = [str(tmp_path), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mageflow.cli", "worker", *args]


def run_worker(tmp_path: Path, *args: str) -> tuple[int, str, float]:
    """Run ``mageflow worker ARGS`` to its end: (exit code, stdout + stderr, seconds taken)."""
    started = time.monotonic()
    done = subprocess.run(
        worker_cmd(*args),
        cwd=tmp_path,
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, time.monotonic() - started


def assert_one_clear_line(code: int, output: str, *mentions: str) -> str:
    assert code == EXIT_CONFIG, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    line = lines[0]
    assert "ERROR" in line, line
    for text in mentions:
        assert text in line, line
    return line


def write_app(tmp_path: Path, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    return name


def taskiq_app(broker_url: str, redis_url: str, namespace: str, extra: str = "") -> str:
    return f"""
import logging
from taskiq_redis import RedisStreamBroker
from mageflow import Mageflow, MageflowConfig
{extra}
broker = RedisStreamBroker(
    {broker_url!r}, queue_name={namespace + ":q"!r}, max_connection_pool_size=20
)
mf = Mageflow(broker, {redis_url!r}, config=MageflowConfig(namespace={namespace!r}))


@mf.task(name="noop")
async def noop(msg: dict) -> None:
    return None
"""


# -- the app ---------------------------------------------------------------------------------------


def test_a_target_that_cannot_be_imported(tmp_path: Path) -> None:
    code, out, _ = run_worker(tmp_path, "no_such_module_here:mf")
    assert_one_clear_line(code, out, "cannot load no_such_module_here:mf", "no module named")


def test_a_target_whose_import_raises(tmp_path: Path) -> None:
    write_app(tmp_path, "broken_app", 'raise RuntimeError("settings missing\\nsee docs")\n')
    code, out, _ = run_worker(tmp_path, "broken_app:mf")
    assert_one_clear_line(code, out, "importing broken_app raised RuntimeError: settings missing")


def test_a_target_that_is_not_a_client(tmp_path: Path) -> None:
    write_app(tmp_path, "not_a_client", "mf = 42\n")
    code, out, _ = run_worker(tmp_path, "not_a_client:mf")
    assert_one_clear_line(code, out, "not_a_client:mf is a int, not a Mageflow client")


def test_a_target_missing_its_attribute(tmp_path: Path) -> None:
    write_app(tmp_path, "empty_app", "x = 1\n")
    code, out, _ = run_worker(tmp_path, "empty_app:mf")
    assert_one_clear_line(code, out, "empty_app has no attribute 'mf'")


def test_a_client_not_on_taskiq(tmp_path: Path, redis_url: str) -> None:
    source = f"from mageflow import Mageflow\nmf = Mageflow(None, {redis_url!r})\n"
    write_app(tmp_path, "inproc_app", source)
    code, out, _ = run_worker(tmp_path, "inproc_app:mf")
    assert_one_clear_line(code, out, "does not run on Taskiq", "InProcEngine")


# -- the broker ------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "3"])
def test_an_unreachable_broker_fails_before_any_worker_starts(
    tmp_path: Path, redis_url: str, workers: str
) -> None:
    port = closed_port()
    source = taskiq_app(f"redis://127.0.0.1:{port}", redis_url, f"mftest-{uuid.uuid4().hex[:8]}")
    write_app(tmp_path, "far_broker", source)
    code, out, took = run_worker(tmp_path, "far_broker:mf", "--workers", workers)
    assert_one_clear_line(code, out, "cannot reach the broker", "RedisStreamBroker", str(port))
    assert "started worker" not in out  # the supervisor forked no child
    assert took < 30, took  # bounded: the check waits 5 s at most, a refused port not at all


def test_an_unreachable_rabbitmq_is_named_without_its_password(
    tmp_path: Path, redis_url: str
) -> None:
    pytest.importorskip("taskiq_aio_pika")
    port = closed_port()
    source = (
        "from taskiq_aio_pika import AioPikaBroker\n"
        "from mageflow import Mageflow\n"
        f"broker = AioPikaBroker('amqp://guest:s3cret@127.0.0.1:{port}/')\n"
        f"mf = Mageflow(broker, {redis_url!r})\n"
    )
    write_app(tmp_path, "far_rabbit", source)
    code, out, _ = run_worker(tmp_path, "far_rabbit:mf", "--workers", "2")
    assert_one_clear_line(code, out, "cannot reach the broker", f"amqp://127.0.0.1:{port}")
    assert "s3cret" not in out
    assert "started worker" not in out


# -- options ---------------------------------------------------------------------------------------


def test_a_bad_log_level(tmp_path: Path) -> None:
    code, out, _ = run_worker(tmp_path, "any_app:mf", "--log-level", "LOUD")
    line = assert_one_clear_line(code, out, "--log-level", "'LOUD'")
    assert "DEBUG" in line  # and it says what would do


def test_a_negative_shutdown_timeout(tmp_path: Path) -> None:
    code, out, _ = run_worker(tmp_path, "any_app:mf", "--shutdown-timeout", "-1")
    assert_one_clear_line(code, out, "--shutdown-timeout", "-1")


@pytest.mark.parametrize("option", ["--workers", "--concurrency"])
def test_zero_workers_or_concurrency(tmp_path: Path, option: str) -> None:
    code, out, _ = run_worker(tmp_path, "any_app:mf", option, "0")
    assert_one_clear_line(code, out, option, "1 or more")


# -- logging set up by the app ---------------------------------------------------------------------


def test_configure_logging_sets_up_once_per_process() -> None:
    # The second call (as from a second code path in the same process) changes nothing: not
    # the root's handlers or level, and not the mageflow logger's level either.
    script = (
        "import logging\n"
        "from mageflow.engines.worker_setup import configure_logging\n"
        "configure_logging('WARNING')\n"
        "configure_logging('DEBUG')\n"
        "root, mine = logging.getLogger(), logging.getLogger('mageflow')\n"
        "print(len(root.handlers), logging.getLevelName(root.level), mine.level)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["1", "WARNING", "0"], done.stdout + done.stderr


@pytest.fixture
def namespace_cleanup(sync_redis: redis.Redis, namespace: str) -> Iterator[str]:
    yield namespace
    keys = list(sync_redis.scan_iter(f"{namespace}:*", count=1000))
    if keys:
        sync_redis.delete(*keys)


@pytest.mark.timeout(120)
def test_the_apps_own_logging_setup_is_kept(
    tmp_path: Path, redis_url: str, namespace_cleanup: str
) -> None:
    setup = (
        'logging.basicConfig(level=logging.INFO, format="APP|%(levelname)s|%(name)s|%(message)s")'
    )
    write_app(tmp_path, "logging_app", taskiq_app(redis_url, redis_url, namespace_cleanup, setup))
    log_file = tmp_path / "worker.log"
    with log_file.open("w") as out:
        proc = subprocess.Popen(
            worker_cmd("logging_app:mf", "--shutdown-timeout", "5"),
            cwd=tmp_path,
            env=env_for(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "mageflow worker ready" not in log_file.read_text():
            assert proc.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_file.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    ready = [line for line in lines if "mageflow worker ready" in line]
    assert ready and ready[0].startswith("APP|INFO|mageflow.worker|"), lines
    # Only the app's handler wrote: no line in the worker's own format beside it.
    assert all(line.startswith("APP|") for line in lines), lines
