"""Chains and swarms inside each other, up to three levels deep.

Leaf tasks log when they end; container callbacks log when they run and read the statuses of
everything under their container from Redis, so "callbacks fire only after the inner work" is
checked against the stored state, not only against the order of log lines.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from mageflow import (
    ChainSignature,
    Mageflow,
    Signature,
    SignatureStatus,
    SwarmConfig,
    SwarmSignature,
    TaskError,
    TaskFailedError,
    is_failed_result,
)

DONE, FAILED, CANCELED, PENDING = (
    SignatureStatus.DONE,
    SignatureStatus.FAILED,
    SignatureStatus.CANCELED,
    SignatureStatus.PENDING,
)


async def join(mf: Mageflow) -> None:
    await mf.engine.join()


async def status_of(mf: Mageflow, key: str) -> SignatureStatus:
    return await (await mf.load_signature(key)).astatus()


async def children(mf: Mageflow, key: str) -> list[str]:
    sig = await mf.load_signature(key)
    if isinstance(sig, ChainSignature):
        return sig.tasks
    if isinstance(sig, SwarmSignature):
        return await sig.tasks()
    return []


async def descendants(mf: Mageflow, key: str) -> list[str]:
    out: list[str] = []
    for child in await children(mf, key):
        out += [child, *await descendants(mf, child)]
    return out


class Failure(BaseModel):
    error: TaskError


class Flow:
    """Tasks for one test: ``add`` adds ``by`` to the previous result (or ``value``), ``fail``
    raises, ``cb``/``err`` are container callbacks that record what they saw."""

    def __init__(self, mf: Mageflow) -> None:
        self.mf = mf
        self.events: list[tuple[str, str]] = []
        self.received: dict[str, dict[str, Any]] = {}
        self.cb_seen: dict[str, tuple[Any, list[SignatureStatus]]] = {}
        self.errors: dict[str, list[TaskError]] = {}
        self.watch: dict[str, str] = {}  # callback label -> container key, set before the run

        @mf.task(name="add")
        async def add(msg: dict[str, Any]) -> int:
            await asyncio.sleep(float(msg.get("pause", 0)))
            self.received[msg["label"]] = dict(msg)
            self.events.append(("end", msg["label"]))
            base = msg["results"] if "results" in msg else msg["value"]
            return int(base) + int(msg.get("by", 0))

        @mf.task(name="total")
        async def total(msg: dict[str, Any]) -> int:
            self.received[msg["label"]] = dict(msg)
            self.events.append(("end", msg["label"]))
            return sum(r for r in msg["results"] if not is_failed_result(r))

        @mf.task(name="fail")
        async def fail(msg: dict[str, Any]) -> None:
            await asyncio.sleep(float(msg.get("pause", 0)))
            self.events.append(("end", msg["label"]))
            raise RuntimeError(f"{msg['label']} broke")

        @mf.task(name="cb")
        async def cb(msg: dict[str, Any]) -> None:
            label = msg["label"]
            inner = await descendants(self.mf, self.watch[label])
            self.cb_seen[label] = (msg["results"], [await status_of(self.mf, k) for k in inner])
            self.events.append(("cb", label))

        @mf.task(name="err")
        async def err(msg: Failure, ctx: Any) -> None:
            label = (await self.mf.load_signature(ctx.signature_key)).kwargs["label"]
            self.errors.setdefault(label, []).append(msg.error)

    async def step(self, label: str, task: str = "add", **kwargs: Any) -> Signature:
        return await self.mf.sign(task, label=label, **kwargs)

    async def ok(self, label: str) -> Signature:
        return await self.mf.sign("cb", label=label)

    async def err(self, label: str) -> Signature:
        return await self.mf.sign("err", label=label)

    def ended(self) -> list[str]:
        return [label for kind, label in self.events if kind == "end"]


# -- two levels -----------------------------------------------------------------------------------


async def test_chains_in_a_swarm(mf: Mageflow) -> None:
    f = Flow(mf)
    chains = [
        await mf.chain([await f.step(f"c{i}.1", by=i), await f.step(f"c{i}.2", by=10)], tag=i)
        for i in range(3)
    ]
    swarm = await mf.swarm([*chains, await f.step("solo", by=1000)], is_swarm_closed=True)
    assert await swarm.aio_run({"value": 100}) == [110, 111, 112, 1100]
    # The run message and the chain's kwargs reach each chain's first step only.
    assert f.received["c1.1"] == {"value": 100, "tag": 1, "label": "c1.1", "by": 1}
    assert f.received["c1.2"] == {"results": 101, "label": "c1.2", "by": 10}
    for key in await descendants(mf, swarm.key):
        assert await status_of(mf, key) is DONE


async def test_swarm_in_a_chain_passes_its_result_list_on(mf: Mageflow) -> None:
    f = Flow(mf)
    members = [await f.step(f"m{i}", by=i) for i in (1, 2, 3)]
    swarm = await mf.swarm(members, swarm_kw="S", is_swarm_closed=True)
    chain = await mf.chain(
        [await f.step("prep", by=5), swarm, await f.step("sum", task="total")], chain_kw="C"
    )
    assert await chain.aio_run({"value": 5}) == 10 * 3 + 6
    assert f.received["prep"] == {"value": 5, "chain_kw": "C", "label": "prep", "by": 5}
    # Members get the previous step's result, the swarm's kwargs and their own; nothing else.
    assert f.received["m2"] == {"results": 10, "swarm_kw": "S", "label": "m2", "by": 2}
    assert f.received["sum"] == {"results": [11, 12, 13], "label": "sum"}
    ended = f.ended()
    assert (ended[0], sorted(ended[1:4]), ended[4:]) == ("prep", ["m1", "m2", "m3"], ["sum"])


async def test_previous_result_reaches_chains_inside_a_swarm_step(mf: Mageflow) -> None:
    f = Flow(mf)
    inner_chain = await mf.chain([await f.step("i1", by=1), await f.step("i2", by=1)])
    swarm = await mf.swarm([inner_chain, await f.step("t", by=100)], is_swarm_closed=True)
    outer = await mf.chain([await f.step("prep", by=10), swarm, await f.step("sum", task="total")])
    assert await outer.aio_run({"value": 0}) == 12 + 110
    assert f.received["i1"] == {"results": 10, "label": "i1", "by": 1}
    assert f.received["sum"]["results"] == [12, 110]


async def test_chains_in_a_chain(mf: Mageflow) -> None:
    f = Flow(mf)
    first = await mf.chain([await f.step("a", by=1), await f.step("b", by=2)], first_kw=1)
    later = await mf.chain([await f.step("d", by=4), await f.step("e", by=5)])
    outer = await mf.chain(
        [first, await f.step("c", by=3), later, await f.step("f", by=6)], outer_kw=2
    )
    assert await outer.aio_run({"value": 0}) == 21
    assert f.ended() == ["a", "b", "c", "d", "e", "f"]
    assert f.received["a"] == {"value": 0, "outer_kw": 2, "first_kw": 1, "label": "a", "by": 1}
    assert f.received["d"] == {"results": 6, "label": "d", "by": 4}


async def test_swarm_in_a_swarm(mf: Mageflow) -> None:
    f = Flow(mf)
    inner = await mf.swarm(
        [await f.step("x0", by=1, pause=0.05), await f.step("x1", by=2)],
        inner_kw="I",
        is_swarm_closed=True,
    )
    outer = await mf.swarm([inner, await f.step("y", by=3)], outer_kw="O", is_swarm_closed=True)
    assert await outer.aio_run({"value": 10}) == [[11, 12], 13]
    # Outer kwargs and the run message reach the inner members.
    assert f.received["x1"] == {
        "value": 10,
        "outer_kw": "O",
        "inner_kw": "I",
        "label": "x1",
        "by": 2,
    }


async def test_chain_members_hold_a_swarm_slot_for_their_whole_run(mf: Mageflow) -> None:
    running = 0
    peak: list[int] = []

    @mf.task
    async def enter(msg: dict[str, Any]) -> int:
        nonlocal running
        running += 1
        peak.append(running)
        await asyncio.sleep(0.02)
        return 1

    @mf.task
    async def leave(msg: dict[str, Any]) -> int:
        nonlocal running
        await asyncio.sleep(0.02)
        running -= 1
        return int(msg["results"]) + 1

    chains = [await mf.chain([enter, leave]) for _ in range(6)]
    swarm = await mf.swarm(chains, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True)
    assert await swarm.aio_run() == [2] * 6
    assert max(peak) == 2


# -- callbacks after inner work, three levels -----------------------------------------------------


async def test_swarm_of_chains_with_a_swarm_inside_and_callbacks(mf: Mageflow) -> None:
    f = Flow(mf)
    inner = await mf.swarm(
        [await f.step(f"s{i}", by=i, pause=0.03 * (3 - i)) for i in range(3)],
        success_callbacks=[await f.ok("inner")],
        is_swarm_closed=True,
    )
    chain_a = await mf.chain(
        [await f.step("a1", by=1), await f.step("a2", by=1, pause=0.05)],
        success_callbacks=[await f.ok("chain_a")],
    )
    chain_b = await mf.chain(
        [await f.step("b1", by=100), inner, await f.step("b3", task="total")],
        success_callbacks=[await f.ok("chain_b")],
    )
    outer = await mf.swarm(
        [chain_a, chain_b], success_callbacks=[await f.ok("outer")], is_swarm_closed=True
    )
    # Keys as they are after nesting (building the tree moves signatures).
    chain_a_key, chain_b_key = await outer.tasks()
    f.watch = {
        "outer": outer.key,
        "chain_a": chain_a_key,
        "chain_b": chain_b_key,
        "inner": (await children(mf, chain_b_key))[1],
    }
    assert len(await descendants(mf, outer.key)) == 2 + 2 + 3 + 3

    assert await outer.aio_run({"value": 0}) == [2, 303]
    await join(mf)

    assert f.cb_seen["inner"][0] == [100, 101, 102]
    assert f.cb_seen["chain_a"][0] == 2
    assert f.cb_seen["chain_b"][0] == 303
    assert f.cb_seen["outer"][0] == [2, 303]
    for label, (_, seen) in f.cb_seen.items():
        assert seen and all(s is DONE for s in seen), (label, seen)
    pos = {event: i for i, event in enumerate(f.events)}
    last_end = {
        "inner": ["s0", "s1", "s2"],
        "chain_a": ["a1", "a2"],
        "chain_b": ["b1", "s0", "s1", "s2", "b3"],
        "outer": ["a1", "a2", "b1", "s0", "s1", "s2", "b3"],
    }
    for label, leaves in last_end.items():
        assert pos[("cb", label)] > max(pos[("end", leaf)] for leaf in leaves), label
    assert pos[("cb", "outer")] > max(pos[("cb", c)] for c in ("chain_a", "chain_b"))
    assert pos[("cb", "chain_b")] > pos[("cb", "inner")]
    assert len([e for e in f.events if e[0] == "cb"]) == 4


# -- failures deep inside -------------------------------------------------------------------------


async def test_deep_failure_reaches_every_enclosing_error_callback_once(mf: Mageflow) -> None:
    f = Flow(mf)
    one = SwarmConfig(stop_after_n_failures=1)
    bad = await f.step("bad", task="fail", pause=0.02)
    inner = await mf.swarm(
        [await f.step("ok", by=1), bad],
        config=one,
        error_callbacks=[await f.err("inner")],
        is_swarm_closed=True,
    )
    chain_x = await mf.chain(
        [await f.step("x1", by=1), inner, await f.step("x3", task="total")],
        error_callbacks=[await f.err("chain_x")],
        success_callbacks=[await f.ok("chain_x")],
    )
    chain_y = await mf.chain([await f.step("y1", by=1, pause=0.5), await f.step("y2", by=1)])
    middle = await mf.swarm(
        [chain_x, chain_y],
        config=one,
        error_callbacks=[await f.err("middle")],
        is_swarm_closed=True,
    )
    outer = await mf.chain(
        [middle, await f.step("after", task="total")],
        error=await f.err("outer"),
        success=await f.ok("outer"),
    )
    chain_x_key, chain_y_key = await middle.tasks()
    inner_key = (await children(mf, chain_x_key))[1]
    bad_key = (await children(mf, inner_key))[1]

    with pytest.raises(TaskFailedError) as info:
        await outer.aio_run({"value": 1})
    assert info.value.key == bad_key
    assert info.value.error_message == "bad broke"
    await asyncio.sleep(0.6)  # y1 would have finished by now if it were still running
    await join(mf)

    assert sorted(f.errors) == ["chain_x", "inner", "middle", "outer"]
    for label, errors in f.errors.items():
        assert len(errors) == 1, label
        assert (errors[0].key, errors[0].message) == (bad_key, "bad broke")
    assert f.cb_seen == {}
    assert "after" not in f.ended() and "x3" not in f.ended() and "y2" not in f.ended()
    assert [await status_of(mf, k) for k in (bad_key, inner_key, chain_x_key)] == [FAILED] * 3
    assert await middle.astatus() is FAILED
    assert await outer.astatus() is FAILED
    assert await status_of(mf, (await children(mf, chain_x_key))[2]) is PENDING
    assert await status_of(mf, chain_y_key) is CANCELED
    assert await status_of(mf, outer.tasks[1]) is PENDING


async def test_cancel_reaches_the_running_step_of_a_chain_member(mf: Mageflow) -> None:
    f = Flow(mf)
    slow_chain = await mf.chain([await f.step("slow", by=1, pause=0.4), await f.step("next", by=1)])
    swarm = await mf.swarm(
        [await f.step("boom", task="fail", pause=0.05), slow_chain],
        config=SwarmConfig(stop_after_n_failures=1),
        is_swarm_closed=True,
    )
    _, chain_key = await swarm.tasks()
    slow_key = (await children(mf, chain_key))[0]
    with pytest.raises(TaskFailedError):
        await swarm.aio_run({"value": 0})
    await asyncio.sleep(0.5)
    await join(mf)
    assert await status_of(mf, chain_key) is CANCELED
    assert "next" not in f.ended()
    # The chain was cancelled, so the step it was running must not run to the end.
    assert "slow" not in f.ended()
    assert await status_of(mf, slow_key) is CANCELED


async def test_failure_in_a_chain_inside_a_tolerant_swarm(mf: Mageflow) -> None:
    f = Flow(mf)
    broken = await mf.chain(
        [await f.step("p1", by=1), await f.step("p2", task="fail"), await f.step("p3", by=1)],
        error_callbacks=[await f.err("broken")],
    )
    fine = await mf.chain([await f.step("q1", by=1), await f.step("q2", by=1)])
    swarm = await mf.swarm(
        [broken, fine], error_callbacks=[await f.err("swarm")], is_swarm_closed=True
    )
    p2_key = (await children(mf, (await swarm.tasks())[0]))[1]
    result = await swarm.aio_run({"value": 0})
    await join(mf)
    assert result[1] == 2
    assert is_failed_result(result[0])
    assert result[0]["$mageflow_failed"]["key"] == p2_key
    assert list(f.errors) == ["broken"] and len(f.errors["broken"]) == 1
    assert "p3" not in f.ended()


async def test_handles_taken_before_nesting_still_resolve(mf: Mageflow) -> None:
    f = Flow(mf)
    step = await f.step("inner-step", by=7)
    chain = await mf.chain([step, await f.step("next", by=1)])
    swarm = await mf.swarm([chain], is_swarm_closed=True)
    assert await swarm.aio_run({"value": 1}) == [9]
    assert await chain.aresult(timeout=5) == 9
    assert await step.aresult(timeout=5) == 8
