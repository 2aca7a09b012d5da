"""The viewer's page in a real browser: Debian's chromium driven by Playwright, against a real
uvicorn server and a running in-process app.

``make test`` installs chromium; without it these tests skip and say so. Set
``MAGEFLOW_UI_SCREENSHOT=docs/ui-screenshot.png`` to save the screenshot of the docs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the viewer needs the ui extra: pip install '.[ui]'")
pytest.importorskip("uvicorn", reason="the viewer needs the ui extra: pip install '.[ui]'")
playwright = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (the dev extra has it)"
)

from gated import Gates  # noqa: E402
from playwright.async_api import Browser, Page, expect  # noqa: E402
from ui_harness import Served, serving, until  # noqa: E402

from mageflow import Mageflow, SwarmConfig  # noqa: E402
from mageflow.inspection import open_store, workflow_tree  # noqa: E402

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed and could not be (make test installs it: "
    "apt-get install chromium)",
)
TOKEN = "browser-test-token"
XSS = "<script>alert(1)</script>"
WAIT_MS = 15_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with playwright.async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def served(make_app: Callable[..., Any]) -> Any:
    with serving(make_app(token=TOKEN, interval=0.2)) as running:
        yield running


@dataclass
class Opened:
    page: Page
    dialogs: list[str] = field(default_factory=list)  # messages of alert() & co
    errors: list[str] = field(default_factory=list)  # console errors (CSP violations among them)


async def open_page(browser: Browser, served: Served, fragment: str = f"#token={TOKEN}") -> Opened:
    """The page, given the token in the URL fragment, with its dialogs and console errors."""
    page = await browser.new_page(viewport={"width": 1440, "height": 860})
    opened = Opened(page)

    async def on_dialog(dialog: Any) -> None:
        opened.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    await page.goto(served.url + "/" + fragment)
    if fragment:
        await expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
        assert "token" not in page.url  # taken out of the address bar
    return opened


def row_of(page: Page, key: str) -> Any:
    return page.locator(f'#rows tr[data-key="{key}"]')


async def open_workflow(page: Page, key: str) -> None:
    await row_of(page, key).click(timeout=WAIT_MS)
    await expect(page.locator("#wf-key")).to_have_text(key)
    await expect(page.locator("#tree .box").first).to_be_visible(timeout=WAIT_MS)


async def gallery(mf: Mageflow, gate: asyncio.Event) -> tuple[Any, Any]:
    """A chain of a step, a swarm of seven images (the second one corrupt, the last four held
    at ``gate``) and a last step, with both kinds of callbacks; (chain, swarm), not started.
    Two finished workflows come first, so the list holds more than the one followed."""

    @mf.task(name="fetch-batch")
    async def fetch(msg: dict[str, Any]) -> int:
        return 7

    @mf.task(name="resize-image")
    async def resize(msg: dict[str, Any]) -> str:
        if msg.get("hold"):
            await asyncio.wait_for(gate.wait(), 30)
        if msg.get("corrupt"):
            raise ValueError(f"corrupt image {msg['image']}")
        return f"thumbs/{msg['image']}"

    @mf.task(name="publish-gallery")
    async def publish(msg: dict[str, Any]) -> str:
        return "published"

    @mf.task(name="notify-team")
    async def notify(msg: dict[str, Any]) -> None:
        return None

    @mf.task(name="page-oncall")
    async def oncall(msg: dict[str, Any]) -> None:
        return None

    await (await mf.sign("fetch-batch", day="2026-12-04")).aio_run()
    with pytest.raises(Exception, match="corrupt image"):
        await (await mf.sign("resize-image", image="logo.svg", corrupt=True)).aio_run()
    images = [f"img-{i}.png" for i in range(7)]
    members = [
        await mf.sign("resize-image", image=name, corrupt=(i == 1), hold=(i >= 3))
        for i, name in enumerate(images)
    ]
    swarm = await mf.swarm(members, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True)
    chain = await mf.chain(
        [await mf.sign("fetch-batch", day="2026-12-05"), swarm, await mf.sign("publish-gallery")],
        name="nightly-gallery",
        success_callbacks=[await mf.sign("notify-team", channel="#ops")],
        error_callbacks=[await mf.sign("page-oncall")],
    )
    return chain, swarm


async def test_a_running_workflow_updates_live(
    mf: Mageflow, browser: Browser, served: Served, tmp_path: Path, redis_url: str, namespace: str
) -> None:
    gate = asyncio.Event()
    chain, swarm = await gallery(mf, gate)
    await chain.aio_run_no_wait()
    await until(lambda: swarm_running(redis_url, namespace, swarm.key), what="two members held")

    opened = await open_page(browser, served)
    page = opened.page
    await open_workflow(page, chain.key)
    root = page.locator("#wf-status .badge")
    await expect(root).to_have_text("active")
    await expect(page.locator(".k-swarm .progress-label")).to_contain_text("2 running")
    await expect(page.locator(".cb-success .cb-label")).to_have_text("on success")
    await expect(page.locator(".cb-error .cb-label")).to_have_text("on error")
    steps = page.locator(".k-chain > .steps > .node")
    await expect(steps).to_have_count(3)
    assert await row_tops_equal(steps), "chain steps are not drawn in one row"

    failed = page.locator(".box", has=page.locator(".badge", has_text="failed"))
    await failed.click()
    await expect(page.locator("#node .error-title")).to_have_text(
        "ValueError: corrupt image img-1.png"
    )
    await expect(page.locator("#node pre").first).to_contain_text("Traceback")
    await screenshot(page, tmp_path)

    await page.evaluate("window.__notReloaded = true")
    gate.set()
    await expect(root).to_have_text("done", timeout=WAIT_MS)
    await expect(page.locator(".k-swarm .progress-label")).to_contain_text("6 done · 1 failed")
    await expect(row_of(page, chain.key).locator(".badge")).to_have_text("done", timeout=WAIT_MS)
    assert await page.evaluate("window.__notReloaded === true")
    assert opened.dialogs == [] and opened.errors == []


async def swarm_running(redis_url: str, namespace: str, key: str) -> bool:
    async with open_store(redis_url, namespace) as store:
        counts = (await workflow_tree(store, key))["swarm"]
    return bool(counts["running"] == 2 and counts["done"] + counts["failed"] == 3)


async def row_tops_equal(steps: Any) -> bool:
    tops = [(await steps.nth(i).bounding_box())["y"] for i in range(await steps.count())]
    return max(tops) - min(tops) < 2


async def screenshot(page: Page, tmp_path: Path) -> None:
    await page.locator("#node").scroll_into_view_if_needed()
    await page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "ui.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    wanted = os.environ.get("MAGEFLOW_UI_SCREENSHOT")
    if wanted:
        shutil.copyfile(shot, wanted)


async def test_cancel_from_the_page(
    mf: Mageflow, gates: Gates, browser: Browser, served: Served, redis_url: str, namespace: str
) -> None:
    held = await mf.sign("work", tag="held", hold=True)
    await held.aio_run_no_wait()
    await until(lambda: "held" in gates.started, what="held running")
    page = (await open_page(browser, served)).page
    await open_workflow(page, held.key)
    await expect(page.locator("#wf-status .badge")).to_have_text("active")

    await page.click("button[data-action=resume]")
    result = page.locator("#control-result")
    await expect(result).to_contain_text("InvalidTransitionError: cannot resume", timeout=WAIT_MS)
    await page.click("button[data-action=cancel]")
    await expect(result).to_have_text("cancel: now canceled", timeout=WAIT_MS)
    await expect(page.locator("#wf-status .badge")).to_have_text("canceled")
    async with open_store(redis_url, namespace) as store:
        assert (await workflow_tree(store, held.key))["status"] == "canceled"


async def test_user_data_is_shown_as_text(mf: Mageflow, browser: Browser, served: Served) -> None:
    @mf.task(name=XSS)
    async def odd(msg: dict[str, Any]) -> str:
        return "<img src=x onerror=alert(2)>"

    sig = await mf.sign(XSS, note="<b onmouseover=alert(3)>hi</b>")
    await sig.aio_run()
    opened = await open_page(browser, served)
    page = opened.page
    name = page.locator("#rows td.name", has_text="alert(1)")
    await expect(name).to_have_text(XSS, timeout=WAIT_MS)
    await open_workflow(page, sig.key)
    await expect(page.locator("#tree .box .name")).to_have_text(XSS)
    await expect(page.locator("#node pre").first).to_have_text("<img src=x onerror=alert(2)>")
    await expect(page.locator("#node")).to_contain_text("<b onmouseover=alert(3)>hi</b>")
    await page.hover("#node")
    await asyncio.sleep(0.5)  # time for any injected handler to have fired
    assert await page.evaluate("document.scripts.length") == 1  # only /static/app.js
    assert await page.evaluate("document.querySelectorAll('#app img, #app b').length") == 0
    assert opened.dialogs == [] and opened.errors == []


async def test_the_page_asks_for_the_token(mf: Mageflow, browser: Browser, served: Served) -> None:
    opened = await open_page(browser, served, fragment="")
    page = opened.page
    await expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#app")).to_be_hidden()
    await page.fill("#token-input", "not-the-token")
    await page.press("#token-input", "Enter")
    await expect(page.locator("#login-error")).to_have_text("That token was refused.")
    await page.fill("#token-input", TOKEN)
    await page.press("#token-input", "Enter")
    await expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
    await expect(page.locator("#login")).to_be_hidden()
    await expect(page.locator("#rows")).to_contain_text("No workflow matches.")
    assert await page.evaluate("sessionStorage.getItem('mageflow-ui-token')") == TOKEN
