"""The ecoserve HTTP API: inference, health, readiness, metrics and status."""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ecoserve.server.metrics import CONTENT_TYPE
from ecoserve.server.oip_catalogue import Visible, visibility
from ecoserve.server.responses import (
    accepts,
    error_response,
    json_response,
    media_type,
    read_limited,
)
from ecoserve.server.schemas import ErrorResponse, InferRequest, InferResponse
from ecoserve.server.served import ServedModel
from ecoserve.server.service import InferenceService, ServiceError
from ecoserve.server.tensors import (
    NPY_MEDIA_TYPES,
    InputError,
    json_items,
    load_npy,
    parse_json,
    to_jsonable,
    to_npy,
)

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "no tenant's token in Authorization: Bearer <token> (with --tenants)",
        404: "?model= names no model this caller may use",
        413: "body larger than --max-body-bytes, or more items than the queue holds",
        429: "the tenant is past its share of a saturated board or its rate limit",
        422: "malformed JSON, wrong shape or dtype (the message says which)",
        500: "the model failed on this request's batch",
        503: "queue full or shutting down (see Retry-After)",
        504: "no result within --request-timeout-s",
    }.items()
}

_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": InferRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "one .npy array: one item, or (n, *item_shape) for n items",
            },
        },
    }
}


def service_of(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


def served_of(request: Request, service: InferenceService) -> tuple[ServedModel, Visible]:
    """The model ``?model=`` names (the only one when the daemon serves one), if the caller
    may use it: 401 without a tenant's token (with ``--tenants``), 404 for a name it may not
    see, 422 when several models are served and none is named."""
    visible = visibility(request.app.state.tenants, request.headers.get("authorization"))
    name = request.query_params.get("model")
    if name is None and len(service.models) > 1:
        names = ", ".join(
            n for n in sorted(service.models) if visible is None or visible.may_use(n)
        )
        raise ServiceError(422, f"name the model with ?model=NAME (one of: {names})", "invalid")
    if (
        visible is not None
        and name is not None
        and not (name in service.models and visible.may_use(name))
    ):  # another tenant's model answers exactly as a name that does not exist
        mine = ", ".join(n for n in sorted(service.models) if visible.may_use(n)) or "none"
        raise ServiceError(404, f"no model named {name!r}; you may use {mine}", "invalid")
    served = service.served(name)
    if visible is not None and not visible.may_use(served.name):
        raise ServiceError(404, f"no model named {served.name!r} for this tenant", "invalid")
    return served, visible


async def decode_v1(
    request: Request, service: InferenceService, served: ServedModel | None = None
) -> tuple[list[Any], bool, Any]:
    """Items from a v1 body; also whether to answer with a list, and the client's id."""
    spec = (served or service.default).spec
    body = await read_limited(request, service.settings.max_body_bytes)
    kind = media_type(request)
    try:
        if kind in NPY_MEDIA_TYPES:
            arr = load_npy(body)
            items = spec.split_items(arr)
            batched = spec.shape is not None and tuple(arr.shape) != spec.shape
            return items, batched, None
        payload = parse_json(body)  # JSON whatever the label: curl -d sends a form type
        items, many = json_items(payload, spec)
        request_id = payload.get("id")
        return items, many, request_id if isinstance(request_id, str) else None
    except InputError as exc:
        raise ServiceError(422, str(exc), "invalid") from None


@router.post(
    "/v1/infer",
    response_model=InferResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
    summary="Run the model on one item or several",
)
async def infer(request: Request) -> Response:
    """JSON ``{"input": ...}`` / ``{"inputs": [...]}`` or one ``.npy`` array.

    With ``Accept: application/octet-stream`` the output comes back as one ``.npy`` array.
    """
    service = service_of(request)
    started = time.perf_counter()
    known: str | None = None  # labels the per-model series only with a served model's name
    tenant: str | None = None
    try:
        served, caller = served_of(request, service)
        known = served.name
        tenant = None if caller is None else caller.name
        items, many, request_id = await decode_v1(request, service, served)
        results = await service.infer(items, model=served.name, tenant=tenant)
    except ServiceError as err:
        service.metrics.request_done(err.outcome, model=known, tenant=tenant)
        return error_response(err)
    latency = time.perf_counter() - started
    headers = {"X-Ecoserve-Model": served.name, "X-Ecoserve-Latency-S": f"{latency:.6f}"}
    if accepts(request, *NPY_MEDIA_TYPES):
        try:
            body = to_npy(results if many else results[0])
        except (TypeError, ValueError) as exc:
            service.metrics.request_done("error", model=known, tenant=tenant)
            return json_response({"detail": f"output cannot be sent as .npy: {exc}"}, 406)
        service.metrics.request_done("ok", latency, model=known, tenant=tenant)
        return Response(body, media_type="application/octet-stream", headers=headers)
    data: dict[str, Any] = {"model": served.name, "latency_s": latency}
    if many:
        data["outputs"] = [to_jsonable(r) for r in results]
    else:
        data["output"] = to_jsonable(results[0])
    if request_id is not None:
        data["id"] = request_id
    service.metrics.request_done("ok", latency, model=known, tenant=tenant)
    return json_response(data, headers=headers)


@router.get(
    "/healthz",
    summary="Liveness: the process serves HTTP and its dispatch loop runs",
    responses={503: {"description": "the dispatch loop has died: restart the process"}},
)
async def healthz(request: Request) -> Response:
    runtime = service_of(request).runtime
    if runtime is not None and runtime.accepting and not runtime.alive:
        return json_response({"status": "dead", "reason": "the dispatch loop has stopped"}, 503)
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness: model loaded, baseline known, not draining",
    responses={503: {"description": "not ready (warming up or draining)"}},
)
async def readyz(request: Request) -> Response:
    service = service_of(request)
    if service.ready:
        return json_response({"status": "ready"})
    runtime = service.runtime
    if service.draining:
        reason = "draining"
    elif runtime is not None and runtime.accepting and not runtime.alive:
        reason = "the dispatch loop has stopped"
    else:
        reason = "measuring baseline"
    return json_response({"status": "not ready", "reason": reason}, 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(service_of(request).metrics.render(), media_type=CONTENT_TYPE)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@router.get("/v1/status", summary="Configuration, recent windows and tuner state")
async def status(request: Request, windows: int = 20) -> Response:
    service = service_of(request)
    runtime = service.runtime
    data: dict[str, Any] = {
        "model": service.name,
        "model_spec": service.settings.model_repository or service.settings.model,
        "input": service.spec.describe(),
        "ready": service.ready,
        "draining": service.draining,
        "uptime_s": time.time() - service.started_at,
        "resumed": service.resumed,
        "settings": service.settings.public_dict(),
        "connections_refused": dict(service.metrics.refused_connections),
        "models": service.models_status(),
    }
    repository = getattr(service, "repository", None)
    if repository is not None:
        data["memory"] = repository.describe()
    admission = getattr(service, "admission", None)
    if admission is not None:
        data["tenants"] = admission.describe()
    background = getattr(service, "background", None)
    if background is not None:
        data["background"] = background.describe()
    if runtime is not None:
        engine = runtime.describe(max(0, windows))
        tier = None if service.tier is None else service.tier.status()
        data.update({**engine, "tier": tier})
    return json_response(_clean(data))
