"""Junk on the wire and forged state, against a real standalone Taskiq worker.

Every kind of poison delivery is put straight onto the broker's stream, as any client of that
Redis could, while a swarm runs and a task longer than its lease holds a slot. Each must be
acknowledged, dead-lettered once with its reason, logged once at ERROR, and leave the record it
names exactly as it was; the swarm must complete with every callback once, the long task must
keep its lease (run once), and the worker must not exit.

A second scenario forges a record's ``model`` field to name a module the worker never imported:
the worker must not import it (data in Redis never chooses code) and the signature fails cleanly,
its error callback firing once.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from typing import Any

import pytest
from conftest import Faults
from harness import FaultCluster, snapshot, taskiq_message, until

from mageflow import Mageflow, MageflowConfig, SignatureStatus, SwarmConfig, TaskFailedError

SIZE = 12


def poison_entries(cluster: FaultCluster, keys: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(expected reason, stream entry fields) for each kind of junk."""
    ok_env = {"sig": keys["member"], "input": {"x": 1}}

    def msg(task: str, kwargs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"data": taskiq_message(task, kwargs, **extra)}

    def double(envelope: Any, attempt: Any = 0, **more: Any) -> dict[str, Any]:
        return msg("double", {"envelope": envelope, "attempt": attempt, **more})

    return [
        ("no_data", {"payload": "x"}),
        ("undecodable", {"data": b"\x00\xffnot json"}),
        ("undecodable", {"data": b"[1, 2]"}),
        ("undecodable", {"data": b'{"task_name": 5}'}),
        (
            "bad_label",
            msg("double", {"envelope": ok_env}, labels={"ack_type": "manual", "timeout": "soon"}),
        ),
        ("bad_label", msg("double", {"envelope": ok_env}, labels={"ack_type": "bogus"})),
        ("unknown_task", msg("nope", {"envelope": ok_env, "attempt": 0})),
        ("bad_envelope", double([1, 2])),
        ("bad_envelope", double({"input": {}})),
        ("bad_envelope", double({"sig": keys["fresh"], "input": "text"})),
        ("bad_envelope", double({"sig": keys["fresh"], "input": {}}, 0, extra=1)),
        ("bad_attempt", double({"sig": keys["fresh"], "input": {}}, -5)),
        ("bad_attempt", double({"sig": keys["fresh"], "input": {}}, 10**6)),
        ("bad_attempt", double({"sig": keys["fresh"], "input": {}}, "0")),
        ("foreign_key", double({"sig": keys["other_ns"], "input": {"x": 1}})),
        ("foreign_key", double({"sig": "not-even-a-key", "input": {}})),
        ("not_a_record", double({"sig": keys["string"], "input": {}})),
        ("not_a_record", double({"sig": keys["unmarked"], "input": {}})),
        ("wrong_task", double({"sig": keys["member"], "input": {"x": 1}})),
        ("missing_signature", double({"sig": keys["missing"], "input": {"x": 1}})),
    ]


