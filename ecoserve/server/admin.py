"""Run-time control (``POST /v1/config``): off unless an admin token is configured.

Switching the tuner or pinning a knob changes what the daemon does to the hardware, so it
needs ``Authorization: Bearer <token>``; with no token configured the endpoint answers
403 whatever is sent, so a daemon is never controllable by accident.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from ecoserve.server.responses import error_response, json_response, read_limited
from ecoserve.server.schemas import ConfigRequest, ConfigResponse, ErrorResponse
from ecoserve.server.service import InferenceService, ServiceError
from ecoserve.server.tensors import InputError, parse_json
from tuners.registry import make_tuner

router = APIRouter()


def check_token(request: Request, token: str | None) -> None:
    if token is None:
        raise ServiceError(
            403, "run-time control is disabled; start the daemon with an admin token", "invalid"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ServiceError(
            401,
            "missing bearer token (Authorization: Bearer <token>)",
            "invalid",
            {"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ServiceError(403, "wrong admin token", "invalid")


async def apply_config(service: InferenceService, req: ConfigRequest) -> dict[str, Any]:
    runtime = service.runtime
    if runtime is None or service.draining:
        raise ServiceError(503, "not running", "unavailable")
    space = runtime.space
    tuner = None
    if req.tuner is not None:
        try:
            tuner = make_tuner(req.tuner, space, seed=service.settings.seed, **req.tuner_params)
        except (ValueError, TypeError) as exc:
            raise ServiceError(422, str(exc), "invalid") from None
    if req.pin:
        unknown = [n for n in req.pin if not space.has(n)]
        if unknown:
            raise ServiceError(422, f"no knob {unknown}; knobs are {list(space.names)}", "invalid")
    if req.unpin:
        await runtime.unpin()
    if tuner is not None:
        await runtime.set_tuner(tuner)
    if req.pin:
        await runtime.pin(req.pin)
    state = runtime.describe(windows=0)
    return ConfigResponse(
        tuner=state["tuner"]["name"], values=state["config"], pinned=state["pinned"]
    ).model_dump()


@router.post(
    "/v1/config",
    response_model=ConfigResponse,
    summary="Switch tuner, pin or unpin knobs (needs the admin token)",
    responses={
        401: {"model": ErrorResponse, "description": "no bearer token sent"},
        403: {"model": ErrorResponse, "description": "control disabled or wrong token"},
        422: {"model": ErrorResponse, "description": "unknown tuner, parameter or knob"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ConfigRequest.model_json_schema()}},
        }
    },
)
async def post_config(request: Request) -> Response:
    service: InferenceService = request.app.state.service
    try:
        check_token(request, service.settings.admin_token)
        body = await read_limited(request, 64 * 1024)
        try:
            req = ConfigRequest.model_validate(parse_json(body))
        except InputError as exc:
            raise ServiceError(422, str(exc), "invalid") from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise ServiceError(422, problems, "invalid") from None
        return json_response(await apply_config(service, req))
    except ServiceError as err:
        return error_response(err)
