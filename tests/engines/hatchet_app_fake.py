"""A loopback stand-in for a Hatchet server, for offline tests of the Hatchet engine.

No Hatchet server can run here, so this plays the server's part at the wire, on 127.0.0.1:

* a gRPC server answering ``WorkflowService.TriggerWorkflow`` (how the SDK triggers runs) and
  ``AdminService.PutWorkflow`` (how a worker registers its workflows): the requests the real SDK
  sends are recorded as they arrive, and every trigger gets a fresh run id;
* an HTTP server answering the REST call the SDK makes to cancel runs
  (``POST /api/v1/stable/tenants/<tenant>/tasks/cancel``), recording the request body;
* :meth:`LoopbackHatchet.drain`, the scheduler and worker: it takes each recorded run, decodes its
  input with the task's own input validator, and executes the real task object with the SDK's
  ``aio_mock_run`` under Hatchet's retry rules, read from the task's registration payload
  (``to_proto``): up to ``retries`` more attempts with ``retry_count`` counting up, none after a
  ``NonRetryableException``, each attempt cut at the declared execution timeout. As Hatchet's
  worker does, it sets the SDK's per-run context variables while a task runs.

What it does not emulate: Hatchet's queueing, concurrency limits, rate limits, backoff delays,
worker assignment and reassignment, durable execution, and cancellation of a running task.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import threading
import uuid
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from hatchet_sdk import ClientConfig, ClientTLSConfig, Hatchet, NonRetryableException
from hatchet_sdk.contracts import workflows_pb2 as v0
from hatchet_sdk.contracts import workflows_pb2_grpc as v0_grpc
from hatchet_sdk.contracts.v1 import workflows_pb2 as v1
from hatchet_sdk.contracts.v1 import workflows_pb2_grpc as v1_grpc
from hatchet_sdk.contracts.v1.shared.trigger_pb2 import TriggerWorkflowRequest
from hatchet_sdk.runnables import contextvars as sdk_vars
from hatchet_sdk.runnables.workflow import BaseWorkflow, Standalone
from hatchet_sdk.utils.timedelta_to_expression import expr_to_timedelta

TENANT = "707d0855-80ab-4e1f-a156-f1c4546cbf52"


def _b64(data: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def fake_token(grpc_address: str, server_url: str) -> str:
    """A JWT the SDK accepts (it reads the claims, it does not check the signature)."""
    header = _b64({"alg": "none", "typ": "JWT"})
    claims = _b64({"sub": TENANT, "server_url": server_url, "grpc_broadcast_address": grpc_address})
    return f"{header}.{claims}.offline"


@dataclass
class TriggeredRun:
    """One ``TriggerWorkflow`` request as received, and what became of the run."""

    run_id: str
    request: TriggerWorkflowRequest
    attempts: list[int] = field(default_factory=list)
    status: str = "QUEUED"  # then COMPLETED or FAILED
    output: Any = None
    error: BaseException | None = None

    @property
    def name(self) -> str:
        return self.request.name

    @property
    def input(self) -> dict[str, Any]:
        return dict(json.loads(self.request.input))

    @property
    def metadata(self) -> dict[str, Any]:
        raw = self.request.additional_metadata
        return dict(json.loads(raw)) if raw else {}


class _Workflows(v0_grpc.WorkflowServiceServicer):  # type: ignore[misc]
    def __init__(self, server: LoopbackHatchet) -> None:
        self._server = server

    def TriggerWorkflow(self, request: Any, context: Any) -> v0.TriggerWorkflowResponse:
        run = TriggeredRun(run_id=str(uuid.uuid4()), request=request)
        with self._server.lock:
            self._server.runs.append(run)
        return v0.TriggerWorkflowResponse(workflow_run_id=run.run_id)


class _Admin(v1_grpc.AdminServiceServicer):  # type: ignore[misc]
    def __init__(self, server: LoopbackHatchet) -> None:
        self._server = server

    def PutWorkflow(self, request: Any, context: Any) -> v1.CreateWorkflowVersionResponse:
        with self._server.lock:
            self._server.registered.append(request)
        return v1.CreateWorkflowVersionResponse(id=str(uuid.uuid4()), workflow_id=request.name)


def _rest_handler(server: LoopbackHatchet) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with server.lock:
                server.rest_calls.append((self.path, body))
            answer = json.dumps({"ids": body.get("externalIds") or []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class LoopbackHatchet:
    """gRPC and REST endpoints on 127.0.0.1 that record what the SDK sends, plus a run executor."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[TriggeredRun] = []
        self.registered: list[Any] = []
        self.rest_calls: list[tuple[str, dict[str, Any]]] = []
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        v0_grpc.add_WorkflowServiceServicer_to_server(_Workflows(self), self._grpc)
        v1_grpc.add_AdminServiceServicer_to_server(_Admin(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(self))
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._done: set[str] = set()

    def start(self) -> LoopbackHatchet:
        self._grpc.start()
        self._http_thread.start()
        return self

    def stop(self) -> None:
        self._grpc.stop(grace=None)
        self._http.shutdown()
        self._http.server_close()

    def client(self, namespace: str = "") -> Hatchet:
        """A real ``Hatchet`` client whose gRPC and REST calls come here."""
        grpc_address = f"127.0.0.1:{self.grpc_port}"
        server_url = f"http://127.0.0.1:{self._http.server_address[1]}"
        return Hatchet(
            config=ClientConfig(
                token=fake_token(grpc_address, server_url),
                host_port=grpc_address,
                server_url=server_url,
                namespace=namespace,
                tls_config=ClientTLSConfig(strategy="none"),
            )
        )

    # -- what arrived -------------------------------------------------------------------------

    def triggered(self, name: str | None = None) -> list[TriggeredRun]:
        with self.lock:
            return [r for r in self.runs if name is None or r.name == name]

    def run_for(self, signature_key: str) -> TriggeredRun:
        (run,) = [r for r in self.triggered() if r.input.get("sig") == signature_key]
        return run

    # -- executing ----------------------------------------------------------------------------

    async def drain(self, workflows: Iterable[BaseWorkflow[Any]], limit: int = 200) -> int:
        """Execute recorded runs (and the runs they trigger) until none is left; return how many
        ran. ``workflows`` are the Hatchet objects a worker would have registered."""
        by_name = {w.name: w for w in workflows}
        executed = 0
        while executed < limit:
            pending = [r for r in self.triggered() if r.run_id not in self._done]
            if not pending:
                return executed
            run = pending[0]
            self._done.add(run.run_id)
            workflow = by_name[run.name]
            assert isinstance(workflow, Standalone), run.name
            await self.execute(workflow, run)
            executed += 1
        raise AssertionError(f"more than {limit} runs: a loop?")

    async def execute(self, workflow: Standalone[Any, Any], run: TriggeredRun) -> None:
        """Run one triggered run as Hatchet would: attempts, retries and execution timeout."""
        proto = workflow.to_proto().tasks[0]
        timeout = expr_to_timedelta(proto.timeout).total_seconds()
        payload = workflow.input_validator.validate_json(run.request.input)
        for retry_count in range(proto.retries + 1):
            run.attempts.append(retry_count)
            try:
                run.output = await _in_run_context(run, retry_count, workflow, payload, timeout)
            except NonRetryableException as exc:
                run.status, run.error = "FAILED", exc
                return
            except Exception as exc:
                run.status, run.error = "FAILED", exc
                continue
            run.status, run.error = "COMPLETED", None
            return


async def _in_run_context(
    run: TriggeredRun,
    retry_count: int,
    workflow: Standalone[Any, Any],
    payload: Any,
    timeout: float,
) -> Any:
    """One attempt, with the SDK context variables Hatchet's worker sets for a running task."""
    step_run_id = str(uuid.uuid4())

    async def attempt() -> Any:
        sdk_vars.ctx_workflow_run_id.set(run.run_id)
        sdk_vars.ctx_step_run_id.set(step_run_id)
        sdk_vars.ctx_action_key.set(f"{step_run_id}/{retry_count}")
        sdk_vars.ctx_additional_metadata.set(run.metadata)
        sdk_vars.ctx_task_retry_count.set(retry_count)
        return await asyncio.wait_for(
            workflow.aio_mock_run(
                input=payload, additional_metadata=run.metadata, retry_count=retry_count
            ),
            timeout,
        )

    return await asyncio.get_running_loop().create_task(
        attempt(), context=contextvars.copy_context()
    )
