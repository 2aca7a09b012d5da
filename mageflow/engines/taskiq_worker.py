"""Worker processes for the Taskiq engine: ``run_worker("myapp.tasks:mf", workers=2)``.

Each worker process imports the app (a :class:`~mageflow.Mageflow` client built on a taskiq
broker), starts the broker as a worker and the client (which publishes the task names so
producers can sign them by name), then consumes with taskiq's :class:`~taskiq.receiver.Receiver`
under our own loop:

* SIGTERM / SIGINT: stop fetching, let running tasks finish, exit 0; a second signal (more than a
  second after the first) or ``shutdown_timeout`` forces the exit (code 1), leaving unfinished
  messages unacknowledged so the broker delivers them again;
* a message that can never run (undecodable, a bad label, a task the worker does not register, a
  payload that is not a mageflow envelope, an absurd attempt number, a key that is no record of
  this namespace) is dead-lettered, logged once and acknowledged (see mageflow/poison.py);
* a lost connection to the broker's or the state's Redis is retried with backoff, never fatal.

With ``workers > 1`` a supervisor starts that many ``python -m mageflow.engines.taskiq_worker``
children, forwards the first signal, and replaces a child that dies after running a while.

Bad configuration fails fast, before any child starts, with one line and exit code 2: an option
out of range, an app that cannot be loaded or is not a Mageflow client on Taskiq, a broker that
cannot be reached at start. Replacing children is for crashes, not for settings that can never
work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from taskiq import AckableMessage, Context
from taskiq.acks import AckController, parse_acknowledge_type
from taskiq.message import TaskiqMessage
from taskiq.receiver import Receiver
from taskiq.utils import maybe_awaitable

from mageflow.engines.taskiq import TaskiqEngine
from mageflow.engines.taskiq_streams import broker_warnings
from mageflow.engines.taskiq_wire import direct_run
from mageflow.engines.worker_setup import (
    check_broker,
    check_options,
    configure_logging,
    load_app,
    one_line,
)
from mageflow.errors import ConfigurationError, PoisonMessageError
from mageflow.poison import check_attempt, check_envelope, poison
from mageflow.store.schema import PoisonReason
from mageflow.workspace import Workspace

log = logging.getLogger("mageflow.worker")

CHILD_MODULE = "mageflow.engines.taskiq_worker"  # (this module; __name__ is __main__ under -m)
SIGNAL_DEBOUNCE = 1.0  # a signal this soon after the first is the same request (Ctrl-C reaches
# every process of the terminal's group, and the supervisor forwards it too)
STARTUP_GRACE = 5.0  # a child dying sooner than this after its start is restarted after a pause
FORCE_EXIT_AFTER = 10.0  # after forcing, exit hard if cleanup still hangs this long
EXIT_CONFIG = 2  # exit code of a worker whose configuration cannot work


class MageflowReceiver(Receiver):
    """taskiq's receiver, except that a message that can never run (see mageflow/poison.py) is
    dead-lettered and acknowledged before taskiq sees it: taskiq alone drops unparsable messages
    and unknown tasks with a warning, and loops forever on a label or payload it chokes on."""

    def __init__(self, engine: TaskiqEngine, **kwargs: Any) -> None:
        super().__init__(engine.broker, **kwargs)
        self.engine = engine
        self.direct = direct_run(engine.broker)  # (middleware are added before workers start)

    async def callback(self, message: bytes | AckableMessage, raise_err: bool = False) -> None:
        data = message.data if isinstance(message, AckableMessage) else message
        try:
            parsed = self.inspect(data)
        except PoisonMessageError as exc:
            source = getattr(message, "source", "") or "taskiq"
            if await self.engine.bury(exc, data, source) and isinstance(message, AckableMessage):
                await maybe_awaitable(message.ack())
            return
        if self.direct and "timeout" not in parsed.labels:
            await self._deliver(parsed, message)
            return
        await super().callback(message, raise_err)

    async def _deliver(self, parsed: TaskiqMessage, message: bytes | AckableMessage) -> None:
        """Hand the message to mageflow's handler as taskiq's receiver would, minus what is
        idle here (see taskiq_wire.direct_run): it acknowledges the delivery itself."""
        acks = AckController(message.ack if isinstance(message, AckableMessage) else None)
        context = Context(parsed, self.broker, acks)
        kwargs = parsed.kwargs
        try:
            await self.engine.deliver(
                parsed.task_name, kwargs["envelope"], kwargs.get("attempt", 0), context
            )
        except Exception:  # left unacknowledged: the broker hands it out again
            log.exception("delivery of %s (%s) failed", parsed.task_name, parsed.task_id)

    def inspect(self, data: bytes) -> TaskiqMessage:
        """The parsed message, if mageflow can run it; else PoisonMessageError."""
        try:
            parsed = self.broker.formatter.loads(message=data)
        except Exception as exc:
            raise poison(PoisonReason.UNDECODABLE, f"cannot decode the message: {exc}") from exc
        name = parsed.task_name
        try:
            parsed.parse_labels()
            _check_labels(parsed.labels)
        except Exception as exc:
            raise poison(PoisonReason.BAD_LABEL, f"bad label: {exc}", name) from exc
        found = self.engine.task(name)
        if found is None:
            raise poison(
                PoisonReason.UNKNOWN_TASK,
                f"this worker ({socket.gethostname()} pid {os.getpid()}) registers no task "
                f"{name!r}; it knows {', '.join(self.engine.names()) or 'no tasks'}. Every worker "
                "reading a queue must import every task sent to that queue.",
                name,
            )
        extra = sorted(set(parsed.kwargs) - {"envelope", "attempt"})
        if parsed.args or extra:
            raise poison(PoisonReason.BAD_ENVELOPE, f"unexpected arguments {extra or parsed.args}")
        check_envelope(parsed.kwargs.get("envelope"), self.engine.keys(), name)
        check_attempt(parsed.kwargs.get("attempt", 0), found)
        return parsed


def _check_labels(labels: dict[str, Any]) -> None:
    """Labels taskiq's receiver acts on must parse, or it fails the message on every delivery."""
    ack_type = labels.get("ack_type")
    if ack_type is not None:
        parse_acknowledge_type(ack_type)
    timeout = labels.get("timeout")
    if timeout is not None:
        float(timeout)


