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
    """Run-time control: switch tuner, pin knobs to values, or unpin all."""

    model_config = ConfigDict(extra="forbid")

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


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class V2InferRequest(BaseModel):
    id: str | None = None
    inputs: list[V2Tensor]
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2Tensor]
