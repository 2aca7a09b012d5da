"""Property test: random nested chains and swarms end coherently, whatever happens on the way.

Each example builds a random workflow (containers up to three deep, at most 12 tasks, some of which
fail), with success and error callbacks on every container and on some tasks. It runs it while
suspending or interrupting (then resuming) random containers at random instants, and while some
tasks deliver their own message a second time, as a redelivering broker would. Then:

* the root ends with the outcome its plan implies, and nothing is left active or paused;
* every callback fired at most once, and exactly once when its signature ended that way;
* for some examples (short done TTL), no key of the workflow is left after done_ttl.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mageflow import (
    InvalidTransitionError,
    Mageflow,
    MageflowConfig,
    Signature,
    SignatureStatus,
    SwarmConfig,
    TTLConfig,
)
from mageflow.envelope import Envelope
from tests.conftest import sync_client


@dataclass(frozen=True)
class Leaf:
    fail: bool
    cbs: bool
    dup: bool
    sleep: float


@dataclass(frozen=True)
class Box:
    kind: str  # chain | swarm
    children: tuple[Leaf | Box, ...]
    maxc: int = 1
    limit: int | None = None


Node = Leaf | Box

leaves = st.builds(
    Leaf,
    fail=st.sampled_from([False, False, True]),
    cbs=st.booleans(),
    dup=st.sampled_from([False, False, True]),
    sleep=st.sampled_from([0.0, 0.002, 0.01]),
)


def boxes(depth: int) -> st.SearchStrategy[Box]:
    inner: st.SearchStrategy[Node] = leaves if depth == 1 else st.one_of(leaves, boxes(depth - 1))
    return st.builds(
        Box,
        kind=st.sampled_from(["chain", "swarm"]),
        children=st.lists(inner, min_size=1, max_size=3).map(tuple),
        maxc=st.integers(1, 3),
        limit=st.sampled_from([None, None, 1, 2]),
    )


def size(node: Node) -> int:
    return 1 if isinstance(node, Leaf) else sum(size(c) for c in node.children)


def outcome(node: Node) -> str:
    """What the plan implies: a chain fails with its first failing step; a swarm fails only when
    its failures reach stop_after_n_failures."""
    if isinstance(node, Leaf):
        return "failed" if node.fail else "done"
    failures = sum(outcome(c) == "failed" for c in node.children)
    if node.kind == "chain":
        return "failed" if failures else "done"
    return "failed" if node.limit is not None and failures >= node.limit else "done"


controls = st.lists(
    st.tuples(
        st.sampled_from(["suspend", "interrupt"]),
        st.integers(0, 20),  # which container
        st.integers(0, 40),  # ms after the start
        st.integers(0, 30),  # ms paused
    ),
    max_size=2,
)


@dataclass
class World:
    mf: Mageflow
    fired: Counter[str] = field(default_factory=Counter)
    duplicated: set[str] = field(default_factory=set)
    extra: list[asyncio.Task[Any]] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)  # path -> node
    containers: list[str] = field(default_factory=list)  # paths

    def register(self) -> None:
        mf = self.mf

        @mf.task
        async def work(msg: dict[str, Any], ctx: Any) -> Any:
            key = ctx.signature_key
            if msg["dup"] and key not in self.duplicated:  # our message arrives once more
                self.duplicated.add(key)
                env = Envelope.from_json((await mf.store.load(key)).get("env"), key)
                again = mf.runtime.run(mf.tasks["work"], env, ctx.attempt, ctx)
                self.extra.append(asyncio.create_task(again))
            await asyncio.sleep(msg["sleep"])
            if msg["fail"]:
                raise ValueError(f"{msg['path']} fails as planned")
            return msg["path"]

        @mf.task
        async def on_ok(msg: dict[str, Any]) -> None:
            self.fired[msg["tag"]] += 1

        @mf.task
        async def on_err(msg: dict[str, Any]) -> None:
            self.fired[msg["tag"]] += 1

    async def build(self, node: Node, path: str) -> Signature:
        mf = self.mf
        self.nodes[path] = node
        cbs: dict[str, Any] = {}
        if isinstance(node, Box) or node.cbs:
            cbs["success_callbacks"] = [await mf.sign("on_ok", tag=f"{path}:ok")]
            cbs["error_callbacks"] = [await mf.sign("on_err", tag=f"{path}:err")]
        if isinstance(node, Leaf):
            plan: dict[str, Any] = {
                "fail": node.fail,
                "dup": node.dup,
                "sleep": node.sleep,
                "path": path,
            }
            return await mf.sign("work", **plan, **cbs)
        self.containers.append(path)
        kids = [await self.build(c, f"{path}.{i}") for i, c in enumerate(node.children)]
        if node.kind == "chain":
            return await mf.chain(kids, **cbs)
        config = SwarmConfig(max_concurrency=node.maxc, stop_after_n_failures=node.limit)
        return await mf.swarm(kids, config=config, is_swarm_closed=True, **cbs)

    async def keys(self, key: str, path: str, out: dict[str, str]) -> dict[str, str]:
        """Current key of every node, found from the root (handles of nested signatures are
        left behind when their parent moves)."""
        out[path] = key
        record = await self.mf.store.load(key)
        if record.kind == "chain":
            kids = record.key_list("steps")
        else:
            kids = await self.mf.store.member_keys(key) if record.kind == "swarm" else []
        for i, kid in enumerate(kids):
            await self.keys(kid, f"{path}.{i}", out)
        return out


async def apply(world: World, keys: dict[str, str], plan: list[tuple[str, int, int, int]]) -> None:
    for action, which, after_ms, pause_ms in sorted(plan, key=lambda p: p[2]):
        await asyncio.sleep(after_ms / 1000)
        sig = await world.mf.load_signature(keys[world.containers[which % len(world.containers)]])
        try:
            await getattr(sig, action)()
        except InvalidTransitionError as exc:
            ended = exc.parent_status or exc.status  # itself, or what would have started it
            assert SignatureStatus(ended).is_terminal, exc
            continue
        await asyncio.sleep(pause_ms / 1000)
        try:
            await sig.resume()
        except InvalidTransitionError as exc:  # an aborting swarm above canceled it meanwhile,
            # or a container above it ended, so it will never run
            assert exc.status == "canceled" or SignatureStatus(exc.parent_status).is_terminal, exc


async def run_example(url: str, root: Box, plan: list[Any], check_ttl: bool) -> None:
    namespace = f"mfprop-{uuid.uuid4().hex[:10]}"
    ttl = TTLConfig(active_ttl=30, done_ttl=1.0 if check_ttl else 30)
    mf = Mageflow(None, url, config=MageflowConfig(namespace=namespace, ttl=ttl))
    sync = sync_client(url)
    world = World(mf)
    world.register()
    try:
        sig = await world.build(root, "r")
        keys = await world.keys(sig.key, "r", {})
        await mf.notifier.watch(sig.key)
        await sig.aio_run_no_wait()
        await apply(world, keys, plan)
        final = await mf.notifier.wait(sig.key, timeout=5)
        await asyncio.sleep(0.05)
        await mf.engine.join()
        while not all(t.done() for t in world.extra):  # duplicates may start more work
            await asyncio.gather(*world.extra)
            await mf.engine.join()
        assert final.status == outcome(root), (final.status, final.get("error"))
        await check(world, keys)
        if check_ttl:
            await mf.close()
            await no_keys_left(sync, namespace)
    finally:
        await mf.close()
        stale = list(sync.scan_iter(f"{namespace}:*", count=1000))
        if stale:
            sync.delete(*stale)
        sync.close()


async def check(world: World, keys: dict[str, str]) -> None:
    assert all(n == 1 for n in world.fired.values()), world.fired
    for path, key in keys.items():
        node, record = world.nodes[path], await world.mf.store.load(key)
        status = record.status
        assert status in ("done", "failed", "canceled", "pending"), (path, status)
        assert status != "pending" or not record.get("ts_s"), (path, "started, never ended")
        if status in ("done", "failed"):
            assert status == outcome(node), (path, status)
        if isinstance(node, Box) or node.cbs:
            assert world.fired[f"{path}:ok"] == (status == "done"), (path, status, world.fired)
            assert world.fired[f"{path}:err"] == (status == "failed"), (path, status, world.fired)


async def no_keys_left(sync: redis.Redis, namespace: str) -> None:
    registry = [f"{namespace}:registry"]
    for _ in range(30):
        left = sorted(sync.scan_iter(f"{namespace}:*", count=1000))
        if left == registry:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"keys left after done_ttl: { {k: sync.pttl(k) for k in left} }")


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as drawn
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    root=boxes(3).filter(lambda b: size(b) <= 12),
    plan=controls,
    check_ttl=st.sampled_from([False, False, False, True]),
)
def test_random_workflows_end_coherently(
    redis_url: str, root: Box, plan: list[Any], check_ttl: bool
) -> None:
    asyncio.run(run_example(redis_url, root, plan, check_ttl))
