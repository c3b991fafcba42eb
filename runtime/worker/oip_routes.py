"""The worker's KServe Open Inference Protocol v2 routes: health, metadata, infer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from runtime.api import oip
from runtime.api.render import json_response
from runtime.errors import BadInput
from runtime.worker.state import worker_state

__all__ = ["router"]

router = APIRouter()


@router.get("/v2")
async def server_metadata(request: Request) -> Response:
    return json_response(
        {"name": "edgeinfer", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    )


@router.get("/v2/health/live")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    state = worker_state(request)
    # The model's name: a supervisor checks it is its own model's worker on this port.
    body: dict[str, Any] = {"ready": state.ready, "model": state.spec.name}
    if state.ready:
        # What a supervisor reports as the load and warm-up phases of a cold start.
        report = state.runtime.report
        body["load"] = {
            "phases": report.phases,
            "memory_bytes": report.memory_bytes,
            "device": report.device,
            "runtime": state.runtime.name.value,
        }
    elif state.load_error is not None:
        body["error"] = state.load_error.message
    return json_response(body, 200 if state.ready else 503)


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    state = worker_state(request)
    state.check_name(name)
    runtime = state.runtime
    return json_response(
        oip.metadata_response(
            name, f"edgeinfer_{runtime.name.value}", runtime.inputs(), runtime.outputs()
        )
    )


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    state = worker_state(request)
    state.check_name(name)
    return json_response({"name": name, "ready": state.ready}, 200 if state.ready else 503)


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    state = worker_state(request)
    state.check_name(name)
    header = request.headers.get(oip.HEADER_LENGTH)
    try:
        header_length = int(header) if header is not None else None
    except ValueError:
        raise BadInput(
            f"Inference-Header-Content-Length must be a number, got {header!r}"
        ) from None
    body, tensors = oip.decode_request(await request.body(), header_length)
    runtime = await state.wait_ready()
    outputs = await runtime.infer(tensors)
    payload, json_length = oip.encode_response(name, body, outputs)
    if json_length is None:
        return Response(payload, media_type="application/json")
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )
