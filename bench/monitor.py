"""``python -m bench.monitor PORT FILE``: copy a Redis server's MONITOR stream to FILE, unparsed.

A process of its own, so reading the stream never competes with the code under test for the GIL;
unbuffered writes, so whatever it received is on disk when it is stopped.
"""

from __future__ import annotations

import socket
import sys


def main(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn, open(path, "wb", 0) as out:
        conn.sendall(b"MONITOR\r\n")
        while chunk := conn.recv(1 << 16):
            out.write(chunk)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
