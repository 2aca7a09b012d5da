"""The viewer's HTTP API, against a real Redis and a running in-process app.

Plain requests go through httpx's ASGI transport in the test's loop; the event stream needs a
socket (that transport buffers a whole response), so those tests serve the app with uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import pytest

httpx = pytest.importorskip("httpx", reason="the viewer's tests need httpx (the dev extra)")
pytest.importorskip("starlette", reason="the viewer needs the ui extra: pip install '.[ui]'")
pytest.importorskip("uvicorn", reason="the viewer needs the ui extra: pip install '.[ui]'")

from gated import Gates  # noqa: E402
from typer.testing import CliRunner  # noqa: E402
from ui_harness import serving, until  # noqa: E402

from mageflow import Mageflow, SwarmConfig  # noqa: E402
from mageflow.cli import app as cli_app  # noqa: E402
from mageflow.inspection import (  # noqa: E402
    WorkflowFilter,
    list_workflows,
    open_store,
    workflow_tree,
)
from mageflow.ui.command import is_loopback  # noqa: E402

runner = CliRunner()


@pytest.fixture
async def api(make_app: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a viewer on the test's namespace, without a token."""
    viewer = make_app()
    transport = httpx.ASGITransport(app=viewer)
    async with httpx.AsyncClient(transport=transport, base_url="http://viewer") as client:
        yield client
    await viewer.state.hub.aclose()


def path_of(key: str) -> str:
    """A key as the page puts it in a URL (encodeURIComponent: '{', '}' and ':' escaped)."""
    return "/api/workflows/" + quote(key, safe="")


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error", "message"} and body["message"], body
    return str(body["error"])


# -- list and tree ---------------------------------------------------------------------------------


async def test_list_is_the_ls_rows_with_its_filters_and_limit(
    mf: Mageflow, gates: Gates, api: httpx.AsyncClient, redis_url: str, namespace: str
) -> None:
    ok = await mf.sign("work", tag="ok")
    await ok.aio_run()
    bad = await mf.sign("work", tag="bad", fail=True)
    with pytest.raises(Exception, match="bad bad"):
        await bad.aio_run()
    pipeline = await mf.chain([await mf.sign("work", tag="x")], name="nightly")
    await pipeline.aio_run()

    listed = await api.get("/api/workflows")
    assert listed.status_code == 200
    assert [r["key"] for r in listed.json()] == [pipeline.key, bad.key, ok.key]  # newest first
    async with open_store(redis_url, namespace) as store:
        assert listed.json() == await list_workflows(store, WorkflowFilter())

    async def keys(query: str) -> list[str]:
        answer = await api.get("/api/workflows?" + query)
        assert answer.status_code == 200, answer.text
        return [r["key"] for r in answer.json()]

    assert await keys("status=failed") == [bad.key]
    assert await keys("task=nightly") == [pipeline.key]
    assert await keys("task=work") == [bad.key, ok.key]
    assert await keys("limit=1") == [pipeline.key]
    assert await keys("status=&task=&limit=") == [pipeline.key, bad.key, ok.key]
    for query in ("status=broken", "limit=many", "limit=0", "limit=100000"):
        answer = await api.get("/api/workflows?" + query)
        assert answer.status_code == 400, query
        assert error_of(answer) == "InvalidValueError"


