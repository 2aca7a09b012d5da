"""The README's complete code examples run as written (on the in-process engine)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
RUNNABLE = [b for b in BLOCKS if "async def main" in b and "mf = Mageflow()" in b]


def test_readme_has_runnable_examples() -> None:
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.splitlines()[0][:40])
async def test_readme_example_runs(
    block: str, redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The only change: the client gets the test Redis and a private namespace.
    client = f"mf = Mageflow(None, {redis_url!r}, config=MageflowConfig(namespace={namespace!r}))"
    source = "from mageflow import MageflowConfig\n" + block.replace("mf = Mageflow()", client)
    scope: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(source, str(README), "exec", dont_inherit=True), scope)
    await scope["main"]()
    await scope["mf"].close()
    out = capsys.readouterr().out
    assert out.strip(), "the example printed nothing"
    if "pipeline.aio_run" in block:
        assert out.strip().splitlines()[-1] == "2500"
    else:
        assert "42" in out and "receipt for 42 via email" in out
