"""The served model as the Open Inference Protocol sees it, shared by HTTP and gRPC.

Both front ends translate their wire format into an ``OipRequest`` and back from an
``OipResult``; everything in between is here once: model and version lookup, input and
output names, shapes found by running an example item at start, request parameters,
Triton's model configuration, repository index and statistics, and the call into the
inference service (the same queue, batching, tuner and metrics as ``/v1/infer``).
Failures are ``ServiceError`` with the HTTP status; gRPC maps the status to its codes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ecoserve.server.oip_stats import InferenceStatistics
from ecoserve.server.oip_tensors import (
    TRITON_CONFIG_TYPES,
    datatype_of,
    output_array,
)
from ecoserve.server.served import ServedModel
from ecoserve.server.service import InferenceService, ServiceError
from ecoserve.server.tensors import InputError, to_numpy

log = logging.getLogger("ecoserve.server")

VERSION = "1"
#: Names and platform of a model that brings none of its own (an ONNX graph brings names).
INPUT_NAME = "input"
OUTPUT_NAME = "output"
PLATFORM = "pytorch_libtorch"
#: Triton's backend for each platform (its model configuration names both).
BACKENDS = {"pytorch_libtorch": "pytorch", "onnxruntime_onnx": "onnxruntime"}
#: Protocol extensions served (the names Triton uses in its server metadata).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]
#: Request parameters the protocol reserves; the rest are echoed back in the response.
RESERVED_PARAMETERS = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "binary_data_output",
        "binary_data",
        "binary_data_size",
        "headers",
    }
)


@dataclass
class Signature:
    """One input and one output; item shapes exclude the batch dimension (None: any)."""

    input_datatype: str
    input_shape: tuple[int, ...] | None
    output_datatype: str
    output_shape: tuple[int, ...] | None

    def shape_with_batch(self, item: tuple[int, ...] | None) -> list[int]:
        return [-1] if item is None else [-1, *item]


def probe_signature(served: ServedModel) -> Signature:
    """Run one example item through the model (not the engine) to learn its output.

    Models whose input shape is unknown (a preprocess entry point, a callable without
    ``input_shape``) report ``[-1]`` shapes, as the protocol allows.
    """
    spec = served.spec
    in_type = datatype_of(np.empty(0, spec.np_dtype))
    out_type, out_shape = "FP32", None
    model = served.model
    if model is None:
        log.warning("no local model to learn the output from: metadata says FP32, shape [-1]")
    elif spec.shape is not None:
        try:
            item = model.example_item()
            out = model.batch_fn([item])
            first = out[0]
            if model.postprocess is not None:
                first = model.postprocess(first)
            value = first if isinstance(first, torch.Tensor) else to_numpy(first)
            out_type = datatype_of(value)
            out_shape = tuple(int(d) for d in output_array(value).shape)
        except Exception as exc:  # a user model may fail on a random item; metadata says [-1]
            log.warning("could not run an example item to learn the output shape: %s", exc)
    return Signature(in_type, spec.shape, out_type, out_shape)


@dataclass
class OipInput:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray


@dataclass
class OipRequest:
    inputs: list[OipInput]
    outputs: list[str] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OipOutput:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray


@dataclass
class OipResult:
    model_name: str
    outputs: list[OipOutput]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    model_version: str = VERSION


def _dims(*dims: int) -> str:
    """A shape as Triton prints it in errors: ``[-1,3,32,32]``."""
    return "[" + ",".join(str(d) for d in dims) + "]"


def not_found(detail: str) -> ServiceError:
    return ServiceError(404, detail, "invalid")


def bad_request(detail: str) -> ServiceError:
    return ServiceError(400, detail, "invalid")


class OipModel:
    """One served model as the protocol sees it: its name, versions, tensors and figures."""

    def __init__(self, service: InferenceService, served: ServedModel | None = None) -> None:
        self.service = service
        self.served = served or service.default
        self.statistics: InferenceStatistics = self.served.statistics
        self._signature: Signature | None = None

    @property
    def name(self) -> str:
        return self.served.name

    @property
    def versions(self) -> tuple[str, ...]:
        return self.served.versions

    @property
    def input_name(self) -> str:
        config = self.served.repository
        if config is not None:
            return config.input.name
        return getattr(self.served.model, "input_name", INPUT_NAME)

    @property
    def output_name(self) -> str:
        config = self.served.repository
        if config is not None:
            return config.output.name
        return getattr(self.served.model, "output_name", OUTPUT_NAME)

    @property
    def platform(self) -> str:
        config = self.served.repository
        if config is not None:
            return config.platform
        return getattr(self.served.model, "platform", PLATFORM)

    @property
    def signature(self) -> Signature:
        """The tensors: as a repository model's configuration declares them (checked against
        its file at start), else learnt by running one example item."""
        if self._signature is None:
            config = self.served.repository
            if config is not None:
                out = config.output.dims
                self._signature = Signature(
                    config.input.datatype,
                    config.input.dims,
                    config.output.datatype,
                    None if any(d < 0 for d in out) else out,
                )
            else:
                self._signature = probe_signature(self.served)
        return self._signature

    @property
    def batched(self) -> bool:
        """False for a repository model with ``max_batch_size: 0``: a request is one item of
        exactly its dims, with no batch dimension (Triton's rule)."""
        config = self.served.repository
        return config is None or config.max_batch_size > 0

    def check_version(self, version: str | None) -> None:
        """404 for a version the repository index does not list, in Triton's words."""
        if version not in (None, "", *self.versions):
            served = ", ".join(self.versions)
            raise not_found(
                f"Request for unknown model: {self.name!r} version {version} is not found "
                f"(it serves version {served})"
            )

    @property
    def ready(self) -> bool:
        return self.service.ready and self.served.loaded

    # -- descriptions ---------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        sig = self.signature
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [
                {
                    "name": self.input_name,
                    "datatype": sig.input_datatype,
                    "shape": self._shape(sig.input_shape),
                }
            ],
            "outputs": [
                {
                    "name": self.output_name,
                    "datatype": sig.output_datatype,
                    "shape": self._shape(sig.output_shape),
                }
            ],
        }

    def _shape(self, item: tuple[int, ...] | None) -> list[int]:
        """A tensor's shape in metadata: the batch dimension first, where the model batches."""
        if not self.batched and item is not None:
            return list(item)
        return self.signature.shape_with_batch(item)

    def config(self) -> dict[str, Any]:
        """Triton's model configuration: batching dimension first, dims without it.

        A repository's model answers with its own ``config.pbtxt``, as Triton does.
        """
        if self.served.triton_config is not None:
            return dict(self.served.triton_config)
        sig = self.signature
        s = self.service.settings
        device = s.device.split(":", 1)[0]
        return {
            "name": self.name,
            "platform": self.platform,
            "backend": BACKENDS.get(self.platform, "python"),
            "max_batch_size": self.served.max_batch,
            "input": [
                {
                    "name": self.input_name,
                    "data_type": TRITON_CONFIG_TYPES[sig.input_datatype],
                    "dims": list(sig.input_shape) if sig.input_shape is not None else [-1],
                }
            ],
            "output": [
                {
                    "name": self.output_name,
                    "data_type": TRITON_CONFIG_TYPES[sig.output_datatype],
                    "dims": list(sig.output_shape) if sig.output_shape is not None else [-1],
                }
            ],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(round(s.max_wait_s * 1e6)),
                "default_queue_policy": {"max_queue_size": s.max_queue},
            },
            "instance_group": [
                {
                    "name": f"{self.name}_0",
                    "count": 1,
                    "kind": "KIND_GPU" if device in ("sysfs", "nvml") else "KIND_CPU",
                }
            ],
            "version_policy": {"latest": {"num_versions": 1}},
            "parameters": {
                "ecoserve_tuner": {"string_value": s.tuner},
                "ecoserve_device": {"string_value": s.device},
            },
        }

    def repository_index(self) -> list[dict[str, str]]:
        """One entry per served version, with its state (and why, when not ready)."""
        state = "READY" if self.ready else "UNAVAILABLE"
        entries = []
        for version in self.versions:
            entry = {"name": self.name, "version": version, "state": state}
            if not self.served.loaded:
                entry["reason"] = self.served.reason or "unloaded"
            elif not self.ready:
                entry["reason"] = "starting or draining"
            entries.append(entry)
        return entries

    def model_statistics(self, version: str | None = None) -> dict[str, Any]:
        versions = self.versions if version in (None, "") else (str(version),)
        return {"model_stats": [self.statistics.model_stats(self.name, v) for v in versions]}

    # -- inference ------------------------------------------------------------------------
    def _items(self, request: OipRequest) -> list[torch.Tensor]:
        if len(request.inputs) != 1:
            names = [t.name for t in request.inputs]
            raise bad_request(
                f"model {self.name!r} takes exactly one input, {self.input_name!r}; got {names}"
            )
        tensor = request.inputs[0]
        if tensor.name != self.input_name:
            raise bad_request(
                f"unknown input {tensor.name!r}; model {self.name!r} takes one input named "
                f"{self.input_name!r} ({self.signature.input_datatype}, shape "
                f"{self.signature.shape_with_batch(self.signature.input_shape)})"
            )
        arr = tensor.array
        what = f"input {tensor.name!r}"
        spec = self.served.spec
        if not self.batched:
            if tuple(arr.shape) != spec.shape:
                raise bad_request(
                    f"unexpected shape for input {tensor.name!r} for model {self.name!r}. "
                    f"Expected {_dims(*(spec.shape or ()))}, got {_dims(*arr.shape)} (the model "
                    "does not batch: max_batch_size 0)"
                )
            try:
                return [spec.check_array(arr, what)]
            except InputError as exc:
                raise bad_request(str(exc)) from None
        self._check_batch(tensor.name, arr.shape)
        try:
            return [spec.check_array(arr[i], f"{what} item {i}") for i in range(arr.shape[0])]
        except InputError as exc:
            raise bad_request(str(exc)) from None

    @property
    def max_batch_size(self) -> int:
        """The ``max_batch_size`` the model configuration advertises (``--max-batch``)."""
        return int(self.served.max_batch)

    def _check_batch(self, input_name: str, shape: tuple[int, ...]) -> None:
        """Triton's batch rules, in its order and words: the first dimension is the batch.

        A client that sends one item without its batch dimension would otherwise get an
        answer here and an error from Triton; more items than ``max_batch_size`` would be
        accepted here and refused there.
        """
        if not shape:
            raise bad_request(
                f"input {input_name!r} has no shape but model requires batch dimension "
                f"for {self.name!r}"
            )
        limit = self.max_batch_size
        if shape[0] > limit:
            raise bad_request(f"inference request batch-size must be <= {limit} for {self.name!r}")
        item = self.served.spec.shape
        if item is not None and tuple(shape[1:]) != item:
            raise bad_request(
                f"unexpected shape for input {input_name!r} for model {self.name!r}. "
                f"Expected {_dims(-1, *item)}, got {_dims(*shape)}. The first dimension is "
                f"the batch (max_batch_size {limit}): send one item as {_dims(1, *item)}."
            )
        if shape[0] == 0:
            raise bad_request(f"input {input_name!r} holds zero items")

    def _check_parameters(self, parameters: dict[str, Any]) -> float | None:
        """Refuse what a stateless model cannot honour; the request's own timeout, if any."""
        if parameters.get("sequence_id") not in (None, 0, ""):
            raise bad_request(
                "sequence_id given, but this model is stateless (no sequence batching)"
            )
        timeout = parameters.get("timeout")
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise bad_request(
                f'parameter "timeout" must be a positive number of microseconds, got {timeout!r}'
            )
        return float(timeout) / 1e6

    async def infer(self, request: OipRequest, tenant: str | None = None) -> OipResult:
        """Validate, run each item through the engine, and shape the outputs asked for;
        ``tenant`` (with ``--tenants``) is admitted by its share of the board."""
        started = time.perf_counter()
        ok = False
        try:
            result = await self._infer(request, tenant)
            ok = True
            return result
        finally:
            self.statistics.request_done(ok, time.perf_counter() - started)

    async def _infer(self, request: OipRequest, tenant: str | None) -> OipResult:
        unknown = [n for n in request.outputs or () if n != self.output_name]
        if unknown:
            raise bad_request(
                f"unknown output(s) {unknown}; model {self.name!r} has one output, "
                f"{self.output_name!r}"
            )
        timeout_s = self._check_parameters(request.parameters)
        items = self._items(request)
        results = await self.service.infer(
            items, timeout_s=timeout_s, model=self.name, tenant=tenant
        )
        try:
            arrays = [
                output_array(r) if isinstance(r, torch.Tensor) else to_numpy(r) for r in results
            ]
            out = np.stack(arrays) if self.batched else arrays[0]
        except (TypeError, ValueError) as exc:
            raise ServiceError(500, f"output is not a tensor: {exc}", "error") from None
        first = results[0]
        datatype = datatype_of(first if isinstance(first, torch.Tensor) else out)
        if datatype == "BYTES":
            raise ServiceError(
                500, f"output of dtype {out.dtype} has no protocol datatype", "error"
            )
        echoed = {k: v for k, v in request.parameters.items() if k not in RESERVED_PARAMETERS}
        output = OipOutput(self.output_name, datatype, list(out.shape), out)
        return OipResult(self.name, [output], request.id, echoed, self.versions[-1])
