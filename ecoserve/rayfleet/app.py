"""The fleet as a Ray Serve application: one replica per board, and an ingress.

Each board is its own deployment (``board-<name>``, one replica) that asks for one unit of
the board's Ray custom resource (``board_<name>``), so Ray places it on the node that
offers that resource, i.e. on that board; Ray restarts it there if it dies. The replica
runs the daemon's own service on the board's device (:class:`BoardService`). The ingress
(``FleetIngress``, route ``/``) serves the daemon's HTTP API and runs the fleet policy.

Entry points::

    serve run ecoserve.rayfleet.app:build_app boards=xavier-nx:2,nano:1
    # or in a Serve config file: import_path: ecoserve.rayfleet.app:build_app, args: {...}
    ecoserve fleet --boards xavier-nx:2,nano:1
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from ecoserve.background.data_parallel import LendSettings
from ecoserve.models.loader import load_model
from ecoserve.rayfleet.board import BoardService
from ecoserve.rayfleet.config import FleetSettings, board_settings
from ecoserve.rayfleet.ingress import FleetService, fleet_app
from ecoserve.rayfleet.lending import FleetLender, LentTraining
from ecoserve.server.settings import ServeSettings
from ecoserve.server.tensors import TensorSpec

log = logging.getLogger("ecoserve.fleet")


@serve.deployment(num_replicas=1, max_ongoing_requests=1024, health_check_period_s=2.0)
class BoardReplica:
    """One board's service (see ``ecoserve.rayfleet.board``)."""

    # Ray Serve awaits an async constructor; mypy holds every __init__ to returning None.
    async def __init__(  # type: ignore[misc]
        self, name: str, settings: ServeSettings, record_dir: str | None
    ) -> None:
        self.board = BoardService(name, settings, record_dir)
        await self.board.start()

    async def infer(self, items: list[Any]) -> list[Any]:
        return await self.board.infer(items)

    async def stats(self) -> dict[str, Any]:
        return self.board.stats()

    async def park(self) -> dict[str, float]:
        return await self.board.park()

    async def unpark(self) -> None:
        await self.board.unpark()

    def check_health(self) -> None:
        runtime = self.board.service.runtime
        if runtime is not None and runtime.accepting and not runtime.alive:
            raise RuntimeError(f"board {self.board.name}: the dispatch loop has stopped")

    async def __del__(self) -> None:
        await self.board.close()


class _HandleClient:
    """A board reached through its deployment handle; its own errors come back as raised."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.handle, method).remote(*args)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else exc) from None

    async def infer(self, items: list[Any]) -> list[Any]:
        outputs: list[Any] = await self._call("infer", items)
        return outputs

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._call("stats")
        return stats

    async def park(self) -> Any:
        return await self._call("park")

    async def unpark(self) -> Any:
        return await self._call("unpark")


@serve.deployment(num_replicas=1, max_ongoing_requests=4096)
@serve.ingress()
class FleetIngress:
    """The HTTP API of ``ecoserve serve`` over the fleet, and the fleet policy loop."""

    # Ray Serve awaits an async constructor; mypy holds every __init__ to returning None.
    async def __init__(  # type: ignore[misc]
        self, fleet: FleetSettings, handles: dict[str, DeploymentHandle]
    ) -> None:
        serve_settings = ServeSettings(model=fleet.model, **dict(fleet.serve))
        model = load_model(serve_settings.model, serve_settings.input_shape)
        spec = TensorSpec(
            None if model.preprocess else (serve_settings.input_shape or model.input_shape),
            model.input_dtype,
        )
        clients = {name: _HandleClient(h) for name, h in handles.items()}
        lender = None
        if fleet.lend is not None:
            settings = LendSettings.from_mapping(fleet.lend)
            lender = FleetLender(LentTraining(settings, state_dir=fleet.state_dir))
        self.service = FleetService(
            fleet, serve_settings, spec, clients, model=model, lender=lender
        )
        await self.service.start()

    def __serve_build_asgi_app__(self) -> Any:
        return fleet_app(self.service)

    async def __del__(self) -> None:
        await self.service.close()


def build_fleet(fleet: FleetSettings) -> Any:
    """The bound Serve application of ``fleet``."""
    # @serve.deployment turned both classes into Deployments; mypy keeps a decorated class's
    # own type, so it does not see their ``options``.
    handles = {}
    for board in fleet.boards:
        handles[board.name] = BoardReplica.options(  # type: ignore[attr-defined]
            name=f"board-{board.name}",
            ray_actor_options={"num_cpus": 0, "resources": {board.resource: 1}},
        ).bind(board.name, board_settings(fleet, board), fleet.state_dir)
    ingress: dict[str, Any] = {"num_cpus": 0}
    if fleet.ingress_resource:
        ingress["resources"] = {fleet.ingress_resource: 1}
    return FleetIngress.options(  # type: ignore[attr-defined]
        ray_actor_options=ingress
    ).bind(fleet, handles)


def build_app(args: dict[str, Any]) -> Any:
    """The Serve app builder: ``serve run ecoserve.rayfleet.app:build_app boards=...``."""
    return build_fleet(FleetSettings.from_args(args))
