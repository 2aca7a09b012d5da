"""A mageflow task on Hatchet is still the hatchet-sdk object it wraps: offline, with no Redis and
no Hatchet server (the clients here point at closed ports and are never started; one test uses
the loopback stand-in of hatchet_app_fake to show what a raw Hatchet trigger comes to).

``@mf.task`` on a Hatchet client returns a ``MageflowTask``; every name it does not define goes to
``task.engine_task`` (a ``HatchetTask``), and from there to the registered ``Standalone``
(``task.standalone``), except the mock runs, which call the user's function as hatchet-sdk's
mock runs call a plain task's.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from hatchet_app_fake import LoopbackHatchet, fake_token
from hatchet_app_fixtures import drain, hatchet_fixture, loopback_fixture  # noqa: F401
from hatchet_sdk import (
    ClientConfig,
    ClientTLSConfig,
    Context,
    DurableContext,
    Hatchet,
    NonRetryableException,
)
from hatchet_sdk.runnables.workflow import Standalone
from pydantic import BaseModel, ValidationError

from mageflow import ConfigurationError, Mageflow, MageflowTask
from mageflow.engines.hatchet import HatchetEngine, HatchetTask

#: Nothing listens here: a call that reached Redis or Hatchet would fail, not pass by chance.
CLOSED = "127.0.0.1:9"
NO_REDIS = "redis://127.0.0.1:9/0"


def offline_hatchet(namespace: str = "") -> Hatchet:
    """A real ``Hatchet`` client aimed at a closed port (the SDK connects only when it calls)."""
    return Hatchet(
        config=ClientConfig(
            token=fake_token(CLOSED, f"http://{CLOSED}"),
            host_port=CLOSED,
            server_url=f"http://{CLOSED}",
            namespace=namespace,
            tls_config=ClientTLSConfig(strategy="none"),
        )
    )


# -- the docs' example, as a user's module and test would have it --------------------------------

app = Mageflow(offline_hatchet(), NO_REDIS)


class Charge(BaseModel):
    amount: int
    currency: str = "EUR"


@app.task(name="charge")
async def charge(msg: Charge) -> int:
    return msg.amount * 100


async def test_a_users_hatchet_test_passes_unchanged() -> None:
    assert await charge.aio_mock_run(input=Charge(amount=3)) == 300


# -- mock runs -------------------------------------------------------------------------------------


@pytest.fixture(name="mf")
def mf_fixture() -> Iterator[Mageflow]:
    client = Mageflow(offline_hatchet(), NO_REDIS)
    yield client
    with pytest.raises(ConfigurationError, match="not started"):
        client.store  # noqa: B018  (no test here started mageflow: no Redis was needed)


def context_facts(msg: Charge, ctx: Context) -> dict[str, Any]:
    """What a task can see of its input and of Hatchet's context."""
    return {
        "msg": msg.model_dump(),
        "durable_context": isinstance(ctx, DurableContext),
        "retry_count": ctx.retry_count,
        "max_attempts": ctx.max_attempts,
        "metadata": dict(ctx.additional_metadata),
        "lifespan": ctx.lifespan,
        "task_name": ctx.task_name,
    }


MOCK_KWARGS: dict[str, Any] = {
    "additional_metadata": {"customer": "acme"},
    "retry_count": 2,
    "lifespan": {"db": "conn"},
}


@pytest.mark.parametrize("durable", [False, True], ids=["task", "durable"])
async def test_aio_mock_run_is_what_hatchet_gives_a_plain_task(mf: Mageflow, durable: bool) -> None:
    """Same function, declared on mageflow and as a plain Hatchet task: same result."""

    async def audited(msg: Charge, ctx: Context) -> dict[str, Any]:
        return context_facts(msg, ctx)

    declare_mf = mf.durable_task if durable else mf.task
    sdk = offline_hatchet()
    declare_sdk = sdk.durable_task if durable else sdk.task
    task = declare_mf(name="audited", retries=3)(audited)
    plain = declare_sdk(name="audited", input_validator=Charge, retries=3)(audited)

    got = await task.aio_mock_run(input=Charge(amount=5), **MOCK_KWARGS)
    assert got == await plain.aio_mock_run(input=Charge(amount=5), **MOCK_KWARGS)
    assert got == {
        "msg": {"amount": 5, "currency": "EUR"},
        "durable_context": durable,
        "retry_count": 2,
        "max_attempts": 4,
        "metadata": {"customer": "acme"},
        "lifespan": {"db": "conn"},
        "task_name": "audited",
    }


