"""Open Inference Protocol v2 over HTTP/REST, as KServe and Triton define it.

Health, server and model metadata, versioned and unversioned model routes, inference with
JSON tensors or the binary tensor data extension, and Triton's model configuration,
repository index and statistics extensions. The input's first dimension is the batch, as
Triton has it (required, at most the configuration's ``max_batch_size``); each of its items
goes to the engine separately and is batched with other requests, as on ``/v1/infer``.
Every failure answers ``{"error": "..."}``; not ready is a 400, as the protocol says.

Request bodies may be gzip- or deflate-compressed (``Content-Encoding``), as the Triton
clients send them when asked. The binary extension: the header ``Inference-Header-Content-Length: N`` says the body's
first N bytes are the JSON request; each input with ``parameters.binary_data_size`` takes
that many bytes, in order, from the rest. Outputs are answered the same way when asked
for (``parameters.binary_data`` on an output, ``binary_data_output`` on the request).
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ecoserve.server.oip_catalogue import Authenticator, OipCatalogue, Visible, visibility
from ecoserve.server.oip_model import (
    EXTENSIONS,
    OipInput,
    OipModel,
    OipRequest,
    OipResult,
    bad_request,
)
from ecoserve.server.oip_tensors import (
    array_from_bytes,
    array_from_values,
    array_to_bytes,
    array_to_values,
    check_datatype,
    check_shape,
)
from ecoserve.server.responses import json_response, read_limited
from ecoserve.server.schemas import (
    V2Error,
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2RepositoryEntry,
    V2ServerMetadata,
    inline_schema,
)
from ecoserve.server.service import ServiceError
from ecoserve.server.tensors import InputError, parse_json

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

HEADER_LENGTH = "inference-header-content-length"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "no tenant's token in Authorization: Bearer <token> (with --tenants)",
        429: "the tenant is past its share of a saturated board or its rate limit (see "
        "Retry-After)",
        400: "malformed request: bad JSON, names, shapes (the batch dimension first, at most "
        "max_batch_size), datatypes or parameters (the message says which)",
        404: "no such model or version",
        413: "body larger than --max-body-bytes, or more items than the queue holds",
        500: "the model failed on this request's batch",
        503: "not ready: starting, queue full or shutting down (see Retry-After)",
        504: "no result within the request's deadline",
    }
    return {code: {"model": V2Error, "description": text[code]} for code in codes}


def catalogue_of(request: Request) -> OipCatalogue:
    catalogue: OipCatalogue = request.app.state.catalogue
    return catalogue


def caller_of(request: Request) -> Visible:
    """Which models the caller may use: all without ``--tenants``, else its tenant's (401
    as a ServiceError when the token is missing or wrong)."""
    tenants: Authenticator | None = request.app.state.tenants
    return visibility(tenants, request.headers.get("authorization"))


def error_body(err: ServiceError) -> Response:
    return json_response({"error": err.detail}, err.status, err.headers)


# -- health and metadata --------------------------------------------------------------------
@router.get("/health/live", summary="Server liveness", response_model=V2Live)
async def live() -> dict[str, bool]:
    return {"live": True}


#: Not ready is a 400, as the protocol (a 4xx for false) and Triton have it; the daemon's
#: own ``/readyz`` keeps 503 for supervisors and load balancers.
NOT_READY = 400


def _not_ready(model: Any) -> dict[int | str, dict[str, Any]]:
    return {NOT_READY: {"model": model, "description": "not ready: starting or draining"}}


@router.get(
    "/health/ready", summary="Server readiness", response_model=V2Ready,
    responses=_not_ready(V2Ready),
)  # fmt: skip
async def ready(request: Request) -> Response:
    ok = catalogue_of(request).ready
    return json_response({"ready": ok}, 200 if ok else NOT_READY)


@router.get("", summary="Server metadata", response_model=V2ServerMetadata)
async def server_metadata() -> dict[str, Any]:
    from importlib.metadata import version

    return {"name": "ecoserve", "version": version("ecoserve"), "extensions": EXTENSIONS}


@router.get(
    "/models/stats",
    summary="Statistics of every model (Triton statistics extension)",
    response_model=dict[str, Any],
)
async def all_statistics(request: Request) -> Response:
    try:
        return json_response(catalogue_of(request).model_statistics(caller_of(request)))
    except ServiceError as err:
        return error_body(err)


def _checked(request: Request, name: str, version: str | None) -> OipModel:
    return catalogue_of(request).get(name, version, caller_of(request))


async def _metadata(request: Request, name: str, version: str | None = None) -> Response:
    try:
        return json_response(_checked(request, name, version).metadata())
    except ServiceError as err:
        return error_body(err)


async def _model_ready(request: Request, name: str, version: str | None = None) -> Response:
    try:
        model = _checked(request, name, version)
    except ServiceError as err:
        return error_body(err)
    ok = model.ready
    return json_response({"name": model.name, "ready": ok}, 200 if ok else NOT_READY)


async def _config(request: Request, name: str, version: str | None = None) -> Response:
    try:
        return json_response(_checked(request, name, version).config())
    except ServiceError as err:
        return error_body(err)


async def _statistics(request: Request, name: str, version: str | None = None) -> Response:
    try:
        return json_response(_checked(request, name, version).model_statistics(version))
    except ServiceError as err:
        return error_body(err)


# -- inference ------------------------------------------------------------------------------
def parse_request(body: bytes, header_length: str | None) -> tuple[OipRequest, dict[str, bool]]:
    """The request, and for each requested output whether it is to be answered as bytes.

    The key ``""`` holds the request-wide ``binary_data_output`` default.
    """
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise bad_request(
                f"Inference-Header-Content-Length {header_length!r} is not a number"
            ) from None
        if not 0 < n <= len(body):
            raise bad_request(
                f"Inference-Header-Content-Length {n} does not fit the body of {len(body)} bytes"
            )
        body, binary = body[:n], body[n:]
    try:
        payload = parse_json(body)
    except InputError as exc:
        raise bad_request(str(exc)) from None
    if not isinstance(payload, dict):
        raise bad_request('body must be a JSON object with an "inputs" list')
    if not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise bad_request('body must have a non-empty "inputs" list of tensors')
    parameters = _object_or_empty(payload.get("parameters"), '"parameters"')
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request('"id" must be a string')
    view = memoryview(binary)
    offset = 0
    inputs = []
    for i, entry in enumerate(payload["inputs"]):
        tensor, used = _input(entry, i, view[offset:])
        offset += used
        inputs.append(tensor)
    if offset != len(binary):
        raise bad_request(
            f"{len(binary) - offset} bytes after the JSON header belong to no input "
            "(check each input's binary_data_size)"
        )
    binary_outputs = {"": bool(parameters.get("binary_data_output", False))}
    names = None
    if payload.get("outputs") is not None:
        if not isinstance(payload["outputs"], list):
            raise bad_request('"outputs" must be a list of {"name": ...} objects')
        names = []
        for entry in payload["outputs"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise bad_request('each requested output must be an object with a "name"')
            params = _object_or_empty(
                entry.get("parameters"), f'output {entry["name"]!r}: "parameters"'
            )
            if "classification" in params:
                raise bad_request(
                    "the classification extension is not supported; ask for the tensor"
                )
            if "binary_data" in params:
                binary_outputs[entry["name"]] = bool(params["binary_data"])
            names.append(entry["name"])
    return OipRequest(inputs, names, request_id, parameters), binary_outputs


def decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A gzip- or deflate-encoded body (the clients' request compression), bounded by ``limit``.

    The bound applies to the decompressed size, so a small body cannot expand without end.
    """
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = {"gzip": 31, "deflate": 15}.get(encoding.strip().lower())
    if wbits is None:
        raise bad_request(f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad_request(f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ServiceError(
            413, f"decompressed body exceeds the limit of {limit} bytes", "too_large"
        )
    return out


def _object_or_empty(value: Any, what: str) -> dict[str, Any]:
    """An optional JSON object: absent or null is empty; anything but an object is refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be an object, got {type(value).__name__}")
    return value


def _input(entry: Any, index: int, rest: memoryview) -> tuple[OipInput, int]:
    """One input tensor and how many bytes of the binary section it consumed."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise bad_request(f"inputs[{index}] must be an object with name, shape, datatype and data")
    what = f"input {entry['name']!r}"
    try:
        missing = [k for k in ("shape", "datatype") if k not in entry]
        if missing:
            raise InputError(f"{what} lacks {missing}")
        shape = check_shape(entry["shape"], what)
        datatype = check_datatype(entry["datatype"], what)
        params = _object_or_empty(entry.get("parameters"), f'{what}: "parameters"')
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InputError(f"{what}: binary_data_size must be a non-negative integer")
            if size > len(rest):
                raise InputError(
                    f"{what} declares {size} binary bytes but only {len(rest)} follow the header"
                )
            if "data" in entry:
                raise InputError(f'{what} has both "data" and binary_data_size; send one')
            return OipInput(
                entry["name"], datatype, shape, array_from_bytes(rest[:size], datatype, shape, what)
            ), size
        if "data" not in entry:
            raise InputError(f'{what} has neither "data" nor parameters.binary_data_size')
        return OipInput(
            entry["name"], datatype, shape, array_from_values(entry["data"], datatype, shape, what)
        ), 0
    except InputError as exc:
        raise bad_request(str(exc)) from None


def encode_result(result: OipResult, binary_outputs: dict[str, bool]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    blobs: list[bytes] = []
    outputs = []
    for out in result.outputs:
        tensor: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if binary_outputs.get(out.name, binary_outputs[""]):
            raw = array_to_bytes(out.array, out.datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = array_to_values(out.array)
        outputs.append(tensor)
    header: dict[str, Any] = {
        "model_name": result.model_name,
        "model_version": result.model_version,
    }
    if result.id is not None:
        header["id"] = result.id
    if result.parameters:
        header["parameters"] = result.parameters
    header["outputs"] = outputs
    text = json.dumps(header, separators=(",", ":"), allow_nan=False, default=str).encode()
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)


async def _infer(request: Request, name: str, version: str | None = None) -> Response:
    started = time.perf_counter()
    service = catalogue_of(request).service
    known: str | None = None  # labels the per-model series only with a served model's name
    tenant: str | None = None
    try:
        caller = caller_of(request)
        tenant = None if caller is None else caller.name
        model = catalogue_of(request).get(name, version, caller)
        known = model.name
        limit = service.settings.max_body_bytes
        body = await read_limited(request, limit)
        body = decompressed(body, request.headers.get("content-encoding"), limit)
        oip_request, binary_outputs = parse_request(body, request.headers.get(HEADER_LENGTH))
        result = await model.infer(oip_request, tenant)
        if oip_request.outputs is not None:
            result.outputs = [o for o in result.outputs if o.name in oip_request.outputs]
        content, header_length = encode_result(result, binary_outputs)
    except ServiceError as err:
        service.metrics.request_done(err.outcome, model=known, tenant=tenant)
        return error_body(err)
    service.metrics.request_done("ok", time.perf_counter() - started, model=known, tenant=tenant)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


_INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(V2InferRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary tensor data extension: the JSON request (its length in "
                "Inference-Header-Content-Length), then each input's bytes",
            },
        },
    }
}


def _model_routes(prefix: str, versioned: bool) -> None:
    """Register one model's routes under ``prefix`` (with or without ``/versions/{version}``)."""
    where = " (one version)" if versioned else ""
    routes: list[tuple[str, str, Any, str, Any, tuple[int, ...]]] = [
        ("GET", "", _metadata, "Model metadata", V2ModelMetadata, (401, 404)),
        ("GET", "/ready", _model_ready, "Model readiness", V2ModelReady, (401, 404)),
        (
            "GET",
            "/config",
            _config,
            "Model configuration (Triton extension)",
            dict[str, Any],
            (401, 404),
        ),
        (
            "GET",
            "/stats",
            _statistics,
            "Model statistics (Triton extension)",
            dict[str, Any],
            (401, 404),
        ),
    ]
    for method, tail, endpoint, summary, model, codes in routes:
        responses = _errors(*codes)
        if endpoint is _model_ready:
            responses |= _not_ready(V2ModelReady)
        router.add_api_route(
            prefix + tail,
            endpoint,
            methods=[method],
            summary=summary + where,
            response_model=model,
            responses=responses,
            operation_id=f"v2_{endpoint.__name__.strip('_')}{'_versioned' if versioned else ''}",
        )
    router.add_api_route(
        prefix + "/infer",
        _infer,
        methods=["POST"],
        summary="Inference" + where,
        response_model=V2InferResponse,
        responses=_errors(400, 401, 404, 413, 429, 500, 503, 504),
        openapi_extra=_INFER_OPENAPI,
        operation_id=f"v2_infer{'_versioned' if versioned else ''}",
    )


_model_routes("/models/{name}/versions/{version}", versioned=True)
_model_routes("/models/{name}", versioned=False)


@router.post(
    "/repository/index",
    summary="Models in the repository (Triton extension)",
    response_model=list[V2RepositoryEntry],
    responses=_errors(401),
)
async def repository_index(request: Request) -> Response:
    try:
        return json_response(catalogue_of(request).repository_index(caller_of(request)))
    except ServiceError as err:
        return error_body(err)


@router.post(
    "/repository/models/{name}/load",
    summary="Load a model of the repository (a daemon of one --model refuses)",
    responses=_errors(400, 401, 404, 503),
)
async def load(request: Request, name: str) -> Response:
    try:
        await catalogue_of(request).load(name, caller_of(request))
    except ServiceError as err:
        return error_body(err)
    return json_response({})


@router.post(
    "/repository/models/{name}/unload",
    summary="Unload a model of the repository (a daemon of one --model refuses)",
    responses=_errors(400, 401, 404),
)
async def unload(request: Request, name: str) -> Response:
    try:
        await catalogue_of(request).unload(name, caller_of(request))
    except ServiceError as err:
        return error_body(err)
    return json_response({})
