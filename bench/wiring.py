"""Where one benchmark session's processes find each other, passed to workers as env variables.

Every contender gets the same two private Redis servers: the *broker* one carries messages (Redis
streams for Taskiq, lists for Celery) and the *state* one holds results (mageflow's workflow state,
Celery's result backend, the raw Taskiq results list). Keeping them apart lets ``INFO
commandstats`` of the state server count only result/state traffic.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from taskiq_redis import RedisStreamBroker

PREFIX = "BENCH_"
#: Every Taskiq contender (mageflow's engine and raw Taskiq) uses these stream settings.
IDLE_TIMEOUT_MS = 60_000
XREAD_BLOCK_MS = 2_000
SOCKET_TIMEOUT_S = 30.0  # above xread_block (redis-py 8 defaults to 5 s)


@dataclass(frozen=True)
class Wiring:
    broker_url: str
    state_url: str
    queue: str
    namespace: str = "bench"
    concurrency: int = 50
    done_ttl: float = 0.0  # 0: mageflow's default TTLs
    stamp_dir: str = ""

    def to_env(self) -> dict[str, str]:
        return {PREFIX + k.upper(): str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_env(cls) -> Wiring:
        get = os.environ.get
        return cls(
            broker_url=os.environ[PREFIX + "BROKER_URL"],
            state_url=os.environ[PREFIX + "STATE_URL"],
            queue=os.environ[PREFIX + "QUEUE"],
            namespace=get(PREFIX + "NAMESPACE", "bench"),
            concurrency=int(get(PREFIX + "CONCURRENCY", "50")),
            done_ttl=float(get(PREFIX + "DONE_TTL", "0")),
            stamp_dir=get(PREFIX + "STAMP_DIR", ""),
        )

    @property
    def group(self) -> str:
        return f"{self.queue}-workers"

    @property
    def results_key(self) -> str:
        """The list raw Taskiq workers push results onto (on the state server)."""
        return f"bench-raw-results:{self.queue}"


def stream_broker(w: Wiring) -> RedisStreamBroker:
    """The RedisStreamBroker every Taskiq contender uses, tuned as docs/engines/taskiq.md says:
    socket timeout above the block time, a pool larger than the concurrency, and
    ``xread_count`` no larger than the concurrency."""
    return RedisStreamBroker(
        w.broker_url,
        queue_name=w.queue,
        consumer_group_name=w.group,
        idle_timeout=IDLE_TIMEOUT_MS,
        xread_block=XREAD_BLOCK_MS,
        xread_count=w.concurrency,
        socket_timeout=SOCKET_TIMEOUT_S,
        max_connection_pool_size=w.concurrency + 20,
    )
