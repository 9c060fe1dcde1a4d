"""Running the app under uvicorn with a graceful drain on SIGTERM and SIGINT.

uvicorn's own handling closes the listening socket at once and, afterwards, re-raises the
signal, so the process dies "of SIGTERM" and systemd logs a failure. Here the first signal
instead drains: ``/readyz`` turns 503, new inference requests get 503, every accepted
request finishes, the tuner state is saved; then uvicorn shuts down, the lifespan restores
the device, and ``serve`` returns 0. A second signal forces the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Generator
from types import FrameType

import uvicorn
from fastapi import FastAPI

from ecoserve.server.connections import (
    bounded_protocol,
    quiet_accept_errors,
    raise_open_file_limit,
)
from ecoserve.server.file_budget import connection_budget, lingering_budget
from ecoserve.server.service import InferenceService
from ecoserve.server.settings import ServeSettings

log = logging.getLogger("ecoserve.server")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose exit signals drain the engine first."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain: Callable[[], Awaitable[None]],
        on_started: Callable[[str, int], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._on_started = on_started
        self._draining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        quiet_accept_errors(self._loop)
        await super().startup(sockets)
        if self.started and self._on_started is not None and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_started(str(host), int(port))

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        loop = self._loop
        if loop is None or self._draining is not None:
            log.warning("%s again: exiting without waiting", signal.Signals(signum).name)
            self.force_exit = True
            self.should_exit = True
            return
        log.info("%s: draining before exit", signal.Signals(signum).name)
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("drain failed")
        finally:
            self.should_exit = True


def curl_example(settings: ServeSettings, service: InferenceService, host: str, port: int) -> str:
    """A command line that sends one request to this daemon."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/v1/infer"
    if len(service.models) > 1:  # a repository: name the model (the smallest input shown)
        served = min(service.models.values(), key=lambda m: _numel(m.spec.shape or (1 << 30,)))
        url = f"'{url}?model={served.name}'"
    else:
        served = service.default
    shape = served.spec.shape
    if settings.tenants is not None:  # a tenant's token is needed with --tenants
        url += " -H 'Authorization: Bearer <a tenant token>'"
    if shape is not None and len(shape) > 0 and _numel(shape) <= 32:
        zeros = _nested_zeros(shape)
        return f"curl -s {url} -H 'Content-Type: application/json' -d '{{\"input\": {zeros}}}'"
    if shape is None:
        return f"curl -s {url} -H 'Content-Type: application/json' -d '{{\"input\": [0.0]}}'"
    dtype = served.spec.np_dtype.name
    return (
        f"{sys.executable} -c 'import sys, numpy as np; np.save(sys.stdout.buffer, "
        f"np.zeros({tuple(shape)}, np.{dtype}))' | curl -s {url} "
        "-H 'Content-Type: application/octet-stream' --data-binary @-"
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _nested_zeros(shape: tuple[int, ...]) -> str:
    if not shape:
        return "0.0"
    inner = _nested_zeros(shape[1:])
    return "[" + ", ".join([inner] * shape[0]) + "]"


def serve(app: FastAPI, settings: ServeSettings) -> int:
    """Run until a signal drains the daemon; 0 on a clean exit, 1 if it never started, 2 if
    the open-file limit leaves no room for connections."""
    service: InferenceService = app.state.service
    try:
        open_files = raise_open_file_limit()
        connections, clamped = connection_budget(settings.max_connections, open_files)
    except ValueError as exc:
        print(f"ecoserve serve: {exc}", file=sys.stderr)
        return 2
    if clamped is not None:
        log.warning("%s", clamped)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=settings.access_log,
        log_config=None,
        # uvicorn hands this to asyncio.wait_for, which takes fractional seconds; its
        # annotation says int only.
        timeout_graceful_shutdown=max(5.0, settings.drain_timeout_s),  # type: ignore[arg-type]
        server_header=False,
        http=bounded_protocol(
            connections,
            settings.idle_timeout_s,
            retry_after_s=settings.retry_after_s,
            on_refuse=service.metrics.connection_refused,
            lingering=lingering_budget(connections, open_files),
        ),
        timeout_keep_alive=max(1, int(settings.idle_timeout_s)),
    )

    def announce(host: str, port: int) -> None:
        what = service.name
        if len(service.models) > 1:
            what = f"{len(service.models)} models ({', '.join(service.models)})"
        print(
            f"ecoserve: serving {what} on http://{host}:{port} "
            f"(device {settings.device}, tuner {settings.tuner}); docs at /docs",
            flush=True,
        )
        print(f"try: {curl_example(settings, service, host, port)}", flush=True)
        grpc_port = getattr(app.state, "grpc_port", None)
        if grpc_port is not None:
            print(f"ecoserve: Open Inference Protocol over gRPC on {host}:{grpc_port}", flush=True)

    server = DrainingServer(config, service.drain, on_started=announce)
    try:
        server.run()
    except SystemExit:  # uvicorn exits this way when it cannot bind
        if server.started:
            raise
    if not server.started:
        print(
            f"ecoserve serve: could not start on {settings.host}:{settings.port} (see the error "
            "above); if the address is in use, another process (another ecoserve daemon?) "
            "holds the port: stop it or pass --port",
            file=sys.stderr,
            flush=True,
        )
    return 0 if server.started else 1
