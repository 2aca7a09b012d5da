"""A raw Taskiq worker process: taskiq's own ``Receiver`` on the bench broker, stopped by SIGTERM.

``python -m bench.raw_worker`` (settings from ``BENCH_*`` env variables). The same receiver that
``mageflow worker`` runs, with the same concurrency, so the two differ only by mageflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from taskiq.receiver import Receiver

from bench.raw_app import make_broker
from bench.wiring import Wiring


async def serve() -> None:
    w = Wiring.from_env()
    broker = make_broker(w)
    broker.is_worker_process = True
    await broker.startup()
    stop, finish = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    receiver = Receiver(broker, max_async_tasks=w.concurrency, run_startup=False)
    listen = loop.create_task(receiver.listen(finish))
    print(f"raw taskiq worker ready, concurrency {w.concurrency}", flush=True)
    await stop.wait()
    finish.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(listen, 10)
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(serve())
