"""The Taskiq engine end to end: real worker processes on a real Redis (streams) and RabbitMQ.

Workers run ``python -m mageflow.engines.taskiq_worker taskiq_app:mf`` in their own process
groups; the test process is the producer and signs tasks by name without importing the task
module. Each test has its own mageflow namespace and its own stream or queue, and every process it
starts is killed and every key and queue it made is deleted when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from taskiq_app_brokers import AMQP_URL, make_broker

from mageflow import (
    DispatchError,
    Mageflow,
    MageflowConfig,
    SignatureStatus,
    SwarmConfig,
    TaskFailedError,
    UnknownTaskError,
)
from mageflow.engines.taskiq import TaskiqEngine
from tests.conftest import sync_client

HERE = Path(__file__).parent
APP = "taskiq_app:mf"
TASKS = ["add", "boom", "double", "fail_when", "flaky", "member", "member_ok", "on_ok", "slow"]


class Cluster:
    """The worker processes of one test, and a producer client, on one namespace and queue."""

    def __init__(
        self,
        redis_url: str,
        kind: str,
        tmp: Path,
        *,
        broker_url: str = "",
        lease: float = 30.0,
        idle_ms: int = 600_000,
        xread_count: int = 4,
        run_here: bool = True,
    ) -> None:
        self.run_here = run_here
        # The workflow state on redis_url (a Redis Cluster in the cluster run), the broker's
        # stream on broker_url (always a single Redis).
        self.redis_url, self.kind, self.tmp = redis_url, kind, tmp
        self.broker_url = broker_url or redis_url
        self.lease, self.idle_ms, self.xread_count = lease, idle_ms, xread_count
        uid = uuid.uuid4().hex[:10]
        self.namespace = f"mftest-tq-{uid}"
        self.queue = f"mftest-tq-{uid}-queue"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        self.sync = sync_client(redis_url)
        self.broker = redis.Redis.from_url(self.broker_url, decode_responses=True)

    def env(self, concurrency: int = 20) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "MFT_NAMESPACE": self.namespace,
            "MFT_REDIS_URL": self.redis_url,
            "MFT_BROKER_URL": self.broker_url,
            "MFT_BROKER": self.kind,
            "MFT_QUEUE": self.queue,
            "MFT_LEASE": str(self.lease),
            "MFT_IDLE_MS": str(self.idle_ms),
            "MFT_CONCURRENCY": str(concurrency),
            "MFT_XREAD_COUNT": str(self.xread_count),
            "MFT_RUN_HERE": "1" if self.run_here else "0",
        }

    def start(
        self, workers: int = 1, concurrency: int = 20, shutdown_timeout: float = 30.0
    ) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.procs)}.log"
        args = [APP, "--workers", str(workers), "--concurrency", str(concurrency)]
        args += ["--shutdown-timeout", str(shutdown_timeout)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "mageflow.engines.taskiq_worker", *args],
            cwd=HERE,
            env=self.env(concurrency),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test can kill it and its children
        )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    async def ready(self, proc: subprocess.Popen[bytes], workers: int = 1) -> None:
        """Wait until ``proc`` (a worker or a supervisor) has ``workers`` workers consuming."""
        await until(
            lambda: self.log(proc).count("mageflow worker ready") >= workers,
            30,
            f"{workers} worker(s) of pid {proc.pid} to be ready:\n{self.all_logs()[-4000:]}",
        )

    def all_logs(self) -> str:
        return "\n".join(f"--- worker {pid} ---\n{p.read_text()}" for pid, p in self.logs.items())

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def producer(self) -> Mageflow:
        broker = make_broker(self.kind, self.queue, self.broker_url, idle_ms=self.idle_ms)
        config = MageflowConfig(namespace=self.namespace, lease_seconds=self.lease)
        return Mageflow(broker, self.redis_url, config=config)

    def key(self, *parts: object) -> str:
        return ":".join([self.namespace, "t", *map(str, parts)])

    def records(self, *parts: object) -> list[Any]:
        return [_json(v) for v in self.sync.lrange(self.key(*parts), 0, -1)]

    def pending(self) -> int:
        """Messages of the stream delivered to a worker and not acknowledged yet."""
        return int(self.broker.xpending(self.queue, f"{self.queue}-workers")["pending"])

    async def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        keys = list(self.sync.scan_iter(f"{self.namespace}:*", count=1000))
        if keys:
            self.sync.delete(*keys)
        self.broker.delete(self.queue, f"autoclaim:{self.queue}-workers:{self.queue}")
        self.sync.close()
        self.broker.close()
        if self.kind == "amqp":
            await _delete_amqp(self.queue)


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


async def _delete_amqp(queue: str) -> None:
    import aio_pika

    conn = await aio_pika.connect_robust(AMQP_URL)
    async with conn:
        channel = await conn.channel()
        for name in (queue, f"{queue}.dead"):
            await channel.queue_delete(name)
        await channel.exchange_delete(queue)


@pytest.fixture
async def clusters(
    redis_url: str, broker_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(kind: str = "stream", **kwargs: Any) -> Cluster:
        made.append(Cluster(redis_url, kind, tmp_path, broker_url=broker_url, **kwargs))
        return made[-1]

    yield make
    for cluster in made:
        await cluster.close()


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def registered(cluster: Cluster, mf: Mageflow, names: list[str] = TASKS) -> None:
    """Wait until workers have published ``names`` (so the producer can sign them by name)."""

    async def published() -> bool:
        await mf.refresh_registry()
        return all(mf.task_meta(n) is not None for n in names)

    try:
        await until(published, 30, f"workers to register {names}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.all_logs()[-4000:]}") from None


# -- (a) callbacks across processes ----------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_signature_callbacks_run_on_the_worker(clusters: Callable[..., Cluster]) -> None:
    cluster = clusters("stream")
    worker = cluster.start()
    async with cluster.producer() as mf:
        await registered(cluster, mf)
        assert "taskiq_app" not in sys.modules  # the producer never imported the task module
        assert isinstance(mf.engine, TaskiqEngine)

        ok, err = await mf.sign("on_ok", tag="ok"), await mf.sign("on_err", tag="err")
        sig = await mf.sign("double", success_callbacks=[ok], error_callbacks=[err])
        assert await sig.aio_run({"x": 21}, timeout=30) == 42

        bad_ok, bad_err = await mf.sign("on_ok", tag="bad-ok"), await mf.sign("on_err", tag="bad")
        bad = await mf.sign("boom", success_callbacks=[bad_ok], error_callbacks=[bad_err])
        with pytest.raises(TaskFailedError, match="boom 7"):
            await bad.aio_run({"x": 7}, timeout=30)

        for cb in (ok, bad_err):
            assert await (await mf.load_signature(cb.key)).aresult(timeout=30) is None
        with pytest.raises(UnknownTaskError):
            await mf.sign("no_such_task")

    assert cluster.records("double", 21) == [worker.pid]
    assert cluster.records("ok", "ok") == [{"value": 42, "pid": str(worker.pid)}]
    assert cluster.records("err", "err") == []
    assert cluster.records("err", "bad") == [{"type": "ValueError", "message": "boom 7"}]
    assert cluster.records("ok", "bad-ok") == []
    assert worker.pid != os.getpid()


@pytest.mark.timeout(120)
async def test_retries_are_sent_again_with_the_next_attempt(
    clusters: Callable[..., Cluster],
) -> None:
    cluster = clusters("stream")
    cluster.start()
    async with cluster.producer() as mf:
        await registered(cluster, mf)
        sig = await mf.sign("flaky")
        assert await sig.aio_run({"x": 5}, timeout=30) == 5
    assert [r["attempt"] for r in cluster.records("flaky", 5)] == [0, 1, 2]
    await until(lambda: cluster.pending() == 0, 10, "every attempt's message acknowledged")


# -- (b, c) chains and swarms across two workers ---------------------------------------------------


async def chain_and_swarm(cluster: Cluster, mf: Mageflow) -> set[str]:
    """Run a chain and a swarm; return the pids of the workers that ran swarm members."""
    steps = [
        await mf.sign("double"),
        await mf.sign("add", amount=1),
        await mf.sign("add", amount=10),
    ]
    chain = await mf.chain(steps, success=await mf.sign("on_ok", tag="chain"))
    assert await chain.aio_run({"x": 5}, timeout=60) == 21

    members = [await mf.sign("member", i=i, sleep=0.3) for i in range(12)]
    swarm = await mf.swarm(
        members,
        success_callbacks=[await mf.sign("on_ok", tag="swarm")],
        config=SwarmConfig(max_concurrency=12),
        is_swarm_closed=True,
    )
    expected = [i * i for i in range(12)]
    assert await swarm.aio_run({}, timeout=60) == expected

    await until(lambda: len(cluster.records("ok", "swarm")) == 1, 30, "the swarm's callback")
    assert [r["value"] for r in cluster.records("ok", "chain")] == [21]
    assert [r["value"] for r in cluster.records("ok", "swarm")] == [expected]
    steps_run = [
        cluster.records("double", 5),
        cluster.records("add", 10),
        cluster.records("add", 11),
    ]
    assert [len(runs) for runs in steps_run] == [1, 1, 1], steps_run  # each step ran once
    runs = [cluster.records("member", i) for i in range(12)]
    assert all(len(r) == 1 for r in runs), runs
    return {str(r[0]) for r in runs}


@pytest.mark.timeout(120)
async def test_chain_and_swarm_on_two_workers_redis_streams(
    clusters: Callable[..., Cluster],
) -> None:
    cluster = clusters("stream")
    supervisor = cluster.start(workers=2, concurrency=3)
    await cluster.ready(supervisor, workers=2)
    async with cluster.producer() as mf:
        await registered(cluster, mf)
        pids = await chain_and_swarm(cluster, mf)
    assert len(pids) == 2 and str(supervisor.pid) not in pids, pids
    await until(lambda: cluster.pending() == 0, 10, "every delivery acknowledged")

    # The supervisor replaces a worker that dies, and stops them all cleanly on SIGTERM.
    os.kill(int(min(pids)), signal.SIGKILL)
    await until(lambda: "replacing it" in cluster.log(supervisor), 30, "a replacement worker")
    await cluster.ready(supervisor, workers=3)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, cluster.log(supervisor)


@pytest.mark.timeout(120)
async def test_chain_and_swarm_on_two_workers_rabbitmq(clusters: Callable[..., Cluster]) -> None:
    cluster = clusters("amqp")
    supervisor = cluster.start(workers=2, concurrency=3)
    await cluster.ready(supervisor, workers=2)
    async with cluster.producer() as mf:
        await registered(cluster, mf)
        pids = await chain_and_swarm(cluster, mf)
    assert len(pids) == 2 and str(supervisor.pid) not in pids, pids
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, cluster.log(supervisor)


# -- (d) a worker killed in the middle of a swarm --------------------------------------------------


@pytest.mark.timeout(180)
async def test_swarm_completes_after_a_worker_is_killed(clusters: Callable[..., Cluster]) -> None:
    size = 200
    cluster = clusters("stream", lease=1.5, idle_ms=2000)
    victim, survivor = cluster.start(concurrency=20), cluster.start(concurrency=20)
    async with cluster.producer() as mf:
        await registered(cluster, mf)
        members = [
            await mf.sign("member", success_callbacks=[await mf.sign("member_ok", i=i)], i=i)
            for i in range(size)
        ]
        swarm = await mf.swarm(
            members,
            success_callbacks=[await mf.sign("on_ok", tag="swarm")],
            config=SwarmConfig(max_concurrency=20),
            is_swarm_closed=True,
            sleep=0.15,
        )
        started = time.monotonic()
        await swarm.aio_run_no_wait({})

        def ran() -> int:
            return sum(1 for i in range(size) if cluster.sync.exists(cluster.key("member", i)))

        await until(lambda: ran() >= 60, 60, "60 members to start")
        cluster.kill(victim)
        killed_at = time.monotonic()
        cluster.start(concurrency=20)
        try:
            results = await swarm.aresult(timeout=45)
        except TimeoutError:
            pytest.fail(await stuck_report(cluster, mf, swarm.key, [m.key for m in members]))
        elapsed = time.monotonic() - started
        records = await mf.store.load_many([m.key for m in members])

    assert results == [i * i for i in range(size)]
    assert [r.status if r else None for r in records] == [SignatureStatus.DONE.value] * size
    dead = str(victim.pid)
    rerun = []
    for i in range(size):
        runs = [str(pid) for pid in cluster.records("member", i)]
        # A member ran more than once only because the killed worker was running it.
        assert runs and all(pid == dead for pid in runs[:-1]), (i, runs)
        if len(runs) > 1:
            rerun.append(i)
        # Its callback was sent once: it ran once, or again only after dying with the worker.
        callbacks = cluster.records("member_ok", i)
        assert [c["value"] for c in callbacks][-1:] == [i * i], (i, callbacks)
        assert all(c["pid"] == dead for c in callbacks[:-1]), (i, callbacks)
    assert rerun, "the killed worker was running nothing: the test did not test recovery"
    assert [r["value"] for r in cluster.records("ok", "swarm")] == [results]
    await until(lambda: cluster.pending() == 0, 30, "every message acknowledged")
    written = len(members) * 2 + 1  # at least: each member, each callback, the swarm callback
    # Trimming is approximate (whole stream nodes of 100 entries): the last node may stay.
    await until(lambda: cluster.broker.xlen(cluster.queue) < 150, 30, "the read stream trimmed")
    assert survivor.poll() is None
    print(
        f"\nstream trimmed from {written}+ entries to {cluster.broker.xlen(cluster.queue)}; "
        f"swarm of {size}: {elapsed:.1f} s, {len(rerun)} re-run after the kill "
        f"(recovered {time.monotonic() - killed_at:.1f} s after it)"
    )


async def stuck_report(cluster: Cluster, mf: Mageflow, swarm: str, members: list[str]) -> str:
    """What a swarm that did not finish is waiting for."""
    fields = cluster.sync.hgetall(swarm)
    counters = {k: fields.get(k) for k in ("st", "running", "nok", "nfail", "total")}
    records = await mf.store.load_many(members)
    waiting = {
        r.key: {f: r.get(f) for f in ("st", "att", "env")}
        for r in records
        if r is not None and r.status != SignatureStatus.DONE.value
    }
    stream = {
        "pending": cluster.pending(),
        "length": cluster.broker.xlen(cluster.queue),
        "queued members": cluster.sync.llen(f"{swarm}:queue"),
    }
    return (
        f"swarm stuck: {counters}\nnot done: {waiting}\nstream: {stream}\n"
        f"{cluster.all_logs()[-6000:]}"
    )


# -- (e) cancel ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_cancel_stops_the_run_on_the_worker(clusters: Callable[..., Cluster]) -> None:
    cluster = clusters("stream")
    worker = cluster.start()
    async with cluster.producer() as mf:
        await registered(cluster, mf)
        sig = await mf.sign("slow", tag="c", seconds=30)
        await sig.aio_run_no_wait({})
        await until(lambda: cluster.sync.exists(cluster.key("started", "c")), 30, "slow to start")

        assert await mf.engine.cancel(sig.key)
        await until(lambda: "canceled on request" in cluster.log(worker), 10, "the cancel")
        await until(lambda: cluster.pending() == 0, 10, "the canceled message acknowledged")
        assert not cluster.sync.exists(cluster.key("finished", "c"))
        # The worker goes on serving.
        assert await (await mf.sign("double")).aio_run({"x": 4}, timeout=30) == 8
        await asyncio.sleep(1.0)
    assert not cluster.sync.exists(cluster.key("finished", "c"))
    assert worker.poll() is None


@pytest.mark.timeout(120)
async def test_failing_swarm_stops_a_member_running_on_another_worker(
    clusters: Callable[..., Cluster],
) -> None:
    # One task at a time per worker, fetching one message at a time: the two members of the
    # swarm cannot run on the same worker.
    cluster = clusters("stream", xread_count=1)
    first, second = cluster.start(concurrency=1), cluster.start(concurrency=1)
    await cluster.ready(first)
    await cluster.ready(second)
    async with cluster.producer() as mf:
        await registered(cluster, mf)
        slow = await mf.sign("slow", tag="s", seconds=30)
        swarm = await mf.swarm(
            [slow, await mf.sign("fail_when", tag="s")],
            config=SwarmConfig(stop_after_n_failures=1),
            is_swarm_closed=True,
        )
        with pytest.raises(TaskFailedError, match="s started; failing"):
            await swarm.aio_run({}, timeout=30)
        slow_pid = cluster.sync.get(cluster.key("started", "s"))
        runner, other = (first, second) if str(first.pid) == slow_pid else (second, first)
        assert str(runner.pid) == slow_pid
        assert cluster.records("fail_when", "s") == [other.pid]  # the failure came from elsewhere
        await until(lambda: "canceled on request" in cluster.log(runner), 10, "slow stopped")
        assert await (await mf.load_signature(slow.key)).astatus() is SignatureStatus.CANCELED
        await until(lambda: cluster.pending() == 0, 10, "every message acknowledged")
    assert not cluster.sync.exists(cluster.key("finished", "s"))


# -- (f) shutdown ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_sigterm_lets_running_tasks_finish(clusters: Callable[..., Cluster]) -> None:
    cluster = clusters("stream")
    worker = cluster.start()
    async with cluster.producer() as mf:
        await registered(cluster, mf)
        sig = await mf.sign("slow", tag="t", seconds=2)
        await sig.aio_run_no_wait({})
        await until(lambda: cluster.sync.exists(cluster.key("started", "t")), 30, "slow to start")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, cluster.log(worker)
        assert await sig.aresult(timeout=5) == "t"
    assert cluster.sync.exists(cluster.key("finished", "t"))
    assert "finishing running tasks" in cluster.log(worker)
    assert cluster.pending() == 0


@pytest.mark.timeout(120)
async def test_second_signal_forces_exit_and_the_task_runs_again(
    clusters: Callable[..., Cluster],
) -> None:
    cluster = clusters("stream", lease=1.5, idle_ms=2000)
    worker = cluster.start()
    async with cluster.producer() as mf:
        await registered(cluster, mf)
        sig = await mf.sign("slow", tag="f", seconds=3)
        await sig.aio_run_no_wait({})
        await until(lambda: cluster.sync.exists(cluster.key("started", "f")), 30, "slow to start")
        worker.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.5)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 1, cluster.log(worker)
        assert cluster.pending() == 1  # left unacknowledged, not dropped
        assert not cluster.sync.exists(cluster.key("finished", "f"))

        fresh = cluster.start()
        assert await sig.aresult(timeout=60) == "f"
    assert cluster.sync.get(cluster.key("finished", "f")) == str(fresh.pid)


# -- unknown task names ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_message_for_a_task_the_worker_lacks_is_dead_lettered(
    clusters: Callable[..., Cluster],
) -> None:
    """A worker that lacks the task cannot judge the signature: it acknowledges the message,
    dead-letters it with the reason and leaves the record as it was (a forged message must not
    fail a real signature)."""
    cluster = clusters("stream")
    worker = cluster.start()
    async with cluster.producer() as mf:

        @mf.task(name="producer_only")
        async def producer_only(msg: dict[str, Any]) -> None:
            raise AssertionError("runs nowhere: no worker registers it")

        await registered(cluster, mf)
        sig = await mf.sign("producer_only")
        await sig.aio_run_no_wait({})
        dead = f"{cluster.namespace}:dead"
        await until(lambda: cluster.sync.xlen(dead) == 1, 30, "the message dead-lettered")
        [(_, letter)] = cluster.sync.xrange(dead)
        assert letter["reason"] == "unknown_task" and letter["task"] == "producer_only"
        assert "registers no task 'producer_only'" in letter["detail"]
        await until(lambda: cluster.pending() == 0, 10, "the message acknowledged")
        assert (await mf.load_signature(sig.key)).status is SignatureStatus.PENDING
    log = cluster.log(worker)
    assert log.count("dead-lettered a delivery of task 'producer_only'") == 1
    assert worker.poll() is None


# -- a worker inside the caller's event loop ------------------------------------------------------


@pytest.mark.timeout(60)
async def test_worker_runs_in_the_callers_event_loop(clusters: Callable[..., Cluster]) -> None:
    cluster = clusters("stream", lease=0.5)
    mf = cluster.producer()

    @mf.task(name="nap")
    async def nap(msg: dict[str, Any]) -> int:
        await asyncio.sleep(float(msg["seconds"]))
        return 3

    await mf.start()  # started as a producer first: the worker must still run its loops
    stop = asyncio.Event()
    worker = asyncio.create_task(mf.worker(concurrency=5).run(stop))
    try:
        sig = await mf.sign("nap")
        await sig.aio_run_no_wait({"seconds": 2.0})
        await until(lambda: cluster.sync.hget(sig.key, "st") == "active", 10, "nap to start")
        await asyncio.sleep(1.2)  # beyond the 0.5 s lease: only heartbeats keep it alive
        seconds, micros = cluster.sync.time()
        lease = cluster.sync.zscore(mf.keys.shard(sig.key).leases, sig.key)
        assert int(lease or 0) > seconds * 1000 + micros // 1000
        assert await sig.aresult(timeout=30) == 3
    finally:
        stop.set()
        assert await asyncio.wait_for(worker, 30) == 0
    assert cluster.pending() == 0


# -- nothing lost between a transition and its send ------------------------------------------------


@pytest.mark.timeout(90)
async def test_a_send_the_broker_refused_is_recovered_by_a_worker(
    clusters: Callable[..., Cluster],
) -> None:
    cluster = clusters("stream", lease=1.0)
    worker = cluster.start()
    first = cluster.producer()
    await first.start()
    await registered(cluster, first)
    engine = first.engine
    assert isinstance(engine, TaskiqEngine)

    async def refused(*_: Any) -> None:
        raise ConnectionError("the broker refused the message")

    engine.send = refused  # type: ignore[method-assign]
    sig = await first.sign("double")
    with pytest.raises(DispatchError, match="sent again automatically"):
        await sig.aio_run_no_wait({"x": 4})
    await first.close()  # the producer is gone before its own retries get through
    # Nobody but the worker is left: its recovery finds the queued message and sends it.
    await until(lambda: cluster.sync.hget(sig.key, "st") == "done", 30, "the recovered run")
    assert cluster.sync.hget(sig.key, "res") == "8"
    assert cluster.records("double", 4) == [worker.pid]
