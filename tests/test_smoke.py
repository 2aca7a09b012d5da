from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel

from mageflow import Mageflow, ReturnValue, SignatureStatus


class Order(BaseModel):
    order_id: int


class Done(BaseModel):
    task_result: Annotated[Any, ReturnValue()]
    field_int: int


async def test_task_result_reaches_success_callback(mf: Mageflow) -> None:
    seen: list[Done] = []

    @mf.task(input_validator=Order)
    async def process_order(msg: Order) -> dict[str, int]:
        return {"total": msg.order_id * 2}

    @mf.task(input_validator=Done)
    async def on_done(msg: Done) -> str:
        seen.append(msg)
        return "ok"

    cb = await mf.sign(on_done, field_int=7)
    sig = await mf.sign("process_order", success_callbacks=[cb])
    assert await sig.aio_run(Order(order_id=21)) == {"total": 42}
    await mf.close()  # waits for the callback, which runs after the task
    assert seen == [Done(task_result={"total": 42}, field_int=7)]
    await mf.start()
    assert await (await mf.load_signature(cb.key)).astatus() is SignatureStatus.DONE
