"""``python -m bench.profile_target STATE_URL WORKLOAD N REPEAT``: run one workload on the embedded
engine ``REPEAT`` times, for py-spy to sample (see profiling.py)."""

from __future__ import annotations

import asyncio
import sys
import time

from bench.contenders.mageflow import DRIVERS
from bench.mf_app import embedded_client
from bench.model import Sizes
from bench.wiring import Wiring


async def main(state_url: str, workload: str, n: int, repeat: int) -> None:
    sizes = Sizes(swarm_n=n, chain_n=n, callbacks_n=n)
    wiring = Wiring(broker_url="", state_url=state_url, queue="profile")
    mf, _ = embedded_client(wiring)
    async with mf:
        started = time.perf_counter()
        for _ in range(repeat):
            await DRIVERS[workload](mf, sizes, 120.0)
        took = time.perf_counter() - started
        print(f"profiled {repeat} x {workload} in {took:.2f} s", flush=True)


if __name__ == "__main__":
    url, workload, n, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(url, workload, n, repeat))
