"""A mageflow task on Taskiq keeps the taskiq decorated task's attributes (``kiq``, ``kicker``,
``task_name``...): names ``MageflowTask`` does not define go to ``task.engine_task``.

A direct ``kiq`` sends a plain taskiq message to mageflow's handler, which takes a mageflow
envelope, not the user's message: a mageflow worker dead-letters such a message (shown here with
the worker's own check). Messages go to a RedisStreamBroker stream of their own on the test Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from pydantic import BaseModel
from taskiq import AsyncTaskiqDecoratedTask
from taskiq.message import TaskiqMessage
from taskiq_redis import RedisStreamBroker

from mageflow import Mageflow, MageflowConfig, PoisonMessageError
from mageflow.engines.taskiq import TaskiqEngine
from mageflow.engines.taskiq_worker import MageflowReceiver


class Charge(BaseModel):
    amount: int


@pytest.fixture(name="broker")
async def broker_fixture(redis_url: str, sync_redis: redis.Redis) -> AsyncIterator[Any]:
    queue = f"mftest-dropin-{uuid.uuid4().hex[:10]}"
    broker = RedisStreamBroker(redis_url, queue_name=queue, consumer_group_name=f"{queue}-g")
    yield broker
    await broker.shutdown()
    sync_redis.delete(queue)


@pytest.fixture(name="tq")
async def tq_fixture(
    broker: Any, redis_url: str, config: MageflowConfig, sync_redis: redis.Redis
) -> AsyncIterator[Mageflow]:
    client = Mageflow(broker, redis_url, config=config)
    yield client
    await client.close()
    keys = list(sync_redis.scan_iter(f"{config.namespace}:*", count=1000))
    if keys:
        sync_redis.delete(*keys)


def sent_messages(sync_redis: redis.Redis, broker: Any) -> list[bytes]:
    """The raw taskiq messages on the broker's stream, oldest first."""
    entries = sync_redis.xrange(broker.queue_name)
    return [fields["data"].encode() for _, fields in entries]


async def test_taskiq_attributes_are_the_decorated_tasks(tq: Mageflow, broker: Any) -> None:
    @tq.task(name="charge")
    async def charge(msg: Charge) -> int:
        return msg.amount

    decorated = charge.engine_task
    assert isinstance(decorated, AsyncTaskiqDecoratedTask)
    assert charge.kiq == decorated.kiq and charge.kiq.__self__ is decorated
    assert charge.task_name == "charge" and charge.broker is broker
    assert charge.labels == decorated.labels and charge.kicker().task_name == "charge"
    assert charge.schedule_by_time == decorated.schedule_by_time
    assert charge.name == "charge" and await charge(Charge(amount=3)) == 3  # mageflow's own


async def test_kiq_sends_a_taskiq_message_a_mageflow_worker_dead_letters(
    tq: Mageflow, broker: Any, sync_redis: redis.Redis
) -> None:
    @tq.task(name="charge")
    async def charge(msg: Charge) -> int:
        return msg.amount

    sent = await charge.kiq(Charge(amount=5))
    (data,) = sent_messages(sync_redis, broker)
    message = broker.formatter.loads(message=data)
    assert isinstance(message, TaskiqMessage)
    assert (message.task_id, message.task_name) == (sent.task_id, "charge")
    assert message.args == [{"amount": 5}] and message.kwargs == {}

    # What a mageflow worker does with it: the handler takes an envelope, so it is poison.
    assert isinstance(tq.engine, TaskiqEngine)
    with pytest.raises(PoisonMessageError) as caught:
        MageflowReceiver(tq.engine).inspect(data)
    assert caught.value.reason == "bad_envelope" and "unexpected arguments" in caught.value.detail


async def test_aio_run_no_wait_is_the_way_to_send_a_users_message(
    tq: Mageflow, broker: Any, sync_redis: redis.Redis
) -> None:
    @tq.task(name="charge")
    async def charge(msg: Charge) -> int:
        return msg.amount

    async with tq:
        sig = await charge.aio_run_no_wait(Charge(amount=5))
        (data,) = sent_messages(sync_redis, broker)
        message = MageflowReceiver(tq.engine).inspect(data)  # type: ignore[arg-type]
    assert message.task_name == "charge" and message.labels["ack_type"] == "manual"
    assert message.kwargs["envelope"]["sig"] == sig.key
    assert message.kwargs["envelope"]["input"] == {"amount": 5}


async def test_a_task_without_an_engine_task_says_so(mf: Mageflow) -> None:
    @mf.task(name="local")  # the in-process engine has no task object of its own
    async def local(msg: Charge) -> int:
        return msg.amount

    assert local.engine_task is None
    with pytest.raises(AttributeError, match="mageflow task 'local' has no attribute 'kiq'"):
        local.kiq  # noqa: B018