@pytest.mark.timeout(120)
async def test_every_poison_kind_is_dead_lettered_and_nothing_else_changes(faults: Faults) -> None:
    server = faults.server("redis")
    cluster = faults.cluster(server, lease=2.0, grace=2.0)
    worker = cluster.start_worker(concurrency=3)
    await cluster.ready(worker)
    other_ns = MageflowConfig(namespace=f"{cluster.namespace}-other")
    async with cluster.producer() as mf, Mageflow(None, server.url, config=other_ns) as other:

        @other.task(name="double")
        async def double_b(msg: dict[str, Any]) -> None:  # only so `other` can sign it
            raise AssertionError("never run")

        await cluster.registered(mf)
        ns = cluster.namespace
        keys = {
            "member": (await mf.sign("member", i=99)).key,  # a real record of another task
            "fresh": (await mf.sign("double")).key,  # a real record the junk must not start
            "other_ns": (await other.sign("double", x=1)).key,
            "string": f"{ns}:sig:{{junk}}:a1b2c3",
            "unmarked": f"{ns}:sig:{{junk}}:d4e5f6",
            "missing": f"{ns}:sig:{{gone}}:0123456789abcdef",
        }
        with server.client() as r:
            r.set(keys["string"], "not a record", ex=600)
            r.hset(keys["unmarked"], mapping={"status": "pending", "task": "double"})
            r.expire(keys["unmarked"], 600)
            before = {name: snapshot(r, key) for name, key in keys.items()}

        slow = await mf.sign("slow", tag="lease", seconds=5.0)  # 2.5 leases: must keep its lease
        await slow.aio_run_no_wait({})
        members = [
            await mf.sign("member", success_callbacks=[await mf.sign("member_ok", i=i)], i=i)
            for i in range(SIZE)
        ]
        swarm = await mf.swarm(
            members,
            success_callbacks=[await mf.sign("swarm_ok", tag="swarm")],
            config=SwarmConfig(max_concurrency=2),
            is_swarm_closed=True,
            sleep=0.2,
        )
        await swarm.aio_run_no_wait({})

        entries = poison_entries(cluster, keys)
        for _reason, fields in entries:  # interleaved with the swarm's own messages
            cluster.xadd(fields)
            await asyncio.sleep(0.02)

        assert await swarm.aresult(timeout=60) == [i * i for i in range(SIZE)]
        assert await slow.aresult(timeout=30) == "lease"
        await until(lambda: cluster.pending() == 0, 30, "every delivery acknowledged")
        await until(lambda: len(cluster.dead_letters()) >= len(entries), 30, "every letter written")

        letters = cluster.dead_letters()
        assert Counter(d["reason"] for d in letters) == Counter(r for r, _ in entries), letters
        by_key = {d["key"]: d for d in letters if d["key"]}
        assert by_key[keys["member"]]["task"] == "double"  # wrong_task names both sides
        assert "'member'" in by_key[keys["member"]]["detail"]
        assert by_key[keys["other_ns"]]["reason"] == "foreign_key"

        with server.client() as r:
            after = {name: snapshot(r, key) for name, key in keys.items()}
        for name in keys:  # same type and contents; the TTL only ran down
            assert after[name][:2] == before[name][:2], name
            assert (after[name][2] < 0) == (before[name][2] < 0), name
        assert (await mf.load_signature(keys["fresh"])).status is SignatureStatus.PENDING

    for i in range(SIZE):
        assert len(cluster.records("member", i)) == 1, i
        assert [c["value"] for c in cluster.records("member_ok", i)] == [i * i], i
    assert len(cluster.records("swarm_ok", "swarm")) == 1
    assert len(cluster.records("slow_started", "lease")) == 1, "the long task lost its lease"
    assert worker.poll() is None, cluster.log(worker)[-4000:]
    log = cluster.log(worker)
    assert log.count("dead-lettered a delivery") == len(entries), log[-6000:]
    print(
        f"\n{len(entries)} poison deliveries of {len(set(r for r, _ in entries))} kinds "
        f"dead-lettered; swarm of {SIZE} complete; worker alive"
    )


@pytest.mark.timeout(90)
async def test_a_forged_model_field_imports_nothing(faults: Faults) -> None:
    server = faults.server("redis")
    cluster = faults.cluster(server, lease=2.0, grace=2.0)
    worker: subprocess.Popen[bytes] = cluster.start_worker(concurrency=2)
    await cluster.ready(worker)
    async with cluster.producer() as mf:
        await cluster.registered(mf)
        sig = await mf.sign("double", error_callbacks=[await mf.sign("on_err", tag="forged")])
        with server.client() as r:  # what anyone with write access to Redis could do
            r.hset(sig.key, "model", "faults_marker:Forged")
        with pytest.raises(TaskFailedError) as failed:
            await sig.aio_run({"x": 4}, timeout=30)
        assert failed.value.error_type == "ConfigurationError"
        assert "never imports" in failed.value.error_message
        await until(lambda: bool(cluster.records("err", "forged")), 30, "the error callback")

        ok = await mf.sign("double")  # the worker goes on running honest work
        assert await ok.aio_run({"x": 4}, timeout=30) == 8

    assert not cluster.marker.exists(), cluster.marker.read_text()
    [err] = cluster.records("err", "forged")
    assert err["type"] == "ConfigurationError"
    assert worker.poll() is None, cluster.log(worker)[-4000:]
