"""CPU per packed script call: redis-py's ``pack_command`` against the stream's ``Packer``.

``.venv/bin/python -m bench.packing [--calls 20000] [--repeat 5]``

Packs the EVALSHA of ``--calls`` realistic ``finish`` calls, their arguments made beforehand by
the store's own ``script_args`` (a shard's six index keys, the signature key, the two TTL
lists, an outbox acks string, then outcome, a ~150-byte JSON result and a message), each with a
signature key, acks and result of its own, as in a swarm. Prints the best of ``--repeat`` runs
in µs per call, and checks that both give the same bytes. No Redis is needed (nothing is sent).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from mageflow.config import TTLConfig
from mageflow.store.keys import KeySchema
from mageflow.store.redis_store import Store
from mageflow.store.streaming import Packer


def finish_calls(count: int) -> list[list[Any]]:
    """The sha, key count and arguments of ``count`` finish calls, as the store builds them."""
    store = Store(aioredis.Redis(), KeySchema("mageflow", 16), TTLConfig())
    calls = []
    for i in range(count):
        key = store.keys.new_signature()
        shard = store.keys.shard(key)
        acks = f"3600000 {store.keys.new_signature()}@{i}"
        result = json.dumps({"value": {"i": i, "items": list(range(30)), "ok": True}})
        calls.append(store.script_args([key], ["done", result, ""], acks, shard))
    return calls


def best_us(pack: Callable[[list[Any]], Any], calls: list[list[Any]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        for args in calls:
            pack(args)
        times.append(time.process_time() - t0)
    return 1e6 * min(times) / len(calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    calls = finish_calls(args.calls)
    sha, numkeys = hashlib.sha1(b"finish").hexdigest(), 7  # six index keys, the signature key
    conn = aioredis.ConnectionPool().make_connection()  # (never connected)
    packer = Packer()
    for one in calls[:100]:
        theirs = b"".join(conn.pack_command("EVALSHA", sha, numkeys, *one))
        assert packer.pack("EVALSHA", sha, numkeys, *one) == theirs
    print(f"arguments per call: {len(calls[0])}, bytes per call: {len(theirs)}")
    before = best_us(lambda a: conn.pack_command("EVALSHA", sha, numkeys, *a), calls, args.repeat)
    after = best_us(lambda a: packer.pack("EVALSHA", sha, numkeys, *a), calls, args.repeat)
    print(f"redis-py pack_command  {before:.2f} µs per call")
    print(f"Packer.pack            {after:.2f} µs per call ({before / after:.1f}x less CPU)")


if __name__ == "__main__":
    main()
