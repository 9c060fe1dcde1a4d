"""``create_app``: the FastAPI application of one daemon (no global app object).

The app owns an ``InferenceService``; its lifespan starts the runtime (opening the device,
resuming saved tuner state, warming up) and, at shutdown, drains accepted requests,
saves the state and restores the device.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from devices.base import Device
from ecoserve.background.work import BackgroundWork
from ecoserve.models.loader import LoadedModel, load_model
from ecoserve.server import admin, routes_v1, routes_v2
from ecoserve.server.admission import TenantAdmission
from ecoserve.server.hosts import HostCheck, allowed_hosts
from ecoserve.server.oip_catalogue import OipCatalogue
from ecoserve.server.oip_model import OipModel
from ecoserve.server.openapi import openapi_document
from ecoserve.server.repository_serving import RepositoryModels, open_repository
from ecoserve.server.responses import json_response
from ecoserve.server.service import InferenceService, ServiceError
from ecoserve.server.settings import ServeSettings
from ecoserve.server.tenants import load_tenants
from ecoserve.server.tier_bridge import check_tier_settings, tier_routes


def create_app(
    settings: ServeSettings | None = None,
    model: LoadedModel | None = None,
    device: Device | None = None,
) -> FastAPI:
    """Build the app; ``model`` and ``device`` default to what ``settings`` name.

    Raises ValueError when the tier settings do not fit the model (the message names the fix).
    """
    settings = settings or ServeSettings()
    repository: RepositoryModels | None = None
    if settings.model_repository is not None:
        repository = open_repository(settings)
    if model is None and repository is None:
        model = load_model(
            settings.model,
            settings.input_shape,
            settings.preprocess,
            settings.postprocess,
            settings.onnx_providers,
        )
    if model is not None:
        check_tier_settings(settings, model)
    if settings.grpc_port is not None:
        check_grpc_available()
    if repository is None:
        assert model is not None
        service = InferenceService(settings, model, device)
        catalogue = OipCatalogue(service)
        tier_router = tier_routes(settings, model, run=service.run_tier_job)
    else:
        service = InferenceService(
            settings,
            None,
            device,
            repository=repository,
        )
        catalogue = OipCatalogue(
            service, [OipModel(service, m) for m in service.models.values()], repository
        )
        tier_router = None
    oip = catalogue.first()
    if settings.background is not None:  # a bad spec stops the daemon here, not in a thread
        service.background = BackgroundWork(
            settings.background,
            settings.restore_dir,
            tuner=settings.tuner,
            seed=settings.seed,
            checkpoint_every=settings.background_checkpoint_every,
            max_delay_s=settings.background_max_delay_s,
        )
    tenants = None
    if settings.tenants is not None:
        tenants = load_tenants(settings.tenants, list(service.models))
        service.admission = TenantAdmission(tenants)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        grpc_server = None
        # The output's shape, learnt from one example item before the runtime (and its
        # baseline at start) uses the model, so the model is never called from two threads at once.
        for served in catalogue.models.values():
            served.signature  # noqa: B018
        await service.start()
        try:
            # Everything loaded so far (torch, the model, the app) lives as long as the
            # process: out of the collector's sight, a full collection takes about 1 ms
            # instead of about 140 ms, a pause every request in flight would otherwise wait.
            gc.collect()
            gc.freeze()
            if settings.grpc_port is not None:
                from ecoserve.server.grpc_oip import start_grpc

                grpc_server, app.state.grpc_port = await start_grpc(
                    catalogue, settings.host, settings.grpc_port, app.state.tenants
                )
            yield
        finally:
            if grpc_server is not None:
                await service.drain()  # new RPCs get UNAVAILABLE, accepted ones finish
                await grpc_server.stop(grace=1.0)
            await service.close()

    from importlib.metadata import version

    app = FastAPI(
        title="ecoserve",
        version=version("ecoserve"),
        description=(
            "Energy- and latency-aware inference serving: requests are batched, and CPU "
            "frequency, GPU frequency and batch size are tuned while serving."
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.catalogue = catalogue
    app.state.tenants = tenants
    app.state.grpc_port = None
    for router in (routes_v1.router, admin.router, routes_v2.router, tier_router):
        if router is not None:
            add_routes(app, router)

    hosts = allowed_hosts(settings.allowed_hosts, settings.host)
    if hosts is not None:
        app.add_middleware(HostCheck, allowed=hosts)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        # Logged by the server as ever; the client gets JSON like every other error.
        return json_response(
            {
                "detail": f"internal error ({type(exc).__name__}); see the daemon's log",
                "error": "internal error",
            },
            500,
        )

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        # A refusal raised outside the inference handlers (a tier route): same JSON, headers.
        key = "error" if is_v2(request) else "detail"
        return json_response({key: exc.detail}, exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ()))) or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        )
        if is_v2(request):
            return json_response({"error": problems}, 400)
        return json_response({"detail": problems}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Open Inference Protocol clients decode {"error": ...}, also for unknown paths.
        key = "error" if is_v2(request) else "detail"
        return json_response({key: str(exc.detail)}, exc.status_code, exc.headers)

    app.openapi = lambda: openapi_document(app, oip)  # type: ignore[method-assign]
    return app


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Put a router's routes in the app's own table rather than ``include_router``.

    An included router is consulted through a wrapper that FastAPI re-validates against
    every route of the app on each request; with the protocol's thirty-odd routes that
    cost a quarter of a trivial request's time. The routes already carry their prefix,
    dependencies and responses, so adding them directly serves them the same.
    """
    app.router.routes.extend(router.routes)


def check_grpc_available() -> None:
    try:
        import grpc  # noqa: F401
        import tritonclient.grpc  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            f"--grpc-port needs the gRPC extra ({exc}); install it with "
            "pip install 'ecoserve[grpc]'"
        ) from None


def is_v2(request: Request) -> bool:
    path = request.url.path
    return path == "/v2" or path.startswith("/v2/")
