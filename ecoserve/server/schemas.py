"""Request and response shapes of the HTTP API, for validation and the OpenAPI page.

Inference bodies are parsed by hand (see ``tensors``) so that a bad input gets a precise
message and the hot path skips a generic validator; these models describe the same
shapes for ``/docs`` and type the control and status endpoints.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class InferRequest(BaseModel):
    """One item as ``input`` or several as ``inputs`` (each is batched separately)."""

    input: Any | None = Field(None, description="one item: a nested list of numbers")
    inputs: list[Any] | None = Field(None, description="several items, each a nested list")
    id: str | None = Field(None, description="echoed back in the response")


class InferResponse(BaseModel):
    output: Any | None = Field(None, description="the item's output (when `input` was sent)")
    outputs: list[Any] | None = Field(None, description="one output per item (for `inputs`)")
    model: str
    latency_s: float = Field(description="time from receiving the request to its result")
    id: str | None = None


class ErrorResponse(BaseModel):
    detail: str


class ConfigRequest(BaseModel):
    """Run-time control: switch tuner, pin knobs to values, or unpin all.

    Strict: ``"unpin": 0`` or a number as a string is refused rather than guessed at.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    tuner: str | None = Field(None, description="tuner name, e.g. ecogd, grid, dvfs, fixed")
    tuner_params: dict[str, Any] = Field(default_factory=dict)
    pin: dict[str, float] | None = Field(
        None, description='knob name -> value (nearest available), e.g. {"batch_size": 8}'
    )
    unpin: bool = Field(False, description="release every pinned knob (applied before `pin`)")


class ConfigResponse(BaseModel):
    tuner: str
    values: dict[str, float]
    pinned: dict[str, float]


class V2Error(BaseModel):
    """Every failure under ``/v2`` answers this body, as the protocol defines."""

    error: str


class V2Tensor(BaseModel):
    """A tensor: ``data`` row-major (flat or nested), or its bytes after the JSON header
    when ``parameters.binary_data_size`` is given (the binary tensor data extension)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data": true} answers this output as bytes'
    )


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None,
        description='"binary_data_output": true answers every output as bytes; "timeout" '
        "(microseconds) tightens the deadline; other entries are echoed back",
    )
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2RepositoryEntry(BaseModel):
    name: str
    version: str
    state: str
    reason: str | None = None


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` written in place.

    A request body declared through ``openapi_extra`` is not registered with the OpenAPI
    components, so references into ``$defs`` would dangle there.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    inlined: dict[str, Any] = resolve(schema)
    return inlined
