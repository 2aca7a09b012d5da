"""A private Redis Cluster on 127.0.0.1 for tests: start it, read its topology, break it.

Each node is a ``RedisServer`` of the fault suite (own directory and nodes.conf, AOF with
``appendfsync everysec``, no RDB) started in cluster mode, and ``redis-cli --cluster create``
joins them. Every process is stopped by its pid and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import redis
from faults.harness import RedisServer, free_port
from redis.crc import key_slot

SLOTS = 16384
BUS_OFFSET = 10000  # a node also listens on port + 10000 for the cluster bus


class Node(NamedTuple):
    """One line of CLUSTER NODES."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    slots: tuple[tuple[int, int], ...]  # inclusive ranges

    @property
    def is_live_master(self) -> bool:
        return "master" in self.flags and not self.flags & {"fail", "fail?"} and bool(self.slots)

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


def parse_nodes(text: str) -> list[Node]:
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        slots = []
        for spec in fields[8:]:
            if spec.startswith("["):  # a slot being migrated or imported: not owned yet
                continue
            lo, _, hi = spec.partition("-")
            slots.append((int(lo), int(hi or lo)))
        flags = frozenset(fields[2].split(","))
        nodes.append(Node(fields[0], port, flags, fields[3], tuple(slots)))
    return nodes


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free loopback port whose bus port is free too. Another process can still take either
    before the node binds it: the node then fails to start, and ``_start_node`` tries again."""
    for _ in range(200):
        port = free_port()
        if port + BUS_OFFSET <= 65535 and _bindable(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free pair of ports (port, port + 10000) on 127.0.0.1")


def require_binaries() -> None:
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    if missing:
        raise RuntimeError(
            f"the Redis Cluster tests need {' and '.join(missing)} on PATH: install Redis "
            "(e.g. `apt-get install redis-server`), or point REDIS_CLUSTER_URL at a cluster"
        )


def _wait(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what()}")
        time.sleep(0.05)


def store_url(url: str) -> str:
    """The URL mageflow takes for a cluster (``redis+cluster://``) from a node's ``redis://``."""
    return url.replace("redis://", "redis+cluster://", 1)


class RedisClusterHarness:
    """``masters`` masters with ``replicas`` replicas each, started by ``start()`` or ``with``."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        root: Path | None = None,
        node_timeout_ms: int = 1000,
        start_timeout: float = 30.0,
    ) -> None:
        require_binaries()
        self.masters_wanted, self.replicas = masters, replicas
        self.node_timeout_ms, self.start_timeout = node_timeout_ms, start_timeout
        self._own_root = root is None  # a directory we made is ours to delete
        self.root = Path(tempfile.mkdtemp(prefix="redis-cluster-")) if root is None else root
        self.nodes: dict[int, RedisServer] = {}  # by port
        self._lost_slots: dict[int, tuple[tuple[int, int], ...]] = {}  # of killed masters

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> RedisClusterHarness:
        try:
            for i in range(self.masters_wanted * (1 + self.replicas)):
                self._start_node(f"node-{i}")
            self._create()
            self.wait_ok(self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, name: str, attempts: int = 5) -> None:
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        # A replica however stale may be promoted: tests want a failover, not a judgement.
        args += ["--cluster-replica-validity-factor", "0"]
        # Replicas sync at once, not after the default 5 s wait for more replicas to join.
        args += ["--repl-diskless-sync-delay", "0"]
        for attempt in range(attempts):
            node = RedisServer(self.root, f"{name}-{attempt}", port=cluster_port(), extra_args=args)
            try:
                node.start()
                assert node.proc is not None
                if self._pid_on(node.port) == node.proc.pid:
                    self.nodes[node.port] = node
                    return
            except (RuntimeError, redis.RedisError):  # most likely the port was taken meanwhile
                pass
            node.kill()
        raise RuntimeError(f"could not start cluster node {name} in {attempts} attempts")

    def _pid_on(self, port: int) -> int:
        """The pid of the server answering on ``port``: ours, unless another test beat us to it."""
        with self._client(port) as r:
            return int(r.info("server")["process_id"])

    def _create(self) -> None:
        cmd = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.nodes)]
        cmd += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node by pid, SIGKILL those still up after ``timeout`` s; never raises
        for a node that is already gone."""
        procs = [n.proc for n in self.nodes.values() if n.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RedisClusterHarness:
        return self.start()

    def __exit__(
        self, exc: type[BaseException] | None, val: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses and topology --------------------------------------------------------------------

    def live_ports(self) -> list[int]:
        return [p for p, n in self.nodes.items() if n.proc is not None and n.proc.poll() is None]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.live_ports()]

    @property
    def url(self) -> str:
        """A startup node for ``RedisCluster.from_url``: the first node still running."""
        return f"redis://127.0.0.1:{self.live_ports()[0]}"

    @property
    def store_url(self) -> str:
        return store_url(self.url)

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port, decode_responses=True, socket_connect_timeout=1, socket_timeout=2
        )

    def view(self, port: int | None = None) -> list[Node]:
        """CLUSTER NODES as node ``port`` (default: the first live node) sees it."""
        with self._client(port or self.live_ports()[0]) as r:
            return parse_nodes(str(r.execute_command("CLUSTER", "NODES")))

    def masters(self) -> list[int]:
        return sorted(n.port for n in self.view() if n.is_live_master)

    def master_of_slot(self, slot: int, port: int | None = None) -> int:
        owners = [n.port for n in self.view(port) if n.is_live_master and n.owns(slot)]
        if len(owners) != 1:
            raise LookupError(f"slot {slot} has masters {owners}")
        return owners[0]

    def master_of_key(self, key: str) -> int:
        return self.master_of_slot(key_slot(key.encode()))

    # -- waiting -----------------------------------------------------------------------------------

    def _healthy(self, ports: list[int]) -> bool:
        """Every node in ``ports`` says cluster_state:ok with all slots served, they all see the
        same masters with the same slots, and every replica is linked to its master."""
        try:
            maps = set()
            for port in ports:
                with self._client(port) as r:
                    info = r.cluster("INFO")
                    if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != SLOTS:
                        return False
                    role = r.info("replication")
                    if role["role"] == "slave" and role["master_link_status"] != "up":
                        return False
                maps.add(frozenset((n.port, n.slots) for n in self.view(port) if n.is_live_master))
            return len(maps) == 1
        except (redis.RedisError, OSError):
            return False

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node reports the whole cluster healthy (see ``_healthy``)."""
        _wait(lambda: self._healthy(self.live_ports()), timeout, self._describe)

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Until every replica has acknowledged all its master wrote (say, before a kill)."""

        def caught_up() -> bool:
            try:
                for port in self.live_ports():
                    with self._client(port) as r:
                        info = r.info("replication")
                    links = [v for k, v in info.items() if re.fullmatch(r"slave\d+", k)]
                    if any(int(v["offset"]) < int(info["master_repl_offset"]) for v in links):
                        return False
                return True
            except (redis.RedisError, OSError):
                return False

        _wait(caught_up, timeout, lambda: "replicas to catch up\n" + self._describe())

    def kill_master(self, port: int) -> None:
        """SIGKILL the master on ``port`` by pid, as a crash would end it."""
        me = next(n for n in self.view(port) if "myself" in n.flags)
        assert me.is_live_master, f"{port} is not a master: {sorted(me.flags)}"
        self._lost_slots[port] = me.slots
        self.nodes[port].kill()

    def wait_for_promotion(self, dead_port: int, timeout: float = 30.0) -> int:
        """Until a replica serves the slots of the killed master ``dead_port`` and the cluster is
        healthy again on every surviving node; returns the new master's port."""
        if dead_port not in self._lost_slots:
            raise ValueError(f"{dead_port} was not killed by kill_master()")
        slots = self._lost_slots[dead_port]
        heirs: set[int] = set()

        def promoted() -> bool:
            if not self._healthy(self.live_ports()):
                return False
            heirs.clear()
            try:
                heirs.update(self.master_of_slot(lo) for lo, _ in slots)
            except (LookupError, redis.RedisError, OSError):  # the views changed meanwhile
                return False
            return len(heirs) == 1 and dead_port not in heirs

        _wait(promoted, timeout, lambda: f"a new master for {dead_port}\n" + self._describe())
        return heirs.pop()

    def restart_node(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed node again on its port and directory (so with its nodes.conf): a
        former master comes back as a replica of the one promoted in its place."""
        self.nodes[port].start()
        self.wait_ok(timeout)

    def _describe(self) -> str:
        lines = []
        for port in self.live_ports():
            try:
                with self._client(port) as r:
                    state = r.cluster("INFO")["cluster_state"]
                lines.append(f"{port}: cluster_state={state}")
            except (redis.RedisError, OSError) as exc:
                lines.append(f"{port}: {exc!r}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ExistingCluster:
    """A cluster the environment provides (``REDIS_CLUSTER_URL``): only its address is known."""

    url: str

    @property
    def store_url(self) -> str:
        return store_url(self.url)
