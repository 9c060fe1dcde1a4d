"""The daemon's OpenAPI document, made to say what the server really does.

FastAPI documents a 422 with its own validation-error body on every route with parameters;
this daemon answers that case with ``{"detail": "..."}`` (and, under ``/v2``, a 400 with
``{"error": "..."}``), so the document is corrected to match. The inference routes get a
request example built from the served model's input, which the server accepts, and the
model name as the example of the ``name`` path parameter.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ecoserve.server.oip_model import VERSION, OipModel

V1_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
V2_INFER_PATHS = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


def openapi_document(app: FastAPI, oip: OipModel) -> dict[str, Any]:
    """Built once per app (the example depends on the model), then cached by FastAPI's rule."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _fix_validation_errors(document)
        _add_examples(document, oip)
        app.openapi_schema = document
    return app.openapi_schema


def _fix_validation_errors(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        "ErrorResponse",
        {
            "title": "ErrorResponse",
            "type": "object",
            "required": ["detail"],
            "properties": {"detail": {"type": "string", "title": "Detail"}},
        },
    )
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" not in responses:
                continue
            body = responses["422"].get("content", {}).get("application/json", {})
            if body.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                if path.startswith("/v2"):
                    del responses["422"]  # /v2 answers bad parameters with a documented 400
                else:
                    body["schema"] = V1_ERROR
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def _add_examples(document: dict[str, Any], oip: OipModel) -> None:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") != "path":
                    continue
                if parameter["name"] == "name":
                    parameter["example"] = oip.name
                elif parameter["name"] == "version":
                    parameter["example"] = VERSION
    example = infer_example(oip)
    if example is None:
        return
    for path in V2_INFER_PATHS:
        content = document["paths"][path]["post"]["requestBody"]["content"]
        content["application/json"]["example"] = example


def infer_example(oip: OipModel) -> dict[str, Any] | None:
    """One zero-filled item of the model's input as a v2 request (None: shape unknown)."""
    shape = oip.service.spec.shape
    if shape is None:
        return None
    count = 1
    for d in shape:
        count *= d
    zero = False if oip.signature.input_datatype == "BOOL" else 0
    return {
        "inputs": [
            {
                "name": oip.input_name,
                "shape": [1, *shape],
                "datatype": oip.signature.input_datatype,
                "data": [zero] * count,
            }
        ]
    }