class TaskiqWorker:
    """Runs a client's tasks in this process until ``stop`` is set (``Mageflow.worker()``)."""

    def __init__(
        self,
        client: Workspace,
        concurrency: int = 100,
        shutdown_timeout: float = 30.0,
        max_prefetch: int = 0,
    ) -> None:
        if not isinstance(client.engine, TaskiqEngine):
            raise ConfigurationError("TaskiqWorker needs a Mageflow client on a taskiq broker")
        self.client = client
        self.engine: TaskiqEngine = client.engine
        self.concurrency = concurrency
        self.shutdown_timeout = shutdown_timeout
        self.max_prefetch = max_prefetch
        self.ready = False  # set once consuming: a failure before that is a failed start

    async def run(self, stop: asyncio.Event, force: asyncio.Event | None = None) -> int:
        """Serve until ``stop``; drain; 0 when every running task finished, 1 when forced."""
        engine, broker = self.engine, self.engine.broker
        engine.prepare_worker()
        engine.draining = False  # (a worker run again on the same client)
        for warning in broker_warnings(broker, self.concurrency):
            log.warning("%s", warning)
        try:
            await engine.start_broker()
            await self.client.start()
            await engine.start_worker_loops()  # in case the client had started as a producer
            receiver = MageflowReceiver(
                engine,
                max_async_tasks=self.concurrency,
                max_prefetch=self.max_prefetch,
                run_startup=False,
            )
            log.info(
                "mageflow worker ready: %d task(s) [%s], concurrency %d, broker %s",
                len(engine.names()),
                ", ".join(engine.names()),
                self.concurrency,
                type(broker).__name__,
            )
            self.ready = True
            return await self._serve(receiver, stop, force or asyncio.Event())
        finally:
            await self.client.close()  # stops the engine's loops and shuts the broker down
            await engine.stop()  # (when the client never started)

    async def _serve(self, receiver: Receiver, stop: asyncio.Event, force: asyncio.Event) -> int:
        finish = asyncio.Event()
        listen = asyncio.create_task(receiver.listen(finish))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({listen, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if listen.done():
            stopping.cancel()
            listen.result()  # raises what stopped the listener
            log.error("the broker stopped delivering messages")
            return 1
        self.engine.draining = True
        finish.set()
        log.info("stopping: no new messages; waiting for %d running task(s)", self.engine.in_flight)
        forcing = asyncio.create_task(force.wait())
        await asyncio.wait(
            {listen, forcing}, timeout=self.shutdown_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        forcing.cancel()
        if listen.done() and not listen.cancelled() and listen.exception() is None:
            log.info("all running tasks finished; bye")
            return 0
        await self._abort(listen)
        return 1

    async def _abort(self, listen: asyncio.Task[None]) -> None:
        count = self.engine.abort()
        log.warning(
            "forced exit: %d task(s) did not finish; their messages stay unacknowledged and "
            "will be delivered again",
            count,
        )
        listen.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.gather(listen, return_exceptions=True), 5)


# -- one worker process ---------------------------------------------------------------------------


def serve(
    app: str,
    concurrency: int = 100,
    shutdown_timeout: float = 30.0,
    supervised: bool = False,
    log_level: str | None = None,
) -> int:
    """Run one worker in this process until SIGTERM/SIGINT; the exit code."""
    try:
        client = load_app(app)
    except ConfigurationError as exc:
        return _refuse(f"cannot load {app}: {exc}", log_level, exc)
    configure_logging(log_level)
    return _serve_client(client, concurrency, shutdown_timeout, supervised)


def _serve_client(
    client: Workspace, concurrency: int, shutdown_timeout: float, supervised: bool
) -> int:
    worker = TaskiqWorker(client, concurrency=concurrency, shutdown_timeout=shutdown_timeout)
    try:
        return asyncio.run(_serve_with_signals(worker, supervised))
    except Exception as exc:
        if worker.ready:
            raise  # a crash while serving: its traceback is what one needs to fix it
        # A failed start (the broker or Redis went away since the check at start): one line.
        # A supervisor restarts this child after a pause; a lone worker exits.
        log.error("the worker could not start: %s", one_line(exc))
        log.debug("why the worker could not start", exc_info=exc)
        return EXIT_CONFIG


async def _serve_with_signals(worker: TaskiqWorker, supervised: bool) -> int:
    loop = asyncio.get_running_loop()
    stop, force = asyncio.Event(), asyncio.Event()
    first: list[float] = []

    def on_signal(signum: int) -> None:
        now = time.monotonic()
        if not first:
            first.append(now)
            log.info("got %s: finishing running tasks (signal again to force)", _name(signum))
            stop.set()
        elif now - first[0] > SIGNAL_DEBOUNCE and not force.is_set():
            log.warning("got %s again: forcing exit", _name(signum))
            force.set()
            _exit_hard_later()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    watcher = loop.create_task(_watch_parent(stop)) if supervised else None
    try:
        return await worker.run(stop, force)
    finally:
        if watcher is not None:
            watcher.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _watch_parent(stop: asyncio.Event) -> None:
    """A supervised worker whose supervisor died drains and exits."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            break
    log.warning("supervisor %d is gone: stopping", parent)
    stop.set()


def _exit_hard_later() -> None:
    timer = threading.Timer(FORCE_EXIT_AFTER, os._exit, (1,))
    timer.daemon = True
    timer.start()


def _name(signum: int) -> str:
    return signal.Signals(signum).name


# -- several worker processes ---------------------------------------------------------------------


def run_worker(
    app: str,
    workers: int = 1,
    concurrency: int = 100,
    *,
    shutdown_timeout: float = 30.0,
    log_level: str | None = None,
) -> int:
    """Run ``workers`` processes serving the tasks of ``app`` ("module:attribute" naming a
    Mageflow client on a taskiq broker), each running up to ``concurrency`` tasks at once.

    ``log_level`` (default INFO) is the level of the logging the worker sets up; when the app
    configured logging itself at import, only the ``mageflow`` loggers get a level given here.

    Returns the exit code: 0 after a clean shutdown, 1 when forced or a worker failed, 2
    (:data:`EXIT_CONFIG`) when the configuration cannot work: an option out of range, an app
    that cannot be loaded, a broker that cannot be reached. Those are checked once, here,
    before any worker starts, and reported in one line.
    """
    try:
        check_options(workers, concurrency, shutdown_timeout, log_level)
    except ConfigurationError as exc:
        return _refuse(str(exc), None, exc)
    try:
        client = load_app(app)
    except ConfigurationError as exc:
        return _refuse(f"cannot load {app}: {exc}", log_level, exc)
    configure_logging(log_level)  # after the import: an app that set up logging keeps it
    assert isinstance(client.engine, TaskiqEngine)  # (load_app checked it)
    try:
        asyncio.run(check_broker(client.engine.broker))
    except ConfigurationError as exc:
        return _refuse(str(exc), log_level, exc)
    if workers == 1:
        return _serve_client(client, concurrency, shutdown_timeout, supervised=False)
    args = ["--concurrency", str(concurrency), "--shutdown-timeout", str(shutdown_timeout)]
    if log_level is not None:
        args += ["--log-level", log_level]
    child = [sys.executable, "-m", CHILD_MODULE, app, *args, "--supervised"]
    return Supervisor(child, workers, shutdown_timeout).run()


def _refuse(message: str, log_level: str | None, cause: BaseException | None = None) -> int:
    """Report a configuration that cannot work in one line (the cause's traceback only at
    DEBUG) and return :data:`EXIT_CONFIG`."""
    with contextlib.suppress(ConfigurationError):  # a bad level: fall back to the default
        configure_logging(log_level)
    configure_logging(None)  # (nothing when configured above)
    log.error("%s", message)
    if cause is not None:  # what went wrong where: at DEBUG, for who asks
        log.debug("details", exc_info=cause.__cause__ or cause)
    return EXIT_CONFIG


class Supervisor:
    """Keeps ``count`` worker children running until the first SIGTERM/SIGINT."""

    def __init__(self, command: list[str], count: int, shutdown_timeout: float) -> None:
        self.command = command
        self.count = count
        self.deadline_after = shutdown_timeout + FORCE_EXIT_AFTER
        self.children: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.signals: list[tuple[int, float]] = []
        self.due: dict[int, float] = {}  # slot -> when its dead child is replaced

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.signals.append((signum, time.time())))
        for slot in range(self.count):
            self._spawn(slot)
        self._watch()
        return self._shut_down()

    def _spawn(self, slot: int) -> None:
        proc = subprocess.Popen(self.command)
        self.children[slot] = (proc, time.monotonic())
        log.info("started worker %d (pid %d)", slot, proc.pid)

    def _watch(self) -> None:
        """Until a signal, replace children that die; one that keeps dying soon after starting
        (Redis or the broker unreachable, say) is restarted with a growing pause, up to 30 s."""
        quick_deaths = dict.fromkeys(self.children, 0)
        due = self.due
        while not self.signals:
            time.sleep(0.2)
            now = time.monotonic()
            for slot, at in list(due.items()):
                if now >= at:
                    del due[slot]
                    self._spawn(slot)
            for slot, (proc, started) in list(self.children.items()):
                code = proc.poll()
                if code is None or slot in due:
                    continue
                quick = now - started < STARTUP_GRACE
                quick_deaths[slot] = quick_deaths[slot] + 1 if quick else 0
                pause = min(2.0 ** quick_deaths[slot] - 1, 30.0)
                log.warning(
                    "worker %d (pid %d) exited with %d; replacing it in %.0f s",
                    slot,
                    proc.pid,
                    code,
                    pause,
                )
                due[slot] = now + pause

    def _shut_down(self) -> int:
        self._send(signal.SIGTERM)
        handled = len(self.signals)
        deadline = time.monotonic() + self.deadline_after
        while any(p.poll() is None for p, _ in self.children.values()):
            if time.monotonic() > deadline:
                log.warning("workers did not stop in time: killing them")
                self._send(signal.SIGKILL)
                break
            if len(self.signals) > handled:
                at = self.signals[-1][1]
                handled = len(self.signals)
                if at - self.signals[0][1] > SIGNAL_DEBOUNCE:
                    self._send(signal.SIGTERM)  # the children count it as their second signal
            time.sleep(0.1)
        codes = [p.wait() for slot, (p, _) in self.children.items() if slot not in self.due]
        return next((c if c > 0 else 1 for c in codes if c != 0), 0)

    def _send(self, sig: signal.Signals) -> None:
        for proc, _ in self.children.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mageflow.engines.taskiq_worker",
        description="Run mageflow Taskiq workers for APP (module:attribute of a Mageflow client).",
    )
    parser.add_argument("app")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--concurrency", type=int, default=100, help="tasks at once per process")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds to drain")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING ...")
    parser.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.supervised:
        return serve(
            opts.app, opts.concurrency, opts.shutdown_timeout, True, log_level=opts.log_level
        )
    return run_worker(
        opts.app,
        opts.workers,
        opts.concurrency,
        shutdown_timeout=opts.shutdown_timeout,
        log_level=opts.log_level,
    )


if __name__ == "__main__":
    sys.exit(main())
