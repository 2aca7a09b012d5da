"""A short tour of mageflow, run by ``mageflow demo``: callbacks, a chain, a swarm and a map.

Everything runs on the in-process engine against real Redis, in a throw-away key namespace that
is deleted at the end, so running the demo again and again leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mageflow.client import Mageflow
from mageflow.config import MageflowConfig, SwarmConfig
from mageflow.containers import SwarmSignature
from mageflow.engines.inproc import InProcEngine
from mageflow.errors import TaskFailedError
from mageflow.models.message import ReturnValue, TaskError
from mageflow.store.redis_store import describe

POLL_SECONDS = 0.1

# -- messages (module level, so workers in other processes could import them) ---------------------


class Order(BaseModel):
    order_id: str
    amount: float


class Receipt(BaseModel):
    receipt: Annotated[dict[str, Any], ReturnValue()]  # the order task's return value lands here
    channel: str  # bound when the callback is signed


class OrderFailure(Order):
    error: TaskError  # the original message's fields, plus what went wrong


class FetchRequest(BaseModel):
    dataset: str
    size: int


class Rows(BaseModel):
    rows: Annotated[list[int], ReturnValue()]


class Summary(BaseModel):
    summary: Annotated[dict[str, Any], ReturnValue()]


class Tick(BaseModel):
    index: int


class SwarmTotals(BaseModel):
    values: Annotated[list[int], ReturnValue()]


CITIES = {"Oslo": 4, "Cairo": 31, "Lima": 19, "Delhi": 35}


class City(BaseModel):
    city: Annotated[str, ReturnValue()]  # a map hands each copy its item here


class Reading(BaseModel):
    reading: Annotated[dict[str, Any], ReturnValue()]


class Readings(BaseModel):
    readings: Annotated[list[dict[str, Any]], ReturnValue()]


@dataclass
class DemoReport:
    """What the demo observed, for tests and for anyone driving ``run_demo`` from code."""

    namespace: str
    redis: str = ""
    order_results: dict[str, Any] = field(default_factory=dict)  # order id -> result or error
    success_received: list[dict[str, Any]] = field(default_factory=list)
    error_received: list[dict[str, Any]] = field(default_factory=list)
    chain_result: Any = None
    chain_callback_received: list[dict[str, Any]] = field(default_factory=list)
    swarm_size: int = 0
    swarm_results: list[Any] = field(default_factory=list)
    swarm_callback_received: list[list[int]] = field(default_factory=list)
    swarm_elapsed: float = 0.0
    map_result: Any = None
    map_readings: list[dict[str, Any]] = field(default_factory=list)  # per-item callback got
    keys_left: int = -1  # keys of the demo namespace still in Redis after clean-up


def _register(mf: Mageflow, report: DemoReport) -> None:
    @mf.task(name="process-order")
    async def process_order(msg: Order) -> dict[str, Any]:
        if msg.amount <= 0:
            raise ValueError(f"invalid amount {msg.amount} for order {msg.order_id}")
        return {"order_id": msg.order_id, "total": round(msg.amount * 1.2, 2)}

    @mf.task(name="send-receipt")
    async def send_receipt(msg: Receipt) -> None:
        report.success_received.append(msg.model_dump())

    @mf.task(name="refund-order")
    async def refund_order(msg: OrderFailure) -> None:
        report.error_received.append(msg.model_dump())

    @mf.task(name="fetch")
    async def fetch(msg: FetchRequest) -> list[int]:
        return list(range(1, msg.size + 1))

    @mf.task(name="transform")
    async def transform(msg: Rows) -> list[int]:
        return [x * x for x in msg.rows]

    @mf.task(name="store")
    async def store(msg: Rows) -> dict[str, Any]:
        return {"stored": len(msg.rows), "checksum": sum(msg.rows)}

    @mf.task(name="report-pipeline")
    async def report_pipeline(msg: Summary) -> None:
        report.chain_callback_received.append(msg.summary)

    @mf.task(name="square")
    async def square(msg: Tick) -> int:
        await asyncio.sleep(0.002 + (msg.index % 7) * 0.001)
        return msg.index * msg.index

    @mf.task(name="add-up")
    async def add_up(msg: SwarmTotals) -> int:
        report.swarm_callback_received.append(msg.values)
        return sum(msg.values)

    _register_map(mf, report)


def _register_map(mf: Mageflow, report: DemoReport) -> None:
    @mf.task(name="list-cities")
    async def list_cities(msg: dict[str, Any]) -> list[str]:
        return list(CITIES)

    @mf.task(name="read-temperature")
    async def read_temperature(msg: City) -> dict[str, Any]:
        return {"city": msg.city, "celsius": CITIES[msg.city]}

    @mf.task(name="log-reading")
    async def log_reading(msg: Reading) -> None:
        report.map_readings.append(msg.reading)

    @mf.task(name="hottest")
    async def hottest(msg: Readings) -> str:
        return str(max(msg.readings, key=lambda r: r["celsius"])["city"])


async def _join(mf: Mageflow) -> None:
    """Wait until no in-process task (callbacks included) is still running."""
    if isinstance(mf.engine, InProcEngine):
        await mf.engine.join()


async def _run_order(mf: Mageflow, order: Order, report: DemoReport) -> tuple[str, str, str]:
    ok = await mf.sign("send-receipt", channel="email")
    err = await mf.sign("refund-order")
    sig = await mf.sign("process-order", success_callbacks=[ok], error_callbacks=[err])
    try:
        result: Any = await sig.aio_run(order)
        report.order_results[order.order_id] = result
        outcome = escape(str(result))
    except TaskFailedError as exc:
        report.order_results[order.order_id] = f"{exc.error_type}: {exc.error_message}"
        outcome = f"[red]{escape(exc.error_type)}: {escape(exc.error_message)}[/]"
    await _join(mf)
    status = (await sig.astatus()).value
    fired = [
        f"{cb.task_name} ({st.value})"
        for cb in (ok, err)
        if (st := await cb.astatus()) != "pending"
    ]
    return status, outcome, ", ".join(fired) or "-"


async def demo_callbacks(mf: Mageflow, report: DemoReport, console: Console) -> None:
    console.rule("[bold]1. Signatures with callbacks")
    table = Table("order", "task", "status", "result / error", "callbacks fired")
    for order in (Order(order_id="A-100", amount=50.0), Order(order_id="B-200", amount=-5.0)):
        status, outcome, fired = await _run_order(mf, order, report)
        colour = "green" if status == "done" else "red"
        table.add_row(order.order_id, "process-order", f"[{colour}]{status}[/]", outcome, fired)
    console.print(table)
    received = Table("callback", "received")
    for msg in report.success_received:
        received.add_row("send-receipt", escape(repr(msg)))
    for msg in report.error_received:
        error = msg["error"]
        shown = {k: v for k, v in msg.items() if k != "error"}
        text = f"{shown!r}\nerror={error['type']}: {error['message']}"
        received.add_row("refund-order", escape(text))
    console.print(received)


async def demo_chain(mf: Mageflow, report: DemoReport, console: Console) -> None:
    console.rule("[bold]2. A chain: fetch -> transform -> store")
    steps = [await mf.sign(name) for name in ("fetch", "transform", "store")]
    pipeline = await mf.chain(steps, name="etl", success=await mf.sign("report-pipeline"))
    report.chain_result = await pipeline.aio_run(FetchRequest(dataset="sensors", size=10))
    await _join(mf)
    table = Table("step", "status", "result (passed to the next step)")
    for key in pipeline.tasks:
        step = await mf.load_signature(key)
        table.add_row(step.task_name, step.status.value, escape(str(step.result_value)))
    console.print(table)
    console.print(f"chain result: [bold green]{escape(str(report.chain_result))}[/]")
    received = escape(str(report.chain_callback_received))
    console.print(f"success callback report-pipeline received: {received}")


async def _track(swarm: SwarmSignature, total: int, console: Console, timeout: float) -> None:
    """Advance a progress bar as members finish, until the swarm itself has finished."""
    columns = (TextColumn("swarm"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("swarm", total=total)
        while True:
            finished = sum(v is not None for v in (await swarm.results()).values())
            progress.update(bar, completed=finished)
            if (await swarm.astatus()).is_terminal:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"swarm {swarm.key} did not finish within {timeout:.0f} s")
            await asyncio.sleep(POLL_SECONDS)


async def demo_swarm(mf: Mageflow, report: DemoReport, console: Console, n_tasks: int) -> None:
    console.rule(f"[bold]3. A swarm of {n_tasks} tasks, at most 20 at a time")
    members = [await mf.sign("square", index=i) for i in range(n_tasks)]
    swarm = await mf.swarm(
        members,
        task_name="squares",
        success_callbacks=[await mf.sign("add-up")],
        config=SwarmConfig(max_concurrency=20),
        is_swarm_closed=True,
    )
    started = time.perf_counter()
    await swarm.aio_run_no_wait()
    await _track(swarm, n_tasks, console, timeout=30 + n_tasks * 0.1)
    report.swarm_elapsed = time.perf_counter() - started
    report.swarm_size = n_tasks
    report.swarm_results = list(swarm.result_value or [])
    await _join(mf)
    summary = Table("swarm", "value", show_header=False)
    summary.add_row("status", swarm.status.value)
    summary.add_row("results", str(len(report.swarm_results)))
    total = sum(v for v in report.swarm_results if isinstance(v, int))
    summary.add_row("sum of results", str(total))
    summary.add_row("elapsed", f"{report.swarm_elapsed:.2f} s")
    summary.add_row("throughput", f"{n_tasks / max(report.swarm_elapsed, 1e-9):.0f} tasks/s")
    got = report.swarm_callback_received
    in_order = bool(got) and got[0] == [i * i for i in range(n_tasks)]
    shown = f"{len(got[0])} values, {'in' if in_order else 'NOT in'} order" if got else "nothing"
    summary.add_row("callback add-up got", shown)
    console.print(summary)


async def demo_map(mf: Mageflow, report: DemoReport, console: Console) -> None:
    console.rule("[bold]4. A map over a result: list-cities -> map(read-temperature) -> hottest")
    readings = await mf.map(
        "read-temperature",
        config=SwarmConfig(max_concurrency=2),
        item_success_callbacks=[await mf.sign("log-reading")],
    )
    flow = await mf.chain(["list-cities", readings, "hottest"])
    report.map_result = await flow.aio_run({})
    await _join(mf)
    table = Table("city", "celsius (per-item callback log-reading got)")
    for reading in report.map_readings:
        table.add_row(escape(str(reading["city"])), str(reading["celsius"]))
    console.print(table)
    console.print(f"hottest: [bold green]{escape(str(report.map_result))}[/]")


async def _delete_namespace(mf: Mageflow) -> int:
    """Delete every key of the client's namespace; return how many are left (0 expected)."""
    redis = mf.store.redis
    pattern = f"{mf.config.namespace}:*"
    keys = [key async for key in redis.scan_iter(match=pattern, count=1000)]
    for i in range(0, len(keys), 500):
        await redis.delete(*keys[i : i + 500])
    return len([key async for key in redis.scan_iter(match=pattern, count=1000)])


