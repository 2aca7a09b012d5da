"""Runs the code examples of the user docs (``docs/*.md``) that are marked to run.

A ```python block runs when the line right before its opening fence is ``<!-- test -->``. Each
example gets a fresh in-process client ``mf`` on the test Redis, in a key namespace of its own,
and runs inside an ``async def`` so its top-level ``await`` works. ``REDIS_URL`` points at the
test Redis too, so a client an example makes itself (``Mageflow(config=mf.config)``) lands there.
The namespace's keys are deleted afterwards. Tracebacks point at the line in the Markdown page.
"""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from mageflow import Mageflow, MageflowConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"
MARK = "<!-- test -->"
#: The pages whose examples run, with the least number of marked examples each must keep.
PAGES = {
    "signatures.md": 2,
    "chains.md": 2,
    "swarms.md": 2,
    "lifecycle.md": 2,
    "scheduling.md": 2,
    "architecture.md": 0,
    "map.md": 3,
}
EXAMPLE_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Example:
    page: str
    line: int  # 1-based line of the block's first line of code
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def marked_blocks(page: str) -> Iterator[Example]:
    """The marked ```python blocks of one page, in order."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if fence != "```python":
            raise AssertionError(f"{page}:{i + 1}: {MARK} must be followed by a ```python fence")
        start = i + 2
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{page}:{i + 2}: code block is never closed")
        yield Example(page, start + 1, "\n".join(lines[start:end]))


def all_examples() -> list[Example]:
    return [ex for page in PAGES if (DOCS / page).exists() for ex in marked_blocks(page)]


def compile_example(example: Example) -> Any:
    """The example as the body of ``async def __example__()``, with its lines numbered as in
    the page."""
    body = textwrap.indent(example.code, "    ")
    if not body.strip():
        body = "    pass"
    source = "\n" * (example.line - 2) + "async def __example__():\n" + body + "\n"
    # dont_inherit: this module's `from __future__ import annotations` must not reach the
    # example, whose annotations (task models) are read at run time.
    return compile(source, str(DOCS / example.page), "exec", dont_inherit=True)


def delete_namespace(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = list(client.scan_iter(f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


EXAMPLES = all_examples()


@pytest.mark.parametrize("page", list(PAGES))
def test_page_exists_and_keeps_its_marked_examples(page: str) -> None:
    assert (DOCS / page).exists(), f"docs/{page} is missing"
    found = [ex for ex in EXAMPLES if ex.page == page]
    assert len(found) >= PAGES[page], f"docs/{page} has {len(found)} marked examples"
    for ex in found:  # an example that checks nothing would pass whatever it did
        assert "assert " in ex.code or "print(" in ex.code, f"{ex.id} neither asserts nor prints"


@pytest.mark.parametrize("example", EXAMPLES, ids=[ex.id for ex in EXAMPLES])
async def test_example_runs(
    example: Example, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    namespace = f"mfdocs-{uuid.uuid4().hex[:10]}"
    code = compile_example(example)
    mf = Mageflow(None, redis_url, config=MageflowConfig(namespace=namespace))
    scope: dict[str, Any] = {"__name__": f"docs_{example.page.removesuffix('.md')}", "mf": mf}
    try:
        exec(code, scope)
        await asyncio.wait_for(scope["__example__"](), EXAMPLE_TIMEOUT)
    finally:
        await mf.close()
        delete_namespace(redis_url, namespace)
