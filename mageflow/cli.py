"""The ``mageflow`` command: ``demo``, ``worker``, ``show``, ``dead-letters`` and ``version``.

A thin layer over the library: each command parses its options and calls into mageflow.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mageflow import __version__
from mageflow.client import Mageflow
from mageflow.config import MageflowConfig
from mageflow.containers import ChainSignature, SwarmSignature
from mageflow.errors import MageflowError
from mageflow.signature import Signature
from mageflow.store.dead_letters import DeadLetter
from mageflow.store.embedded import embedded_default

app = typer.Typer(
    name="mageflow",
    help="Compose async tasks (signatures, callbacks, chains, swarms) with state in Redis.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="Redis to use. Default: $REDIS_URL, else a private redis-server under the data dir.",
    ),
]
DataDir = Annotated[
    str | None,
    typer.Option(
        "--data-dir", help="Embedded Redis data dir (default $MAGEFLOW_DATA_DIR or .mageflow)."
    ),
]


def _fail(exc: BaseException) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(code=1)


def _stop_embedded(redis_url: str | None, data_dir: str | None) -> None:
    """Shut down the embedded server this process started (at exit it would stop anyway)."""
    if redis_url is None and not os.environ.get("REDIS_URL"):
        embedded_default(data_dir).stop()


@app.command()
def version() -> None:
    """Print the installed mageflow version."""
    console.print(f"mageflow {__version__}")


@app.command()
def demo(
    redis_url: RedisUrl = None,
    data_dir: DataDir = None,
    tasks: Annotated[int, typer.Option("--tasks", min=1, help="Size of the demo swarm.")] = 200,
) -> None:
    """Run a short tour: callbacks, a chain and a swarm, on the in-process engine."""
    from mageflow.demo import run_demo

    try:
        asyncio.run(run_demo(redis_url, data_dir, tasks, console))
    except MageflowError as exc:
        raise _fail(exc) from exc
    finally:
        _stop_embedded(redis_url, data_dir)


def _namespace_of(key: str) -> str:
    namespace, sep, _ = key.partition(":sig:")
    return namespace if sep and namespace else MageflowConfig().namespace


async def _load(
    key: str, redis_url: str | None, data_dir: str | None
) -> tuple[Signature, list[str]]:
    """The signature under ``key`` and the keys it contains (chain steps or swarm members)."""
    config = MageflowConfig(namespace=_namespace_of(key), data_dir=data_dir)
    async with Mageflow(None, redis_url, config=config) as mf:
        sig = await mf.load_signature(key)
        if isinstance(sig, ChainSignature):
            return sig, sig.tasks
        if isinstance(sig, SwarmSignature):
            return sig, await sig.tasks()
        return sig, []


def _text(value: Any) -> str:
    return escape(json.dumps(value, default=str)) if value is not None else "-"


def signature_table(sig: Signature, children: list[str] | None = None) -> Table:
    """A two-column table of a loaded signature's fields."""
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("key", sig.key)
    table.add_row("kind", sig.kind)
    table.add_row("name", escape(sig.name))
    table.add_row("task", escape(sig.task_name) or "-")
    table.add_row("status", sig.status.value)
    table.add_row("kwargs", _text(dict(sig.kwargs)) if sig.kwargs else "-")
    error = sig.error
    if error is not None:
        table.add_row("error", escape(f"{error.type}: {error.message}"))
    else:
        table.add_row("result", _text(sig.result_value))
    table.add_row("success callbacks", "\n".join(sig.success_callbacks) or "-")
    table.add_row("error callbacks", "\n".join(sig.error_callbacks) or "-")
    table.add_row("parent", sig.parent or "-")
    if children:
        label = "steps" if sig.kind == "chain" else "members"
        table.add_row(f"{label} ({len(children)})", "\n".join(children))
    return table


@app.command()
def show(
    key: Annotated[str, typer.Argument(help="Signature key, e.g. mageflow:sig:{wf}:id")],
    redis_url: RedisUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Show a stored signature (task, chain or swarm): status, kwargs, result, callbacks."""
    try:
        sig, children = asyncio.run(_load(key, redis_url, data_dir))
    except (MageflowError, ValueError) as exc:  # ValueError: a key with an invalid namespace
        raise _fail(exc) from exc
    finally:
        _stop_embedded(redis_url, data_dir)
    console.print(signature_table(sig, children))


Namespace = Annotated[
    str | None,
    typer.Option(
        "--namespace", help="Key namespace. Default: $MAGEFLOW_NAMESPACE, else 'mageflow'."
    ),
]


async def _dead_letters(
    redis_url: str | None, data_dir: str | None, namespace: str, limit: int, purge: bool
) -> tuple[list[DeadLetter], int]:
    config = MageflowConfig(namespace=namespace, data_dir=data_dir)
    async with Mageflow(None, redis_url, config=config) as mf:
        letters = await mf.dead_letters(limit)
        purged = await mf.purge_dead_letters() if purge else 0
    return letters, purged


@app.command("dead-letters")
def dead_letters(
    redis_url: RedisUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="newest letters to list")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False,
    purge: Annotated[bool, typer.Option("--purge", help="delete them after listing")] = False,
) -> None:
    """List deliveries refused as poison (acknowledged, never run), newest last."""
    ns = namespace or os.environ.get("MAGEFLOW_NAMESPACE") or MageflowConfig().namespace
    try:
        letters, purged = asyncio.run(_dead_letters(redis_url, data_dir, ns, limit, purge))
    except MageflowError as exc:
        raise _fail(exc) from exc
    finally:
        _stop_embedded(redis_url, data_dir)
    if as_json:
        typer.echo(json.dumps([letter.to_dict() for letter in letters], indent=2))
    else:
        console.print(dead_letter_table(letters, ns))
    if purge:
        console.print(f"purged {purged} dead letter(s) from namespace {escape(ns)!r}", style="bold")


def dead_letter_table(letters: list[DeadLetter], namespace: str) -> Table:
    table = Table(title=f"dead letters of {escape(namespace)!r}: {len(letters)}")
    for column in ("at (UTC)", "reason", "task", "key", "detail", "worker"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(letter.at / 1000))
        cells = (letter.reason, letter.task, letter.key, letter.detail, letter.worker)
        table.add_row(at, *(escape(c) or "-" for c in cells))
    return table


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="module:attribute of a Mageflow client on Taskiq")],
    workers: Annotated[int, typer.Option("--workers", min=1, help="worker processes")] = 1,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="tasks at once per process")
    ] = 100,
    shutdown_timeout: Annotated[
        float, typer.Option("--shutdown-timeout", help="seconds to drain on SIGTERM")
    ] = 30.0,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Run worker processes for a Taskiq-based client. SIGTERM drains; a second signal forces.

    (Hatchet users start workers with ``mf.worker(...).start()``, as with Hatchet itself.)
    """
    from mageflow.engines.taskiq_worker import run_worker

    code = run_worker(
        target,
        workers,
        concurrency,
        shutdown_timeout=shutdown_timeout,
        log_level=log_level,
    )
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
