"""Open Inference Protocol v2 over gRPC, on the serving loop beside the HTTP server.

The service definition is the ``GRPCInferenceService`` that ``tritonclient[grpc]`` ships
generated (``tritonclient.grpc.service_pb2*``), so Triton's and KServe's gRPC clients work
unchanged. Requests go through the same ``OipModel`` as the HTTP routes: the same queue,
batching, tuner, statistics and metrics. Inputs come as raw bytes (``raw_input_contents``)
or typed contents; outputs are answered as raw bytes, as Triton does.

Only the inference, health, metadata, configuration, statistics and repository methods
are served; the rest (streaming, shared memory, tracing) answer UNIMPLEMENTED. Models are
looked up in the same ``OipCatalogue`` as over HTTP, with the tenant named by the call's
``authorization`` metadata (``Bearer <token>``), so a tenant sees the same models either way.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from ecoserve.server.oip_catalogue import Authenticator, OipCatalogue, Visible, visibility
from ecoserve.server.oip_model import (
    EXTENSIONS,
    OipInput,
    OipModel,
    OipRequest,
    bad_request,
)
from ecoserve.server.oip_tensors import (
    array_from_bytes,
    array_from_values,
    array_to_bytes,
    check_datatype,
    check_shape,
)
from ecoserve.server.service import ServiceError
from ecoserve.server.tensors import InputError

log = logging.getLogger("ecoserve.server")

#: HTTP status of a ServiceError -> the gRPC status code clients expect for it.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

#: Which typed-contents field carries each datatype (FP16 and BF16 travel only as raw bytes).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def parameters_of(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def set_parameter(target: Any, key: str, value: Any) -> None:
    param = target[key]
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def request_of(message: service_pb2.ModelInferRequest) -> OipRequest:
    """Decode a ModelInferRequest; 400-style ServiceError naming what is wrong."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise bad_request(
            f"raw_input_contents holds {len(raw)} tensors for {len(message.inputs)} inputs"
        )
    inputs = []
    for i, tensor in enumerate(message.inputs):
        what = f"input {tensor.name!r}"
        try:
            shape = check_shape([int(d) for d in tensor.shape], what)
            datatype = check_datatype(tensor.datatype, what)
            if raw:
                array = array_from_bytes(raw[i], datatype, shape, what)
            else:
                field = CONTENTS_FIELDS.get(datatype)
                if field is None:
                    raise InputError(f"{what}: {datatype} travels only in raw_input_contents")
                array = array_from_values(
                    list(getattr(tensor.contents, field)), datatype, shape, what
                )
        except InputError as exc:
            raise bad_request(str(exc)) from None
        inputs.append(OipInput(tensor.name, datatype, shape, array))
    outputs = [o.name for o in message.outputs] or None
    return OipRequest(inputs, outputs, message.id or None, parameters_of(message.parameters))


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs over the daemon's ``OipCatalogue``."""

    def __init__(self, catalogue: OipCatalogue, tenants: Authenticator | None = None) -> None:
        self.catalogue = catalogue
        self.tenants = tenants

    async def _fail(self, context: grpc.aio.ServicerContext, err: ServiceError) -> Any:
        code = STATUS_CODES.get(err.status, grpc.StatusCode.UNKNOWN)
        await context.abort(code, err.detail)

    def _caller(self, context: Any) -> Visible:
        """The models the call's ``authorization`` metadata lets it use (401 as ServiceError)."""
        if self.tenants is None:
            return None
        metadata = dict(context.invocation_metadata() or ())
        return visibility(self.tenants, metadata.get("authorization"))

    def _model(self, context: Any, name: str, version: str | None) -> OipModel:
        return self.catalogue.get(name, version, self._caller(context))

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.catalogue.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        # A readiness probe gets an answer, not an error: another model or version is not ready.
        try:
            model = self._model(context, request.name, request.version)
        except ServiceError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=model.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        from importlib.metadata import version

        return service_pb2.ServerMetadataResponse(
            name="ecoserve", version=version("ecoserve"), extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            model = self._model(context, request.name, request.version)
        except ServiceError as err:
            return await self._fail(context, err)
        return json_format.ParseDict(model.metadata(), service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        try:
            model = self._model(context, request.name, request.version)
        except ServiceError as err:
            return await self._fail(context, err)
        config = json_format.ParseDict(model.config(), model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        try:
            if request.name:
                model = self._model(context, request.name, request.version)
                stats = model.model_statistics(request.version)
            else:
                stats = self.catalogue.model_statistics(self._caller(context))
        except ServiceError as err:
            return await self._fail(context, err)
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        try:
            index = self.catalogue.repository_index(self._caller(context))
        except ServiceError as err:
            return await self._fail(context, err)
        return json_format.ParseDict({"models": index}, service_pb2.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        try:
            await self.catalogue.load(request.model_name, self._caller(context))
        except ServiceError as err:
            return await self._fail(context, err)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        try:
            await self.catalogue.unload(request.model_name, self._caller(context))
        except ServiceError as err:
            return await self._fail(context, err)
        return service_pb2.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        service = self.catalogue.service
        known: str | None = None  # labels the per-model series only with a served name
        tenant: str | None = None
        try:
            caller = self._caller(context)
            tenant = None if caller is None else caller.name
            model = self.catalogue.get(request.model_name, request.model_version, caller)
            known = model.name
            oip_request = request_of(request)
            result = await model.infer(oip_request, tenant)
        except ServiceError as err:
            service.metrics.request_done(err.outcome, model=known, tenant=tenant)
            return await self._fail(context, err)
        response = service_pb2.ModelInferResponse(
            model_name=result.model_name, model_version=result.model_version, id=result.id or ""
        )
        for key, value in result.parameters.items():
            set_parameter(response.parameters, key, value)
        wanted = oip_request.outputs
        for out in result.outputs:
            if wanted is not None and out.name not in wanted:
                continue
            response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
            response.raw_output_contents.append(array_to_bytes(out.array, out.datatype))
        service.metrics.request_done(
            "ok", time.perf_counter() - started, model=known, tenant=tenant
        )
        return response


async def start_grpc(
    catalogue: OipCatalogue, host: str, port: int, tenants: Authenticator | None = None
) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on the running loop; the port it bound (``port`` 0 picks one)."""
    # gRPC itself refuses a message over the limit with RESOURCE_EXHAUSTED (--max-body-bytes,
    # plus room for the message's own framing), before any of it reaches the engine.
    limit = catalogue.service.settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit + 1024),
            ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(catalogue, tenants), server
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(
            f"cannot bind the gRPC port {address}: it is in use or not allowed; "
            "choose another --grpc-port"
        ) from None
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s:%d", host, bound)
    return server, bound
