"""An in-process app that runs one swarm, for the restart tests (tests/test_restart.py).

Usage: ``python crashy_swarm.py start|resume WORKDIR``. The client is ``Mageflow()`` with no
Redis, so with ``REDIS_URL`` unset it uses the embedded server of ``$MAGEFLOW_DATA_DIR``.

* ``start`` builds a closed swarm of ``MEMBERS`` members (``max_concurrency`` ``CONCURRENCY``)
  with one success callback, writes the swarm key to ``WORKDIR/swarm.key``, starts the swarm and
  then sleeps forever: the test kills it with SIGKILL part-way through.
* ``resume`` is the same app started again: it loads the swarm by key, waits for its result,
  prints it as one JSON line, closes the client and exits 0.

Every member body that runs to its end appends its index to ``WORKDIR/members.log``; the
callback appends the swarm result it received to ``WORKDIR/callback.log``. The task definitions
are the same in both modes, as they would be in a restarted app.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from pydantic import BaseModel

from mageflow import Mageflow, MageflowConfig, ReturnValue, SwarmConfig

MEMBERS = 20
CONCURRENCY = 4
MEMBER_SECONDS = 0.25
LEASE_SECONDS = 1.0

WORKDIR = Path(sys.argv[2])
MEMBERS_LOG = WORKDIR / "members.log"
CALLBACK_LOG = WORKDIR / "callback.log"
KEY_FILE = WORKDIR / "swarm.key"

mf = Mageflow(config=MageflowConfig(lease_seconds=LEASE_SECONDS))


def append(path: Path, line: str) -> None:
    # One small O_APPEND write per line: lines of concurrent writers never interleave.
    with open(path, "a") as fh:
        fh.write(line + "\n")


class Member(BaseModel):
    index: int


class SwarmDone(BaseModel):
    results: ReturnValue[list[int]]


@mf.task(name="member")
async def member(msg: Member) -> int:
    await asyncio.sleep(MEMBER_SECONDS)
    append(MEMBERS_LOG, str(msg.index))
    return msg.index * 10


@mf.task(name="swarm_done")
async def swarm_done(msg: SwarmDone) -> None:
    append(CALLBACK_LOG, json.dumps(msg.results))


async def start() -> None:
    members = [await mf.sign(member, index=i) for i in range(MEMBERS)]
    callback = await mf.sign(swarm_done)
    swarm = await mf.swarm(
        members,
        success_callbacks=[callback],
        config=SwarmConfig(max_concurrency=CONCURRENCY),
        is_swarm_closed=True,
    )
    # Written atomically (rename) so the test never reads half a key.
    partial = KEY_FILE.with_suffix(".tmp")
    partial.write_text(swarm.key)
    os.replace(partial, KEY_FILE)
    await swarm.aio_run_no_wait()
    await asyncio.Event().wait()  # runs the swarm until the test ends this process (SIGKILL)


async def resume() -> None:
    swarm = await mf.load_signature(KEY_FILE.read_text())
    result = await swarm.aresult(timeout=60)
    print(json.dumps(result), flush=True)
    await mf.close()


if __name__ == "__main__":
    asyncio.run({"start": start, "resume": resume}[sys.argv[1]]())
