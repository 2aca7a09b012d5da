"""mageflow's taskiq messages on the wire, built and read without taskiq's general machinery.

A mageflow message always has the same shape: a task name, the ``ack_type=manual`` label, and
two keyword arguments (``envelope`` and ``attempt``). taskiq's general path for such a message
costs a worker about a fifth of its CPU per task (bench/analysis.md, issue 13): sending goes
through ``AsyncKicker`` (labels prepared per call, a pydantic model built and dumped again), and
receiving through the ``Receiver`` (the message parsed a second time after mageflow's own check,
parameter validation, dependency injection, a result assembled for a result backend mageflow
does not use).

So when the broker uses taskiq's defaults where they matter (the ``ProxyFormatter`` with the
``JSONSerializer``, no middleware that hooks sending or running, no result backend), mageflow
writes the message JSON itself and calls its handler directly. The bytes are what taskiq would
have sent (same fields, same label encoding; ``tests/engines/test_taskiq_wire.py`` compares
them), so a worker of either path reads the other's messages. Any other setting takes taskiq's
own path, unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from taskiq import AsyncBroker, TaskiqMiddleware
from taskiq.formatters.proxy_formatter import ProxyFormatter
from taskiq.labels import prepare_label
from taskiq.message import BrokerMessage, TaskiqMessage
from taskiq.serializers.json_serializer import JSONSerializer

#: Labels of every message mageflow sends: the engine acknowledges deliveries itself.
MESSAGE_LABELS: dict[str, Any] = {"ack_type": "manual"}
_LABELS: dict[str, str] = {}
_LABEL_TYPES: dict[str, int] = {}
for _name, _value in MESSAGE_LABELS.items():
    _LABELS[_name], _LABEL_TYPES[_name] = prepare_label(_value)

_SEND_HOOKS = ("pre_send", "post_send")
_RUN_HOOKS = ("pre_execute", "post_execute", "post_save", "on_error")


def _hooked(broker: AsyncBroker, hooks: tuple[str, ...]) -> bool:
    """True when a middleware of ``broker`` overrides one of ``hooks``."""
    return any(
        getattr(type(m), hook) is not getattr(TaskiqMiddleware, hook)
        for m in broker.middlewares
        for hook in hooks
    )


def _plain_format(broker: AsyncBroker) -> bool:
    return type(broker.formatter) is ProxyFormatter and type(broker.serializer) is JSONSerializer


def direct_send(broker: AsyncBroker) -> bool:
    """Whether :func:`broker_message` may stand in for ``AsyncKicker.kiq`` on ``broker``."""
    return _plain_format(broker) and not _hooked(broker, _SEND_HOOKS)


def direct_run(broker: AsyncBroker) -> bool:
    """Whether a worker may call mageflow's handler without taskiq's ``Receiver.callback``:
    nothing would run around the call (middleware) or after it (a result backend)."""
    return type(broker.result_backend).__name__ == "DummyResultBackend" and not _hooked(
        broker, _RUN_HOOKS
    )


def _body(broker: AsyncBroker, name: str, envelope: dict[str, Any], attempt: int) -> dict[str, Any]:
    """The fields of a mageflow message, as taskiq's formatter dumps a ``TaskiqMessage``."""
    return {
        "task_id": broker.id_generator(),
        "task_name": name,
        "labels": _LABELS,
        "labels_types": _LABEL_TYPES,
        "args": [],
        "kwargs": {"envelope": envelope, "attempt": attempt},
    }


def broker_message(
    broker: AsyncBroker, name: str, envelope: dict[str, Any], attempt: int
) -> BrokerMessage:
    """The message ``AsyncKicker(name, labels=MESSAGE_LABELS).kiq(envelope=..., attempt=...)``
    would send, built directly (see the module doc; only when :func:`direct_send`)."""
    serializer = broker.serializer
    assert isinstance(serializer, JSONSerializer)
    body = _body(broker, name, envelope, attempt)
    data = json.dumps(body, default=serializer.default, ensure_ascii=serializer.ensure_ascii)
    return BrokerMessage(
        task_id=body["task_id"], task_name=name, message=data.encode(), labels=dict(MESSAGE_LABELS)
    )


def taskiq_message(
    broker: AsyncBroker, name: str, envelope: dict[str, Any], attempt: int
) -> TaskiqMessage:
    """The message as a worker parses it on arrival, for a run that never was one (a follow-up
    handed a worker's slot): what its task's taskiq ``Context`` shows."""
    message = TaskiqMessage.model_validate(_body(broker, name, envelope, attempt))
    message.parse_labels()
    return message
