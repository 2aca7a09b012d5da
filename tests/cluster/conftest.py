"""Fixtures of the Redis Cluster tests.

``redis_cluster``: one cluster for the session, 3 masters and no replicas (or, with
``REDIS_CLUSTER_URL`` set, an ``ExistingCluster`` that only knows that URL).
``redis_cluster_ha``: a cluster of its own per test, 3 masters with a replica each, for tests
that kill nodes. Every node a fixture started is stopped by pid when it ends, pass or fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import ExistingCluster, RedisClusterHarness


@pytest.fixture(scope="session")
def redis_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisClusterHarness | ExistingCluster]:
    url = os.environ.get("REDIS_CLUSTER_URL")
    if url:
        yield ExistingCluster(url)
        return
    with RedisClusterHarness(masters=3, replicas=0, root=tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def redis_cluster_ha(tmp_path: Path) -> Iterator[RedisClusterHarness]:
    with RedisClusterHarness(masters=3, replicas=1, root=tmp_path / "cluster") as cluster:
        yield cluster