@pytest.mark.parametrize("durable", [False, True], ids=["task", "durable"])
async def test_aio_mock_run_without_a_context_parameter(mf: Mageflow, durable: bool) -> None:
    declare = mf.durable_task if durable else mf.task

    @declare(name="no-context")
    async def no_context(msg: Charge) -> str:
        return f"{msg.amount} {msg.currency}"

    assert await no_context.aio_mock_run(input=Charge(amount=7, currency="USD")) == "7 USD"
    assert await no_context.aio_mock_run(Charge(amount=1)) == "1 EUR"  # positional, as in Hatchet


async def test_a_dict_task_gets_the_dict(mf: Mageflow) -> None:
    seen: list[Any] = []

    @mf.task(name="tally")
    async def tally(msg: dict[str, Any], ctx: Context) -> int:
        seen.append(msg)
        return sum(msg.values()) + ctx.retry_count

    assert await tally.aio_mock_run(input={"a": 1, "b": 2}, retry_count=1) == 4
    assert await tally.aio_mock_run(input=None) == 0
    assert seen == [{"a": 1, "b": 2}, {}] and all(type(m) is dict for m in seen)

    @mf.durable_task(name="tally-durable")
    async def tally_durable(msg: dict[str, Any]) -> dict[str, Any]:
        return msg

    assert await tally_durable.aio_mock_run(input=Charge(amount=2)) == {
        "amount": 2,
        "currency": "EUR",
    }


async def test_a_dict_for_a_model_task_is_validated_into_the_model() -> None:
    # (hatchet-sdk itself would drop a dict input: this is what mageflow does with a message.)
    assert await charge.aio_mock_run(input={"amount": "4"}) == 400
    with pytest.raises(ValidationError):
        await charge.aio_mock_run(input={"amount": "many"})


async def test_sync_and_async_are_checked_as_hatchet_checks_them(mf: Mageflow) -> None:
    @mf.task(name="sync-charge")
    def sync_charge(msg: Charge, ctx: Context) -> str:
        return f"{msg.amount} on attempt {ctx.attempt_number}"

    assert sync_charge.mock_run(input=Charge(amount=2), retry_count=1) == "2 on attempt 2"
    with pytest.raises(TypeError, match="Use `mock_run` instead"):
        await sync_charge.aio_mock_run(input=Charge(amount=2))
    with pytest.raises(TypeError, match="Use `aio_mock_run` instead"):
        charge.mock_run(input=Charge(amount=2))


async def test_dependencies_parents_and_errors_reach_the_function(mf: Mageflow) -> None:
    sdk = offline_hatchet()
    dag = sdk.workflow(name="dag")

    @dag.task()
    async def step_1(input: Any, ctx: Context) -> dict[str, Any]:
        return {"total": 0}

    @mf.task(name="after-step-1")
    async def after_step_1(msg: Charge, ctx: Context, *, rate: float = 1.0) -> float:
        if msg.amount < 0:
            raise NonRetryableException("negative amount")
        return float(ctx.task_output(step_1)["total"]) + msg.amount * rate

    got = await after_step_1.aio_mock_run(
        input=Charge(amount=10),
        parent_outputs={"step_1": {"total": 5}},
        dependencies={"rate": 0.5},
    )
    assert got == 10.0
    with pytest.raises(NonRetryableException, match="negative amount"):
        await after_step_1.aio_mock_run(
            input=Charge(amount=-1), parent_outputs={"step_1": {"total": 0}}
        )


# -- everything else is the Standalone's ----------------------------------------------------------


async def test_to_proto_is_the_registration_with_the_task_name(mf: Mageflow) -> None:
    @mf.durable_task(name="settle", retries=2)
    async def settle(msg: Charge) -> None:
        pass

    proto = settle.to_proto()
    assert proto == settle.standalone.to_proto()  # what a worker sends Hatchet
    assert proto.name == "settle"
    (task,) = proto.tasks
    assert (task.readable_id, task.retries, task.is_durable) == ("settle", 2, True)
    schema = json.loads(proto.input_json_schema)
    assert schema["title"] == "HatchetEnvelope"  # Hatchet's input is mageflow's envelope


