"""Loads the Lua transition scripts once. Each runs as: the constants generated from the schema
and key modules, then the shared prelude ``lib.lua``, then its own file."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from mageflow.store.keys import DONE_SEGMENT, SIG_SEGMENT
from mageflow.store.schema import lua_constants

SCRIPT_NAMES = (
    "start_task",
    "finish",
    "launch",
    "start_container",
    "swarm_add",
    "swarm_close",
    "adopt",
    "update_kwargs",
    "heartbeat",
    "control",
    "recover",
    "watch",
    "ack",
)


def _read(name: str) -> str:
    return resources.files("mageflow.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


def generated_prelude() -> str:
    keys = f"local SEG = {{SIG={json.dumps(SIG_SEGMENT)}, DONE={json.dumps(DONE_SEGMENT)}}}"
    return lua_constants() + "\n" + keys


@cache
def script_source(name: str) -> str:
    if name not in SCRIPT_NAMES:
        raise KeyError(name)
    return "\n".join([generated_prelude(), _read("lib"), _read(name)])
