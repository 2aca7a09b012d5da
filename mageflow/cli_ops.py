"""Operating commands: ``ls``, ``tree``, ``watch``, ``workers`` and the four lifecycle controls.

Each reads (or steers) what a running app stored, through :mod:`mageflow.inspection`; none
needs the app's code or engine. User data (task names, kwargs, results, errors) is escaped
before rich renders it, so a name like ``[bold]x`` or ``<script>`` is shown as written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from mageflow.cli_common import (
    AsJson,
    DataDir,
    Namespace,
    RedisUrl,
    console,
    existing_redis,
    fail,
    namespace_or_default,
    stop_embedded,
)
from mageflow.errors import MageflowError
from mageflow.inspection import (
    STATUSES,
    WorkflowFilter,
    ended,
    list_workflows,
    open_store,
    operate,
    workers,
    workflow_tree,
)
from mageflow.store.redis_store import Store
from mageflow.store.schema import Control

T = TypeVar("T")

STYLE = {
    "pending": "dim",
    "active": "cyan",
    "done": "green",
    "failed": "bold red",
    "canceled": "yellow",
    "suspended": "magenta",
    "interrupted": "magenta",
    "expired": "dim",
}

Key = Annotated[str, typer.Argument(help="Signature key, e.g. mageflow:sig:{wf}:id")]


def namespace_of(key: str, namespace: str | None) -> str:
    """The namespace a signature key names (``<ns>:sig:...``), unless one was given."""
    if namespace:
        return namespace
    ns, sep, _ = key.partition(":sig:")
    return ns if sep and ns else namespace_or_default(None)


def run(
    redis_url: str | None,
    data_dir: str | None,
    namespace: str,
    job: Callable[[Store], Awaitable[T]],
) -> T:
    """Run ``job`` on a store of ``namespace``; a MageflowError becomes one line and exit 1."""
    try:
        url = existing_redis(redis_url, data_dir)
        return asyncio.run(_on_store(url, namespace, job))
    except MageflowError as exc:
        raise fail(exc) from None
    finally:
        stop_embedded(redis_url, data_dir)


async def _on_store(url: str, namespace: str, job: Callable[[Store], Awaitable[T]]) -> T:
    async with open_store(url, namespace) as store:
        return await job(store)


def status_text(status: str) -> Text:
    return Text(status, style=STYLE.get(status, ""))


def short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


# -- ls -------------------------------------------------------------------------------------------


def workflow_table(rows: list[dict[str, Any]], namespace: str) -> Table:
    table = Table(title=f"workflows of {escape(namespace)!r}: {len(rows)} shown")
    for column in ("created (UTC)", "status", "kind", "name", "key"):
        table.add_column(column, overflow="fold")
    for row in rows:
        created = (row["created_at"] or "-").replace("T", " ").rstrip("Z")
        table.add_row(
            created, status_text(row["status"]), row["kind"], Text(row["name"]), Text(row["key"])
        )
    return table


def ls(
    status: Annotated[
        str | None, typer.Option("--status", help=f"Only this status: {', '.join(STATUSES)}.")
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="Only workflows of this task or name.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 50,
    as_json: AsJson = False,
    redis_url: RedisUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
) -> None:
    """List workflows (launched root signatures), newest first."""
    ns = namespace_or_default(namespace)
    try:
        wanted = WorkflowFilter(status=status, task=task, limit=limit)
    except MageflowError as exc:
        raise fail(exc) from None
    rows = run(redis_url, data_dir, ns, lambda store: list_workflows(store, wanted))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        console.print(workflow_table(rows, ns))


# -- tree and watch -------------------------------------------------------------------------------


def node_label(node: dict[str, Any]) -> Text:
    label = Text()
    label.append_text(status_text(node["status"]))
    label.append(f" {'map' if node.get('map') else node['kind'] or '?'} ", style="bold")
    label.append(node["name"] or "?")
    label.append(f"  {node['key']}", style="dim")
    if node.get("attempt"):
        label.append(f"  attempt {node['attempt']}")
    if node.get("due_at"):  # it waits for a delay or a rate limit (docs/scheduling.md)
        label.append(f"  due {node['due_at']}", style="yellow")
    if "result" in node:
        label.append(f"  → {short(node['result'])}", style="green")
    error = node.get("error")
    if error:
        label.append(f"  {error['type']}: {error['message']}", style="red")
    return label


def swarm_line(counts: dict[str, Any]) -> RenderableType:
    total = max(int(counts["total"]), 1)
    finished = counts["done"] + counts["failed"] + counts["canceled"]
    text = Text(
        f" {counts['done']} done, {counts['failed']} failed, {counts['running']} running, "
        f"{counts['queued']} queued, of {counts['total']}"
    )
    table = Table.grid(padding=(0, 1))
    table.add_row(ProgressBar(total=total, completed=finished, width=24), text)
    return table


def add_node(parent: Tree, node: dict[str, Any], traceback: bool) -> None:
    branch = parent.add(node_label(node))
    if node.get("swarm"):
        branch.add(swarm_line(node["swarm"]))
    if traceback and node.get("error", {}).get("traceback"):
        branch.add(Text(node["error"]["traceback"].rstrip(), style="dim red"))
    for child in node.get("children", []):
        add_node(branch, child, traceback)
    for kind in ("success", "error"):
        callbacks = (node.get("callbacks") or {}).get(kind) or []
        if callbacks:
            group = branch.add(Text(f"on {kind}:", style="italic"))
            for cb in callbacks:
                add_node(group, cb, traceback)


def render_tree(tree: dict[str, Any], traceback: bool = False) -> Tree:
    root = Tree(Text("workflow", style="bold"), guide_style="dim")
    add_node(root, tree, traceback)
    return root


def tree(
    key: Key,
    as_json: AsJson = False,
    traceback: Annotated[
        bool, typer.Option("--traceback", help="Include the tracebacks of errors.")
    ] = False,
    redis_url: RedisUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
) -> None:
    """Show a workflow's whole tree: steps, members, callbacks, statuses, results, errors."""
    ns = namespace_of(key, namespace)
    found = run(redis_url, data_dir, ns, lambda store: workflow_tree(store, key, traceback))
    if as_json:
        typer.echo(json.dumps(found, indent=2, default=str))
    else:
        console.print(render_tree(found, traceback))