async def test_tree_is_the_tree_json(
    mf: Mageflow, gates: Gates, api: httpx.AsyncClient, redis_url: str, namespace: str
) -> None:
    members = [await mf.sign("work", tag="m0"), await mf.sign("work", tag="m1", fail=True)]
    swarm = await mf.swarm(members, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
    chain = await mf.chain(
        [await mf.sign("work", tag="first"), swarm], success_callbacks=[await mf.sign("report")]
    )
    await chain.aio_run()
    await mf.engine.join()  # type: ignore[attr-defined]

    assert "{" in chain.key and ":" in chain.key
    encoded = await api.get(path_of(chain.key))
    assert encoded.status_code == 200
    assert (await api.get("/api/workflows/" + chain.key)).json() == encoded.json()
    with_tb = await api.get(path_of(chain.key) + "?traceback=1")
    async with open_store(redis_url, namespace) as store:
        assert encoded.json() == await workflow_tree(store, chain.key)
        assert with_tb.json() == await workflow_tree(store, chain.key, traceback=True)
    failed = with_tb.json()["children"][1]["children"][1]
    assert "ValueError: bad m1" in failed["error"]["traceback"]
    assert "traceback" not in encoded.json()["children"][1]["children"][1]["error"]


async def test_workers_lists_this_process(
    mf: Mageflow, gates: Gates, api: httpx.AsyncClient
) -> None:
    await mf.start()
    answer = await api.get("/api/workers")
    assert answer.status_code == 200
    [mine] = [w for w in answer.json() if w["worker"].endswith(f":{os.getpid()}")]
    assert mine["tasks"] == ["report", "work"] and mine["engine"] == "inproc"


# -- controls --------------------------------------------------------------------------------------


async def status_of(redis_url: str, namespace: str, key: str) -> str:
    async with open_store(redis_url, namespace) as store:
        return str((await workflow_tree(store, key))["status"])


async def test_controls_suspend_resume_and_cancel(
    mf: Mageflow, gates: Gates, api: httpx.AsyncClient, redis_url: str, namespace: str
) -> None:
    members = [await mf.sign("work", tag=f"m{i}", hold=True) for i in range(4)]
    swarm = await mf.swarm(members, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True)
    await swarm.aio_run_no_wait()
    await until(lambda: len(gates.started) == 2, what="two members running")

    paused = await api.post(path_of(swarm.key) + "/suspend")
    assert paused.status_code == 200
    assert paused.json() == {"key": swarm.key, "status": "suspended"}
    assert await status_of(redis_url, namespace, swarm.key) == "suspended"
    gates.open.set()  # the running two finish; nothing new starts while suspended
    await until(lambda: _is(redis_url, namespace, members[1].key, "done"), what="m1 done")
    await asyncio.sleep(0.5)
    assert len(gates.started) == 2

    resumed = await api.post(path_of(swarm.key) + "/resume")
    assert resumed.json() == {"key": swarm.key, "status": "active"}
    assert await swarm.aresult(timeout=20) == ["m0", "m1", "m2", "m3"]
    again = await api.post(path_of(swarm.key) + "/resume")
    assert again.status_code == 409 and error_of(again) == "InvalidTransitionError"

    gates.open.clear()
    held = await mf.sign("work", tag="held", hold=True)
    await held.aio_run_no_wait()
    await until(lambda: "held" in gates.started, what="held running")
    canceled = await api.post(path_of(held.key) + "/cancel")
    assert canceled.json() == {"key": held.key, "status": "canceled"}
    await until(lambda: held.key not in mf.engine.running_keys(), what="the run stopped")  # type: ignore[attr-defined]


async def _is(redis_url: str, namespace: str, key: str, wanted: str) -> bool:
    return await status_of(redis_url, namespace, key) == wanted


async def test_unknown_and_foreign_keys_are_404(
    mf: Mageflow, gates: Gates, api: httpx.AsyncClient, namespace: str
) -> None:
    done = await mf.sign("work", tag="x")
    await done.aio_run()
    missing = f"{namespace}:sig:{{abc}}:abc"
    foreign = done.key.replace(namespace, "another-ns", 1)
    for key, error in [
        (missing, "SignatureNotFoundError"),
        (foreign, "NotARecordError"),
        ("just-a-word", "NotARecordError"),
    ]:
        for answer in (
            await api.get(path_of(key)),
            await api.post(path_of(key) + "/cancel"),
            await api.get("/api/events", params={"key": key}),
        ):
            assert answer.status_code == 404, (key, answer.text)
            assert error_of(answer) == error, answer.text
    assert await status_of_api(api, done.key) == "done"  # nothing was changed


async def status_of_api(api: httpx.AsyncClient, key: str) -> str:
    return str((await api.get(path_of(key))).json()["status"])


async def test_a_bad_action_is_400(mf: Mageflow, gates: Gates, api: httpx.AsyncClient) -> None:
    sig = await mf.sign("work", tag="x")
    await sig.aio_run()
    for key in (sig.key, "no-such-key"):
        answer = await api.post(path_of(key) + "/explode")
        assert answer.status_code == 400
        assert error_of(answer) == "UnknownActionError"
        assert "suspend, resume, interrupt, cancel" in answer.json()["message"]
    assert await status_of_api(api, sig.key) == "done"


async def test_redis_down_is_503() -> None:
    from mageflow.ui.app import create_app

    viewer = create_app(url="redis://127.0.0.1:1/0", namespace="nobody")
    transport = httpx.ASGITransport(app=viewer)
    async with httpx.AsyncClient(transport=transport, base_url="http://viewer") as client:
        for path in ("/api/workflows", "/api/workers", "/api/events"):
            answer = await client.get(path)
            assert answer.status_code == 503, path
            assert error_of(answer) == "RedisUnavailableError"
            assert "127.0.0.1:1" in answer.json()["message"]
    await viewer.state.hub.aclose()


# -- the front door --------------------------------------------------------------------------------


async def test_a_token_guards_every_api_path(make_app: Callable[..., Any]) -> None:
    viewer = make_app(token="s3cret-token")
    transport = httpx.ASGITransport(app=viewer)
    async with httpx.AsyncClient(transport=transport, base_url="http://viewer") as client:
        for method, path in [
            ("GET", "/api/workflows"),
            ("GET", "/api/workers"),
            ("GET", "/api/events"),
            ("GET", path_of("k")),
            ("POST", path_of("k") + "/cancel"),
            ("GET", "/api/nothing-here"),
        ]:
            for auth in (None, "Bearer wrong", "Bearer s3cret-token-and-more", "s3cret-token"):
                headers = {"Authorization": auth} if auth else {}
                answer = await client.request(method, path, headers=headers)
                assert answer.status_code == 401, (method, path, auth)
                assert error_of(answer) == "Unauthorized"
                assert answer.headers["www-authenticate"] == "Bearer"
        for auth in ("Bearer s3cret-token", "bearer s3cret-token"):
            answer = await client.get("/api/workflows", headers={"Authorization": auth})
            assert answer.status_code == 200 and answer.json() == []
        page = await client.get("/")  # the page holds no data: it loads, then asks for the token
        assert page.status_code == 200 and "<title>mageflow</title>" in page.text
        assert (await client.get("/static/app.js")).status_code == 200
    await viewer.state.hub.aclose()


async def test_security_headers_and_no_inline_script(api: httpx.AsyncClient) -> None:
    page = await api.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
    assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    assert re.search(r"\son[a-z]+\s*=", page.text) is None  # no inline handler (onclick=...)
    script = await api.get("/static/app.js")
    assert script.headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }
    html_sinks = r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|\beval\("
    assert re.search(html_sinks, script.text) is None  # user data goes in as text only
    listed = await api.get("/api/workflows")
    assert listed.headers["x-content-type-options"] == "nosniff"
    assert listed.headers["cache-control"] == "no-store"


async def test_host_and_origin_checks(make_app: Callable[..., Any], namespace: str) -> None:
    viewer = make_app(allowed_hosts={"127.0.0.1", "localhost", "::1"})
    transport = httpx.ASGITransport(app=viewer)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as client:
        assert (await client.get("/api/workflows")).status_code == 200
        ipv6 = await client.get("/api/workflows", headers={"Host": "[::1]:8765"})
        assert ipv6.status_code == 200
        rebound = await client.get("/", headers={"Host": "evil.example:8765"})
        assert rebound.status_code == 400 and error_of(rebound) == "InvalidHost"
        key = f"{namespace}:sig:{{a}}:a"
        cross = await client.post(
            path_of(key) + "/cancel", headers={"Origin": "http://evil.example"}
        )
        assert cross.status_code == 403 and error_of(cross) == "CrossOrigin"
        same = await client.post(
            path_of(key) + "/cancel", headers={"Origin": "http://127.0.0.1:8765"}
        )
        assert same.status_code == 404  # let through: the key just does not exist
    await viewer.state.hub.aclose()


# -- the event stream ------------------------------------------------------------------------------


async def events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) of an SSE response's lines; comments come as ("comment", text)."""
    event, data = "message", []
    async for line in lines:
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


