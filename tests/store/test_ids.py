"""Signature ids: random, drawn from the OS in batches, and never shared with a forked child."""

from __future__ import annotations

import os
import re

import pytest

from mageflow.store.keys import new_id


def test_ids_are_16_hex_digits_and_do_not_repeat() -> None:
    ids = [new_id() for _ in range(20_000)]  # several batches
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_does_not_hand_out_its_parents_next_ids() -> None:
    new_id()  # a batch is half used when the process forks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write, "".join(new_id() for _ in range(20)).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    raw = os.read(read, 20 * 16).decode()
    os.close(read)
    assert status == 0
    child = {raw[i : i + 16] for i in range(0, len(raw), 16)}
    parent = {new_id() for _ in range(20)}
    assert len(child) == 20 and not child & parent