def watch(
    key: Key,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between refreshes.")
    ] = 0.5,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.1, help="Give up after this many seconds.")
    ] = None,
    redis_url: RedisUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
) -> None:
    """Show a workflow's tree live, with swarm progress bars, until it ends."""
    ns = namespace_of(key, namespace)

    async def follow(store: Store) -> dict[str, Any]:
        current = await workflow_tree(store, key)
        with Live(render_tree(current), console=console, auto_refresh=False) as live:
            async with asyncio.timeout(timeout):
                while not ended(current):
                    await asyncio.sleep(interval)
                    current = await workflow_tree(store, key)
                    live.update(render_tree(current), refresh=True)
        return current

    try:
        final = run(redis_url, data_dir, ns, follow)
    except TimeoutError:
        raise fail(f"{key} did not end within {timeout:g} s (it goes on)") from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    console.print(Text.assemble("ended: ", status_text(final["status"])))


# -- control --------------------------------------------------------------------------------------


def make_control(action: Control) -> Callable[..., None]:
    def command(
        key: Key,
        redis_url: RedisUrl = None,
        data_dir: DataDir = None,
        namespace: Namespace = None,
    ) -> None:
        ns = namespace_of(key, namespace)
        status = run(redis_url, data_dir, ns, lambda store: operate(store, key, action))
        console.print(Text.assemble(f"{key}: ", status_text(status)))

    command.__doc__ = CONTROL_HELP[action]
    command.__name__ = action.value
    return command


CONTROL_HELP = {
    Control.SUSPEND: "Pause gracefully: what has not started will not start. Prints the status.",
    Control.INTERRUPT: "Pause now: running tasks are stopped too. Prints the new status.",
    Control.RESUME: "Continue a suspended or interrupted workflow. Prints the new status.",
    Control.CANCEL: "Stop for good; no callback fires. Prints the new status.",
}


# -- workers --------------------------------------------------------------------------------------


def workers_command(
    as_json: AsJson = False,
    redis_url: RedisUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
) -> None:
    """List the processes that published tasks, with their tasks and last heartbeat."""
    ns = namespace_or_default(namespace)
    found = run(redis_url, data_dir, ns, workers)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table(title=f"workers of {escape(ns)!r}: {len(found)}")
    for column in ("worker", "engine", "tasks", "last heartbeat (UTC)", "ago (s)"):
        table.add_column(column, overflow="fold")
    for w in found:
        beat = (w["last_heartbeat"] or "-").replace("T", " ").rstrip("Z")
        cells = (w["worker"], w["engine"], ", ".join(w["tasks"]), beat)
        table.add_row(*(Text(c) for c in cells), str(w["seconds_since_heartbeat"]))
    console.print(table)


def install(app: typer.Typer) -> None:
    """Add the operating commands to the ``mageflow`` command."""
    app.command("ls")(ls)
    app.command("tree")(tree)
    app.command("watch")(watch)
    for action in (Control.SUSPEND, Control.RESUME, Control.INTERRUPT, Control.CANCEL):
        app.command(action.value)(make_control(action))
    app.command("workers")(workers_command)
    from mageflow.ui.command import ui  # starlette loads only when `mageflow ui` runs

    app.command("ui")(ui)


__all__ = ["install"]
