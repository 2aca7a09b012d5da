"""The worker app of the live Hatchet tests: ``python tests/engines/hatchet_app.py``.

It reads ``HATCHET_CLIENT_*`` (token, and the namespace the test picked), ``REDIS_URL`` and
``MAGEFLOW_NAMESPACE`` from the environment, registers the tasks below and runs a Hatchet worker
until it is stopped. The tests sign these tasks by name from their own process. The offline tests
build the same app on the loopback server, so this module is exercised even without a server.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from hatchet_sdk import Context, Hatchet
from pydantic import BaseModel

from mageflow import Mageflow, MageflowConfig
from mageflow.models.message import ReturnValue, TaskError

WORKER_NAME = "mageflow-live-tests"


class Numbers(BaseModel):
    x: int


class Step(BaseModel):
    results: Any = None
    x: int = 0


class SuccessMessage(BaseModel):
    task_result: Annotated[Any, ReturnValue()]
    field_int: int


class ErrorMessage(Numbers):
    label: str
    failure: TaskError | None = None


class Collected(BaseModel):
    values: ReturnValue[list[Any]]


def build(hatchet_client: Hatchet, redis_url: str, namespace: str) -> Mageflow:
    """The app's mageflow client with its tasks registered."""
    hatchet = Mageflow(hatchet_client, redis_url, config=MageflowConfig(namespace=namespace))

    @hatchet.task(name="live-double", input_validator=Numbers)
    async def double(msg: Numbers) -> dict[str, int]:
        return {"doubled": msg.x * 2}

    @hatchet.task(name="live-on-success", input_validator=SuccessMessage)
    async def on_success(msg: SuccessMessage) -> dict[str, Any]:
        return {"task_result": msg.task_result, "field_int": msg.field_int}

    @hatchet.task(name="live-fail", input_validator=Numbers, retries=2)
    async def fail(msg: Numbers, ctx: Context) -> None:
        raise ValueError(f"attempt {ctx.retry_count} of x={msg.x}")

    @hatchet.task(name="live-on-error", input_validator=ErrorMessage)
    async def on_error(msg: ErrorMessage) -> dict[str, Any]:
        failure = msg.failure
        return {"x": msg.x, "label": msg.label, "error": failure.message if failure else None}

    @hatchet.task(name="live-flaky", input_validator=Numbers, retries=2)
    async def flaky(msg: Numbers, ctx: Context) -> dict[str, int]:
        if ctx.retry_count < 2:
            raise ConnectionError("not yet")
        return {"attempt": ctx.retry_count}

    @hatchet.task(name="live-add-one", input_validator=Step)
    async def add_one(msg: Step) -> int:
        return int(msg.results if msg.results is not None else msg.x) + 1

    @hatchet.task(name="live-square", input_validator=Numbers)
    async def square(msg: Numbers) -> int:
        return msg.x * msg.x

    @hatchet.task(name="live-collect", input_validator=Collected)
    async def collect(msg: Collected) -> dict[str, Any]:
        return {"values": msg.values}

    return hatchet


def main() -> None:
    app = build(Hatchet(), os.environ["REDIS_URL"], os.environ["MAGEFLOW_NAMESPACE"])
    app.worker(WORKER_NAME, slots=20).start()


if __name__ == "__main__":
    main()
