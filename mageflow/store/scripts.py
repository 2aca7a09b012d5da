"""Loads the Lua transition scripts once; each runs with the shared prelude ``lib.lua``."""

from __future__ import annotations

from functools import cache
from importlib import resources

SCRIPT_NAMES = (
    "start_task",
    "finish",
    "start_container",
    "swarm_add",
    "swarm_close",
    "adopt",
    "update_kwargs",
    "heartbeat",
    "control",
    "sent",
)


def _read(name: str) -> str:
    return resources.files("mageflow.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


@cache
def script_source(name: str) -> str:
    if name not in SCRIPT_NAMES:
        raise KeyError(name)
    return _read("lib") + "\n" + _read(name)
