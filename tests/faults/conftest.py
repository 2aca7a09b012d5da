"""Fixtures of the fault-injection tests: private Redis servers and worker clusters on them.

Nothing here uses the shared test Redis: each test starts the servers it breaks, and everything
it started (workers by process group, servers by pid) is killed when it ends, pass or fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import FaultCluster, RedisServer


class Faults:
    """Makes servers and clusters for one test and tears them all down after it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[RedisServer] = []
        self.clusters: list[FaultCluster] = []

    def server(self, name: str) -> RedisServer:
        server = RedisServer(self.tmp, name)
        self.servers.append(server)
        server.start()
        return server

    def cluster(
        self,
        state: RedisServer,
        broker: RedisServer | None = None,
        record: RedisServer | None = None,
        **kwargs: Any,
    ) -> FaultCluster:
        cluster = FaultCluster(self.tmp, state, broker or state, record or state, **kwargs)
        self.clusters.append(cluster)
        return cluster

    def close(self) -> None:
        for cluster in self.clusters:
            cluster.kill_workers()
        for server in self.servers:
            server.kill()


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[Faults]:
    made = Faults(tmp_path)
    try:
        yield made
    finally:
        made.close()
