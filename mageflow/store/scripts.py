"""Loads the Lua transition scripts once. Each runs as: the constants generated from the schema
and key modules, then the shared prelude (``lib.lua``, ``flow.lua``), then its own file."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from mageflow.store.keys import DONE_SEGMENT, OUTBOX_SUFFIX, RATE_SEGMENT, SIG_SEGMENT, WAKE_SUFFIX
from mageflow.store.schema import RECORD_MARK, lua_constants

#: The shared prelude, in order: records, TTLs and the outbox; then the completion path.
PRELUDE = ("lib", "flow")

SCRIPT_NAMES = (
    "start_task",
    "finish",
    "launch",
    "start_container",
    "map_start",
    "swarm_add",
    "swarm_close",
    "adopt",
    "update_kwargs",
    "heartbeat",
    "control",
    "recover",
    "watch",
    "ack",
    "release",
    "rate",
)
#: Scripts that run on their own, without the prelude and the shard's index keys.
STANDALONE = frozenset({"rate"})


def _read(name: str) -> str:
    return resources.files("mageflow.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


def generated_prelude() -> str:
    segments = {
        "SIG": SIG_SEGMENT,
        "DONE": DONE_SEGMENT,
        "OUTBOX": OUTBOX_SUFFIX,
        "WAKE": WAKE_SUFFIX,
        "RATE": RATE_SEGMENT,
    }
    body = ", ".join(f"{k}={json.dumps(v)}" for k, v in segments.items())
    mark = f"local RECORD_MARK = {json.dumps(RECORD_MARK)}"
    return "\n".join([lua_constants(), f"local SEG = {{{body}}}", mark])


@cache
def script_source(name: str) -> str:
    if name not in SCRIPT_NAMES:
        raise KeyError(name)
    if name in STANDALONE:
        return _read(name)
    return "\n".join([generated_prelude(), *(_read(part) for part in PRELUDE), _read(name)])