async def test_the_stream_sends_a_status_event_when_a_task_finishes(
    mf: Mageflow, gates: Gates, make_app: Callable[..., Any]
) -> None:
    held = await mf.sign("work", tag="held", hold=True)
    await held.aio_run_no_wait()
    await until(lambda: "held" in gates.started, what="held running")
    with serving(make_app(interval=0.1)) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            params = {"key": held.key}
            async with client.stream("GET", "/api/events", params=params) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                seen: list[tuple[str, Any]] = []
                async with asyncio.timeout(15):
                    async for event, data in events(response.aiter_lines()):
                        seen.append((event, data))
                        if len(seen) == 1:
                            assert event == "tree" and data["status"] == "active", seen
                            gates.open.set()
                        if event == "tree" and data["status"] == "done":
                            break
                assert ("status", {"key": held.key, "status": "done"}) in seen, seen
                assert seen[-1][1]["result"] == "held"
            await until(lambda: served.hub.streams == 0, what="the stream ended on disconnect")


async def test_the_list_stream_reports_new_and_finished_workflows(
    mf: Mageflow, gates: Gates, make_app: Callable[..., Any]
) -> None:
    with serving(make_app(interval=0.1)) as served:
        client = httpx.AsyncClient(base_url=served.url, timeout=10)
        async with client, client.stream("GET", "/api/events") as response:
            changes: list[Any] = []
            async with asyncio.timeout(15):
                async for event, data in events(response.aiter_lines()):
                    if event == "list" and data == []:
                        sig = await mf.sign("work", tag="new")
                        await sig.aio_run_no_wait()
                    if event == "status":
                        changes.append(data)
                    if {"key": sig.key, "status": "done"} in changes:
                        break
            assert changes[0]["key"] == sig.key


