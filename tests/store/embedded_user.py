"""A process that uses the embedded Redis of one data dir, driven by tests over stdin/stdout.

Usage: ``python embedded_user.py DATA_DIR``. It starts :class:`EmbeddedRedis` on DATA_DIR, prints
``ready <owned 0|1> <server pid>``, then answers one line per command line:

* ``set KEY VALUE`` -> ``ok``; ``get KEY`` -> the value, or ``<nil>``
* ``exit`` (or end of input) -> exits normally, so the atexit hook of EmbeddedRedis runs

A command that fails answers ``error <exception>`` and the process keeps running.
"""

from __future__ import annotations

import sys

import redis

from mageflow.store.embedded import EmbeddedRedis


def answer(client: redis.Redis, words: list[str]) -> str:
    if words[0] == "set":
        client.set(words[1], words[2])
        return "ok"
    if words[0] == "get":
        value = client.get(words[1])
        return "<nil>" if value is None else str(value)
    return f"error unknown command {words[0]!r}"


def main(data_dir: str) -> None:
    server = EmbeddedRedis(data_dir)
    url = server.start()
    client = redis.Redis.from_url(url, socket_timeout=2, decode_responses=True)
    pid = int(client.info("server")["process_id"])
    print(f"ready {int(server.owned)} {pid}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "exit":
            break
        try:
            reply = answer(client, words)
        except Exception as exc:
            reply = f"error {type(exc).__name__}: {exc}".replace("\n", " ")
        print(reply, flush=True)
    client.close()


if __name__ == "__main__":
    main(sys.argv[1])