def test_names_mageflow_keeps_and_their_hatchet_counterparts() -> None:
    mf = Mageflow(offline_hatchet(namespace="team_"), NO_REDIS)

    @mf.task(name="refund")
    async def refund(msg: Charge) -> None:
        pass

    assert isinstance(refund, MageflowTask) and isinstance(refund.engine_task, HatchetTask)
    assert isinstance(refund.standalone, Standalone)
    assert refund.name == "refund"  # mageflow's task name, what mf.sign("refund") takes
    assert refund.engine_task.name == refund.standalone.name == "team_refund"  # namespaced
    # aio_run / aio_run_no_wait run a mageflow signature; the raw Hatchet ones stay reachable.
    for attr in ("aio_run", "aio_run_no_wait"):
        assert getattr(refund, attr).__func__ is getattr(MageflowTask, attr)
        raw = getattr(refund.engine_task, attr)
        assert raw == getattr(refund.standalone, attr) and raw.__self__ is refund.standalone
    assert refund.input_validator is refund.standalone.input_validator  # Hatchet's: the envelope
    assert refund.definition.input_validator is Charge  # mageflow's


@pytest.mark.parametrize(
    "attr",
    [
        "schedule",
        "aio_schedule",
        "create_cron",
        "aio_create_cron",
        "run",
        "run_no_wait",
        "run_many",
        "aio_run_many",
        "create_bulk_run_item",
        "get_run_ref",
        "aio_get_result",
        "list_runs",
        "delete",
    ],
)
def test_hatchet_methods_are_the_standalones_bound_methods(attr: str) -> None:
    method = getattr(charge, attr)  # found, not called: calling would need a server
    assert method == getattr(charge.standalone, attr)
    assert method.__self__ is charge.standalone
    assert method.__func__ is getattr(type(charge.standalone), attr)


def test_hatchet_sdk_has_no_cron_method_and_neither_has_the_task() -> None:
    # hatchet-sdk 1.43 names it create_cron (above); whatever the SDK has, the task has.
    assert hasattr(charge, "cron") is hasattr(charge.standalone, "cron") is False


def test_any_other_standalone_attribute_is_forwarded() -> None:
    standalone = charge.standalone
    assert charge.output_validator is standalone.output_validator
    assert charge.tasks == standalone.tasks and charge.service_name == standalone.service_name
    standalone.set_by_a_plugin = marker = object()  # type: ignore[attr-defined]
    try:
        assert charge.set_by_a_plugin is marker
        assert charge.engine_task.set_by_a_plugin is marker
    finally:
        del standalone.set_by_a_plugin  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="'charge' has no attribute 'nothing_like_this'"):
        charge.nothing_like_this  # noqa: B018
    assert {"to_proto", "aio_mock_run", "schedule", "aio_run"} <= set(dir(charge))


async def test_a_raw_hatchet_trigger_with_a_users_message_fails_on_the_worker(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    """What the docs warn of: Hatchet's own triggers bypass mageflow, and its worker refuses a
    message that is not an envelope. (Through the loopback stand-in, not a live server.)"""
    calls: list[Charge] = []

    @hatchet.task(name="raw", retries=2)
    async def raw(msg: Charge) -> None:
        calls.append(msg)

    ref = await raw.engine_task.aio_run(Charge(amount=1), wait_for_result=False)
    (run,) = loopback.triggered("raw")
    assert run.run_id == ref.workflow_run_id
    assert run.input == {}  # the SDK serializes the input as the task's input type, the envelope
    await drain(loopback, hatchet)
    assert run.status == "FAILED" and run.attempts == [0] and calls == []
    assert isinstance(run.error, NonRetryableException)
    assert "not a mageflow envelope" in str(run.error)


def test_workers_take_the_task_in_any_of_its_forms(mf: Mageflow) -> None:
    @mf.task(name="ship")
    async def ship(msg: Charge) -> None:
        pass

    engine = mf.engine
    assert isinstance(engine, HatchetEngine)
    found = engine.worker_workflows(mf, [ship, ship.engine_task, ship.standalone])
    assert found == [ship.standalone]


def test_copy_and_pickle_do_not_recurse() -> None:
    clone = copy.copy(charge)
    assert clone.to_proto() == charge.to_proto() and clone.name == "charge"
    for cls in (MageflowTask, HatchetTask):
        bare = cls.__new__(cls)  # what copy and pickle make before restoring the state
        assert not hasattr(bare, "__setstate__") and not hasattr(bare, "to_proto")
        assert type(pickle.loads(pickle.dumps(bare))) is cls
