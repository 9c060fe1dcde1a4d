"""Open Inference Protocol v2 (KServe / Triton) basics, so existing clients work unchanged.

JSON tensors only: ``{"inputs": [{"name", "shape", "datatype", "data"}]}``. The first input
tensor's leading dimension is the batch: each of its items goes to the engine separately
and is batched with other requests, exactly like ``/v1/infer``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from ecoserve.server.responses import json_response, read_limited
from ecoserve.server.schemas import V2InferRequest, V2InferResponse
from ecoserve.server.service import InferenceService, ServiceError
from ecoserve.server.tensors import (
    InputError,
    parse_json,
    to_numpy,
    v2_datatype_of,
    v2_tensor_items,
)

router = APIRouter(prefix="/v2")

PLATFORM = "pytorch_torchscript"


def service_of(request: Request) -> InferenceService:
    return request.app.state.service  # type: ignore[no-any-return]


def model_or_404(request: Request, name: str) -> InferenceService:
    service = service_of(request)
    if name not in (service.name, service.settings.model):
        raise ServiceError(
            404, f"model {name!r} not served; this daemon serves {service.name!r}", "invalid"
        )
    return service


def _error(err: ServiceError) -> Response:
    # the protocol's error body is {"error": "..."}; keep FastAPI's "detail" too for clients of v1
    return json_response({"error": err.detail, "detail": err.detail}, err.status, err.headers)


@router.get("/health/live", summary="OIP liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="OIP readiness")
async def ready(request: Request) -> Response:
    ok = service_of(request).ready
    return json_response({"ready": ok}, 200 if ok else 503)


@router.get("", summary="OIP server metadata")
async def server_metadata() -> dict[str, Any]:
    from importlib.metadata import version

    return {"name": "ecoserve", "version": version("ecoserve"), "extensions": []}


@router.get("/models/{name}", summary="OIP model metadata")
async def model_metadata(request: Request, name: str) -> Response:
    try:
        service = model_or_404(request, name)
    except ServiceError as err:
        return _error(err)
    shape = [-1, *(service.spec.shape or [])] if service.spec.shape is not None else [-1]
    return json_response(
        {
            "name": service.name,
            "versions": ["1"],
            "platform": PLATFORM,
            "inputs": [{"name": "input", "datatype": service.spec.v2_datatype, "shape": shape}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1]}],
        }
    )


@router.get("/models/{name}/ready", summary="OIP model readiness")
async def model_ready(request: Request, name: str) -> Response:
    try:
        service = model_or_404(request, name)
    except ServiceError as err:
        return _error(err)
    return json_response(
        {"name": service.name, "ready": service.ready}, 200 if service.ready else 503
    )


@router.post(
    "/models/{name}/infer",
    response_model=V2InferResponse,
    summary="OIP inference (JSON tensors)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": V2InferRequest.model_json_schema()}},
        }
    },
)
async def infer(request: Request, name: str) -> Response:
    try:
        service = model_or_404(request, name)
    except ServiceError as err:
        return _error(err)
    try:
        body = await read_limited(request, service.settings.max_body_bytes)
        try:
            payload = parse_json(body)
            if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
                raise InputError('body must be an object with an "inputs" list of tensors')
            if len(payload["inputs"]) != 1:
                raise InputError(
                    f"this model takes exactly one input tensor, got {len(payload['inputs'])}"
                )
            items = v2_tensor_items(payload["inputs"][0], service.spec)
        except InputError as exc:
            raise ServiceError(422, str(exc), "invalid") from None
        results = await service.infer(items)
        try:
            out = np.stack([to_numpy(r) for r in results])
        except (TypeError, ValueError) as exc:
            raise ServiceError(500, f"output is not a tensor: {exc}", "error") from None
    except ServiceError as err:
        service.metrics.request_done(err.outcome)
        return _error(err)
    service.metrics.request_done("ok")
    data: dict[str, Any] = {
        "model_name": service.name,
        "model_version": "1",
        "outputs": [
            {
                "name": "output",
                "shape": list(out.shape),
                "datatype": v2_datatype_of(out),
                "data": out.reshape(-1).tolist(),
            }
        ],
    }
    if isinstance(payload.get("id"), str):
        data["id"] = payload["id"]
    return json_response(data)
