"""Bait for the forged-``model`` test: importing this module leaves a marker file behind.

It sits on the worker's PYTHONPATH, but nothing imports it. A record whose ``model`` field is
forged to name it must not make the worker import it (mageflow never imports a module that data
in Redis names); the test checks that ``$MFF_MARKER`` was never written.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

_marker = os.environ.get("MFF_MARKER")
if _marker:
    Path(_marker).write_text(f"imported by pid {os.getpid()}\n")


class Forged(BaseModel):
    i: int
