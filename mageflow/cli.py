"""The ``mageflow`` command: ``demo``, ``worker``, ``show``, ``dead-letters``, ``version``, and the
operating commands of :mod:`mageflow.cli_ops` (``ls``, ``tree``, ``watch``, controls, ``workers``).

A thin layer over the library: each command parses its options and calls into mageflow.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mageflow import __version__
from mageflow.cli_common import (
    DataDir,
    Namespace,
    RedisUrl,
    console,
    err_console,
    fail,
    stop_embedded,
)
from mageflow.cli_ops import install as install_operating_commands
from mageflow.client import Mageflow
from mageflow.config import MageflowConfig
from mageflow.containers import ChainSignature, SwarmSignature
from mageflow.errors import MageflowError
from mageflow.signature import Signature
from mageflow.store.dead_letters import DeadLetter

app = typer.Typer(
    name="mageflow",
    help="Compose async tasks (signatures, callbacks, chains, swarms) with state in Redis.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help is plain text: user-facing docstrings carry no markup
)
install_operating_commands(app)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"mageflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version."
        ),
    ] = False,
) -> None:
    """Compose async tasks (signatures, callbacks, chains, swarms) with state in Redis."""


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
        raise fail(exc) from exc
    finally:
        stop_embedded(redis_url, data_dir)


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
        raise fail(exc) from exc
    finally:
        stop_embedded(redis_url, data_dir)
    console.print(signature_table(sig, children))


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
        raise fail(exc) from exc
    finally:
        stop_embedded(redis_url, data_dir)
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
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:ATTR", help="module:attribute of a Mageflow client on Taskiq"
        ),
    ],
    # Ranges are checked by run_worker, not by typer, so a bad value is one line, like a bad app.
    workers: Annotated[int, typer.Option("--workers", help="worker processes, 1 or more")] = 1,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="tasks at once per process, 1 or more")
    ] = 100,
    shutdown_timeout: Annotated[
        float, typer.Option("--shutdown-timeout", help="seconds to drain on SIGTERM, 0 or more")
    ] = 30.0,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            help="DEBUG, INFO, WARNING, ERROR or CRITICAL. Default INFO; if the app configures "
            "logging itself, its setup is kept and this level applies to mageflow's loggers only.",
        ),
    ] = None,
) -> None:
    """Run worker processes for a Mageflow client built on a Taskiq broker.

    SIGTERM or Ctrl-C drains: no new messages, running tasks finish. A second signal forces the
    exit. Settings that cannot work (an app that cannot be loaded, a broker that does not answer,
    an option out of range) stop the command at once, with one line and exit code 2.

    Hatchet users start workers from Python instead: mf.worker(...).start().
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


def _named(exc: BaseException, *names: str) -> bool:
    """True when ``exc`` is of a class named one of ``names``: typer 0.2x carries its own copy
    of click, whose exceptions are not click's, so they are told apart by name."""
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def main() -> None:
    """The console script: usage errors (an unknown option, a bad value) become one line and
    exit code 2, like every other mistake; nothing prints a traceback for them."""
    try:
        code = app(standalone_mode=False)
    except Exception as exc:
        ctx = getattr(exc, "ctx", None)
        if _named(exc, "NoArgsIsHelpError") and ctx is not None:
            console.print(ctx.get_help(), highlight=False, markup=False)
            sys.exit(0)
        if _named(exc, "UsageError"):
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            message = exc.format_message()  # type: ignore[attr-defined]
            err_console.print(
                f"error: {message}{hint}", highlight=False, markup=False, soft_wrap=True
            )
            sys.exit(2)
        if _named(exc, "Abort"):
            err_console.print("aborted", highlight=False)
            sys.exit(130)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
