"""An in-process app that runs one chain, for the restart tests (tests/test_restart.py).

Usage: ``python chain_app.py TAG STEPS STEP_SECONDS PROGRESS_FILE``. The client is ``Mageflow()``
with no Redis, so with ``REDIS_URL`` unset it uses the embedded server of ``$MAGEFLOW_DATA_DIR``.

It runs a chain of ``STEPS`` steps, each sleeping ``STEP_SECONDS`` and appending
``<TAG><index>`` to PROGRESS_FILE when done; every step returns the list of the steps so far.
It prints the chain's result as one JSON line, then stays alive until a line (or end of input)
arrives on stdin, closes the client and exits normally (so its exit hooks run).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from mageflow import Mageflow, ReturnValue

TAG, STEPS, STEP_SECONDS, PROGRESS = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

mf = Mageflow()


class First(BaseModel):
    index: int


class Next(BaseModel):
    done: ReturnValue[list[str]]
    index: int


def append(path: Path, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")


async def step_done(index: int) -> str:
    await asyncio.sleep(STEP_SECONDS)
    append(Path(PROGRESS), f"{TAG}{index}")
    return f"{TAG}{index}"


@mf.task(name="first_step")
async def first_step(msg: First) -> list[str]:
    return [await step_done(msg.index)]


@mf.task(name="next_step")
async def next_step(msg: Next) -> list[str]:
    return [*msg.done, await step_done(msg.index)]


async def main() -> None:
    steps = [await mf.sign(first_step, index=0)]
    steps += [await mf.sign(next_step, index=i) for i in range(1, STEPS)]
    chain = await mf.chain(steps)
    print(json.dumps(await chain.aio_run(timeout=120)), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # linger until the test lets this process go
    await mf.close()


if __name__ == "__main__":
    asyncio.run(main())
