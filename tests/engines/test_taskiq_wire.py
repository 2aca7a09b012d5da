"""mageflow's own taskiq messages (taskiq_wire) against what taskiq itself would send and run."""

from __future__ import annotations

import json
from typing import Any

from taskiq import InMemoryBroker, TaskiqMessage, TaskiqMiddleware
from taskiq.kicker import AsyncKicker
from taskiq.serializers import PickleSerializer
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from mageflow.engines.taskiq_wire import MESSAGE_LABELS, broker_message, direct_run, direct_send

ENVELOPE = {"sig": "mf:sig:{0}:abc", "in": {"x": 1, "name": "é ✓"}, "k": [1, 2.5, None]}


class SendHook(TaskiqMiddleware):
    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        return message


class RunHook(TaskiqMiddleware):
    def post_execute(self, message: Any, result: Any) -> None:
        return None


def stream_broker() -> RedisStreamBroker:
    return RedisStreamBroker("redis://127.0.0.1:1", queue_name="q")  # never connects


def test_the_direct_message_is_what_the_kicker_would_send() -> None:
    broker = stream_broker()
    ours = broker_message(broker, "task_a", ENVELOPE, 3)
    kicker: AsyncKicker[Any, Any] = AsyncKicker("task_a", broker, dict(MESSAGE_LABELS))
    theirs = broker.formatter.dumps(kicker._prepare_message(envelope=ENVELOPE, attempt=3))
    decoded, expected = json.loads(ours.message), json.loads(theirs.message)
    assert decoded.pop("task_id") == ours.task_id and expected.pop("task_id")
    assert decoded == expected
    assert (ours.task_name, ours.labels) == (theirs.task_name, theirs.labels)
    # taskiq's own formatter reads it back as the same message.
    parsed = broker.formatter.loads(ours.message)
    parsed.parse_labels()
    assert parsed.kwargs == {"envelope": ENVELOPE, "attempt": 3}
    assert parsed.labels == MESSAGE_LABELS


def test_the_direct_paths_only_on_taskiq_defaults() -> None:
    plain = stream_broker()
    assert direct_send(plain) and direct_run(plain)

    hooked_send = stream_broker().with_middlewares(SendHook())
    assert not direct_send(hooked_send) and direct_run(hooked_send)

    hooked_run = stream_broker().with_middlewares(RunHook())
    assert direct_send(hooked_run) and not direct_run(hooked_run)

    with_results = stream_broker().with_result_backend(
        RedisAsyncResultBackend("redis://127.0.0.1:1")
    )
    assert direct_send(with_results) and not direct_run(with_results)

    other_format = InMemoryBroker().with_serializer(PickleSerializer())
    assert not direct_send(other_format)
