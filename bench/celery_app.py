"""Celery 5 on the same two Redis servers: broker lists on the broker server, results (the Redis
result backend) on the state server.

Workers run ``celery -A bench.celery_app worker -P threads -c 50`` with settings from ``BENCH_*``
env variables. For latency, every process notes when it publishes each task message (Celery's
``before_task_publish`` signal); workers write their notes to ``BENCH_STAMP_DIR`` when they stop.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery  # type: ignore[import-untyped]
from celery.signals import (  # type: ignore[import-untyped]
    before_task_publish,
    worker_ready,
    worker_shutdown,
)

from bench.wiring import Wiring

NOOP = "celery_noop"
COLLECT = "celery_collect"

app = Celery("bench")
#: task id -> wall-clock time its message was published, in this process.
published: dict[str, float] = {}


def configure(w: Wiring) -> None:
    app.conf.update(
        broker_url=w.broker_url,
        result_backend=w.state_url,
        task_default_queue=w.queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )


@app.task(name=NOOP)  # type: ignore[untyped-decorator]
def celery_noop(x: int = 0) -> int:
    return x + 1


@app.task(name=COLLECT)  # type: ignore[untyped-decorator]
def celery_collect(values: list[int]) -> int:
    return len(values)


@before_task_publish.connect  # type: ignore[untyped-decorator]
def _note_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers and "id" in headers:
        published[str(headers["id"])] = time.time()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _ready(**_: Any) -> None:
    print("celery worker ready", flush=True)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _dump(**_: Any) -> None:
    stamp_dir = os.environ.get("BENCH_STAMP_DIR")
    if stamp_dir:
        path = Path(stamp_dir) / f"celery-published-{os.getpid()}.json"
        path.write_text(json.dumps(published))


if "BENCH_BROKER_URL" in os.environ:
    configure(Wiring.from_env())