async def test_streams_keep_alive_and_end_when_the_server_stops(
    mf: Mageflow, gates: Gates, make_app: Callable[..., Any]
) -> None:
    sig = await mf.sign("work", tag="x")
    await sig.aio_run()
    with serving(make_app(keepalive=0.2)) as served:
        client = httpx.AsyncClient(base_url=served.url, timeout=10)
        params = {"key": sig.key}
        async with client, client.stream("GET", "/api/events", params=params) as response:
            seen: list[str] = []
            lines = response.aiter_lines()
            async with asyncio.timeout(10):
                async for event, _ in events(lines):
                    seen.append(event)
                    if event == "comment":
                        break
            assert seen == ["tree", "comment"]
            took = await asyncio.to_thread(served.stop)
            assert took < 3, f"shutdown waited {took:.1f} s on an open stream"
            async with asyncio.timeout(5):
                rest = [line async for line in lines]
            assert all(line.startswith(":") or not line for line in rest), rest
    assert served.hub.streams == 0


# -- the command -----------------------------------------------------------------------------------


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com", "127.0.0.1.nip.io", ""):
        assert not is_loopback(host), host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "example.com"])
def test_the_command_refuses_a_public_host_without_a_token(host: str, redis_url: str) -> None:
    env = {"MAGEFLOW_UI_TOKEN": ""}
    result = runner.invoke(cli_app, ["ui", "--host", host, "--redis-url", redis_url], env=env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve on"), lines
    assert "--token" in lines[0] and "Traceback" not in result.output


def test_the_command_reports_a_port_in_use(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = runner.invoke(cli_app, ["ui", "--port", port, "--redis-url", redis_url])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot listen on 127.0.0.1:{port}"), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_command_reports_an_unreachable_redis() -> None:
    result = runner.invoke(cli_app, ["ui", "--port", "0", "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot reach Redis at"), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_command_without_the_ui_extra_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
        "from mageflow.cli import main\n"
        "sys.argv = ['mageflow', 'ui', '--redis-url', 'redis://127.0.0.1:1/0']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: the web viewer needs starlette and uvicorn: pip install 'mageflow[ui]'"
    )


def test_help_does_not_load_the_web_stack() -> None:
    code = (
        "import sys\nfrom mageflow.cli import app\n"
        "print(sorted(m for m in ('starlette', 'uvicorn') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_command_serves_until_interrupted(redis_url: str, namespace: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MAGEFLOW_UI_TOKEN": "tok"}
    command = [sys.executable, "-m", "mageflow", "ui", "--port", "0", "--redis-url", redis_url]
    proc = subprocess.Popen(
        [*command, "--namespace", namespace],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # bounded by the test's timeout; the line comes at start
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", first)
        assert found, first
        url = found[1]
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = httpx.get(url + "api/workflows", headers={"Authorization": "Bearer tok"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not answer within 10 s"
                time.sleep(0.05)
        assert answer.status_code == 200 and answer.json() == []
        assert httpx.get(url + "api/workflows").status_code == 401
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
