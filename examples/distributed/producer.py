"""The producer: signs a chain and a swarm by task name and waits for their results.

Start the workers first (see README.md), then run ``python -m examples.distributed.producer``.
It never imports the task module: workers published the task names in Redis.
"""

from __future__ import annotations

import asyncio
import time

from examples.distributed.settings import make_client
from mageflow import SwarmConfig


async def main() -> None:
    async with make_client() as mf:
        started = time.monotonic()
        chain = await mf.chain(
            [
                await mf.sign("fetch-order"),
                await mf.sign("price-order", vat=0.2),
                await mf.sign("send-invoice", channel="email"),
            ]
        )
        invoice = await chain.aio_run({"order_id": 7}, timeout=60)
        print(f"chain done in {time.monotonic() - started:.2f} s: {invoice}")

        started = time.monotonic()
        images = [await mf.sign("resize-image", name=f"img-{i}.png", size=256) for i in range(20)]
        swarm = await mf.swarm(images, config=SwarmConfig(max_concurrency=10), is_swarm_closed=True)
        for line in await swarm.aio_run({}, timeout=120):
            print("  ", line)
        print(f"swarm of {len(images)} done in {time.monotonic() - started:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