def _show_logs(console: Console) -> logging.Handler | None:
    """Show mageflow's WARNING and ERROR lines (the failing order's, say) in the demo's console,
    unless the program configured logging itself."""
    if logging.getLogger().handlers or logging.getLogger("mageflow").handlers:
        return None
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    handler.setLevel(logging.WARNING)
    logging.getLogger("mageflow").addHandler(handler)
    return handler


async def run_demo(
    redis_url: str | None,
    data_dir: str | None,
    n_tasks: int = 200,
    console: Console | None = None,
) -> DemoReport:
    """Run the tour; ``redis_url`` None means ``$REDIS_URL`` or else a private embedded Redis."""
    console = console or Console()
    namespace = f"demo-{secrets.token_hex(4)}"
    config = MageflowConfig(namespace=namespace, data_dir=data_dir)
    mf = Mageflow(None, redis_url, config=config)
    report = DemoReport(namespace=namespace)
    _register(mf, report)
    await mf.start()
    shown = _show_logs(console)
    try:
        report.redis = describe(mf.store.redis)
        console.print(f"mageflow demo: Redis at [bold]{report.redis}[/], namespace {namespace}")
        await demo_callbacks(mf, report, console)
        await demo_chain(mf, report, console)
        await demo_swarm(mf, report, console, n_tasks)
        await demo_map(mf, report, console)
    finally:
        await _join(mf)
        report.keys_left = await _delete_namespace(mf)
        await mf.close()
        if shown is not None:
            logging.getLogger("mageflow").removeHandler(shown)
    console.print(f"cleaned up namespace {namespace}: {report.keys_left} keys left")
    return report
