"""The fleet's front door: the daemon's HTTP API over many boards, and the policy loop.

:class:`FleetService` stands where ``ecoserve serve`` has its ``InferenceService``, so the
daemon's own v1 and v2 routes (``ecoserve.server.routes_v1`` / ``routes_v2``) serve the
fleet unchanged; only ``/v1/status`` is the fleet's, with a per-board breakdown. Each
request goes to one board, picked by weighted round-robin over the policy's weights. A
board that fails (its replica or its node died) is taken out and the request is sent to
the next board, so a request accepted here is answered unless every board is gone.

Every ``period_s`` the control loop tells the fleet policy (``ecoserve.core.fleet``) the
arrival rate, each board's ongoing requests and which boards stopped answering, updates each
serving board's capacity (the highest rate within ``slo_s``, from its batch times) and
energy per request from its stats, and
carries out its plan: park (minimum clocks, then the operator's park command), wake (the
unpark command, then wait for the board to answer, then the clocks handed back to the
board's tuner), new weights. A parked board that stops answering was powered off by its
park command: it is ``off``, not dead, and stays a wake candidate. A woken board serves once
it answers; one that has not answered within its boot timeout is marked failed (dead, in
``/v1/status``'s ``wake_failures`` and events). Each wake is timed step by step, from the
command to the board's first answered request (``/v1/status``'s ``wake_timings``). Parks, wakes and stats calls run beside the
loop, never in it: a step waits at most half a period for the boards' stats, and an answer
that comes later is used at the next step.

A request that finds no serving board is never sent to a parked one as it is: it waits for
a board being woken, or wakes the cheapest parked board itself.

No Ray here: boards are reached through :class:`BoardClient` objects, which the Ray app
(``ecoserve.rayfleet.app``) makes from deployment handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from fastapi import FastAPI, Request
from prometheus_client import Gauge
from starlette.responses import Response

from ecoserve.core.engine import DEFAULT_QUEUE
from ecoserve.core.fleet import (
    ASLEEP,
    BoardSpec,
    BoardState,
    FleetObservation,
    WeightedRoundRobin,
    capacity_rps,
    make_policy,
)
from ecoserve.models.loader import LoadedModel
from ecoserve.rayfleet.config import BoardSettings, FleetSettings
from ecoserve.server import routes_v1, routes_v2
from ecoserve.server.app import add_routes
from ecoserve.server.metrics import ServerMetrics
from ecoserve.server.oip_catalogue import OipCatalogue
from ecoserve.server.oip_stats import InferenceStatistics
from ecoserve.server.responses import json_response
from ecoserve.server.served import ServedModel
from ecoserve.server.service import ServiceError, find_served
from ecoserve.server.settings import ServeSettings
from ecoserve.server.tensors import TensorSpec

log = logging.getLogger("ecoserve.fleet")

#: Capacity assumed for a board until it has run batches (low: keeps boards awake).
UNMEASURED_CAPACITY_RPS = 1.0
#: Share of the period a policy step waits for the boards' stats calls.
STATS_WAIT_SHARE = 0.5
#: Seconds between a booting board's stats calls.
BOOT_POLL_S = 0.5


class BoardClient(Protocol):
    """How the ingress reaches one board (a Ray deployment handle, or a local engine)."""

    async def infer(self, items: list[Any]) -> list[Any]: ...

    async def stats(self) -> dict[str, Any]: ...

    async def park(self) -> Any: ...

    async def unpark(self) -> Any: ...


class Lender(Protocol):
    """Where parked boards go when lending is configured (``ecoserve.rayfleet.lending``)."""

    def is_lent(self, board: str) -> bool: ...

    async def lend(self, board: str) -> None: ...

    async def recall(self, board: str) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


async def run_command(command: str, timeout_s: float = 60.0) -> int:
    """Run an operator's shell command; its exit status (a failure is logged, not raised)."""
    proc = await asyncio.create_subprocess_shell(command)
    try:
        code = await asyncio.wait_for(proc.wait(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        log.error("command timed out after %.0f s: %s", timeout_s, command)
        return -1
    if code != 0:
        log.error("command exited %d: %s", code, command)
    return code


class FleetService:
    """Stands in for the daemon's ``InferenceService`` in its routes (see the module doc)."""

    def __init__(
        self,
        fleet: FleetSettings,
        serve: ServeSettings,
        spec: TensorSpec,
        clients: Mapping[str, BoardClient],
        *,
        command: Callable[[str], Any] = run_command,
        clock: Callable[[], float] = time.monotonic,
        model: LoadedModel | None = None,
        lender: Lender | None = None,
    ) -> None:
        self.fleet = fleet
        self.lender = lender  # parked boards are lent to a training job instead of powered off
        self.settings = serve
        self.spec = spec
        self.model = model  # only to describe the output in the protocol's metadata
        self.statistics = InferenceStatistics()
        self.name = serve.served_name
        #: The one model the fleet serves, as the protocol's front ends look it up.
        self.default = ServedModel(
            self.name, DEFAULT_QUEUE, model, spec, serve.max_batch, self.statistics
        )
        self.models = {self.name: self.default}
        self.clients = dict(clients)
        self.boards: dict[str, BoardSettings] = {b.name: b for b in fleet.boards}
        self.metrics = ServerMetrics(max_batch=serve.max_batch)
        self.runtime = None
        self.tier = None
        self.resumed: list[str] = []
        self.started_at = time.time()
        self.draining = False
        self.command = command
        self.clock = clock
        specs = [
            BoardSpec(b.name, b.kind, UNMEASURED_CAPACITY_RPS, 1.0, b.wake_s) for b in fleet.boards
        ]
        self.policy = make_policy(fleet.policy, specs, fleet.params, period_s=fleet.period_s)
        self.router = WeightedRoundRobin()
        self.router.set(self.policy.weights(list(self.boards)))
        self.in_flight: dict[str, int] = {n: 0 for n in self.boards}
        self.board_stats: dict[str, dict[str, Any]] = {}
        self.failed: set[str] = set()
        self.wake_failures: dict[str, str] = {}
        #: Each board's last wake, step by step (see :meth:`_boot`), and the boards whose
        #: first request since that wake is still to be answered.
        self.wake_timings: dict[str, dict[str, float | None]] = {}
        self._first_pending: dict[str, float] = {}
        self.arrivals = 0
        self.moved = 0
        self.events: list[dict[str, Any]] = []
        self.rate_rps = 0.0
        self._last_tick = clock()
        self._task: asyncio.Task[None] | None = None
        # per board: its last park or wake (each waits for the one before), the wake under
        # way, and the stats call under way with when it started (loop time)
        self._ops: dict[str, asyncio.Task[Any]] = {}
        self._booting: dict[str, asyncio.Task[bool]] = {}
        self._stats_calls: dict[str, tuple[float, asyncio.Task[dict[str, Any]]]] = {}
        reg = self.metrics.registry
        self._g_state = Gauge("ecoserve_fleet_boards", "Boards by state", ["state"], registry=reg)
        self._g_weight = Gauge(
            "ecoserve_fleet_board_weight",
            "Share of traffic sent to a board",
            ["board"],
            registry=reg,
        )
        self._g_energy = Gauge(
            "ecoserve_fleet_board_energy_joules",
            "A board's meter reading",
            ["board"],
            registry=reg,
        )
        self._g_rate = Gauge(
            "ecoserve_fleet_arrival_rate_per_second",
            "Arrivals over the last period",
            registry=reg,
        )

    # -- what the daemon's routes read ----------------------------------------------------
    @property
    def ready(self) -> bool:
        return not self.draining and any(
            s.get("ready") for n, s in self.board_stats.items() if n in self.router.weights
        )

    def served(self, name: str | None = None) -> ServedModel:
        return find_served(self.models, self.default, name)

    async def infer(
        self,
        items: Sequence[Any],
        timeout_s: float | None = None,
        model: str | None = None,
        tenant: str | None = None,
    ) -> list[Any]:
        """One request on one board; a board that fails hands it to the next.

        ``model`` is the name the front end looked up; the fleet serves one model, and has
        no tenants (``tenant`` is always None).

        ``timeout_s`` is the client's own deadline (the protocol's ``timeout`` parameter).
        """
        if timeout_s is None:
            return await self._infer(items)
        try:
            return await asyncio.wait_for(self._infer(items), timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError(
                504, f"no result within the request's {timeout_s} s", "timeout"
            ) from None

    async def _infer(self, items: Sequence[Any]) -> list[Any]:
        if self.draining:
            raise ServiceError(
                503, "shutting down; not accepting requests", "unavailable", {"Retry-After": "1"}
            )
        self.arrivals += 1
        tried: list[str] = []
        last: ServiceError | None = None
        while True:
            name = self.router.pick(exclude=[*tried, *self.failed])
            if name is None:
                name = await self._fallback(tried)
            if name is None:
                raise last or ServiceError(
                    503, "no board is answering; retry later", "unavailable", {"Retry-After": "1"}
                )
            tried.append(name)
            self.in_flight[name] += 1
            try:
                out = list(await self.clients[name].infer(list(items)))
                if name in self._first_pending:
                    self._first_answered(name)
                return out
            except ServiceError as err:
                if err.status != 503:
                    raise
                last = err  # that board is full or draining: the next one may take it
            except Exception as exc:  # its replica or its node died
                log.warning("board %s failed (%s); moving its request", name, exc)
                self.failed.add(name)
                self.moved += 1
            finally:
                self.in_flight[name] -= 1

    async def _fallback(self, tried: Sequence[str]) -> str | None:
        """A board for a request no weighted board took: serving, else woken for it.

        Never a parked board as it is: the request waits for a wake under way, or wakes the
        cheapest parked board, and goes there once the board answers.
        """
        skip = {*tried, *self.failed}
        while True:
            serving = [n for n in self.policy.serving() if n not in skip]
            if serving:
                return serving[0]
            booting = [n for n in self._booting if n not in skip]
            if not booting:
                woken = self.policy.wake_next(self.clock())
                if woken is None:
                    return None
                self.events.append(
                    {"t": self.clock(), "board": woken, "event": "wake", "why": "no board serving"}
                )
                log.warning("no board serving: waking %s for the waiting requests", woken)
                self._wake(woken)
                booting = [woken]
            name = booting[0]
            boot = self._booting[name]
            try:
                up = await asyncio.shield(boot)
            except asyncio.CancelledError:
                if not boot.cancelled():
                    raise  # this request was cancelled, not the wake
                up = False  # parked again while it booted
            if up:
                return name
            skip.add(name)

    # -- the control loop -----------------------------------------------------------------
    async def start(self) -> None:
        await self.tick()
        self._task = asyncio.create_task(self._loop(), name="ecoserve-fleet-policy")

    async def _loop(self) -> None:
        while not self.draining:
            await asyncio.sleep(self.fleet.period_s)
            try:
                await self.tick()
            except Exception:
                log.exception("fleet policy step failed; trying again next period")

    async def _poll_stats(self) -> dict[str, dict[str, Any] | None]:
        """The boards' stats that came in: a dict, or None for a board not answering.

        A call is started for every board that has none under way (a booting board is asked
        by its wake); this waits at most ``STATS_WAIT_SHARE`` of a period for them. A call
        still running is carried over to the next step, and counts as not answering only
        after ``stats_timeout_s``.
        """
        loop = asyncio.get_running_loop()
        for name, client in self.clients.items():
            if name not in self._booting and name not in self._stats_calls:
                self._stats_calls[name] = (loop.time(), asyncio.ensure_future(client.stats()))
        pending = [t for _, t in self._stats_calls.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=STATS_WAIT_SHARE * self.fleet.period_s)
        out: dict[str, dict[str, Any] | None] = {}
        for name, (started, task) in list(self._stats_calls.items()):
            if task.done():
                del self._stats_calls[name]
                exc = None if task.cancelled() else task.exception()
                if task.cancelled() or exc is not None:
                    out[name] = None
                    if name not in self.failed and self.policy.state[name] not in ASLEEP:
                        log.warning("board %s not answering (%s)", name, exc)
                else:
                    out[name] = task.result()
            elif loop.time() - started > self.fleet.stats_timeout_s:
                del self._stats_calls[name]
                task.cancel()
                out[name] = None
                log.warning("board %s: no stats for %.1f s", name, self.fleet.stats_timeout_s)
        return out

    async def tick(self) -> None:
        """One policy period: observe, decide, start what the plan says."""
        answers = await self._poll_stats()
        now = self.clock()
        dt = max(1e-6, now - self._last_tick)
        self._last_tick = now
        self.rate_rps, self.arrivals = self.arrivals / dt, 0
        silent: set[str] = set()
        for name, st in answers.items():
            if st is None:
                silent.add(name)
                continue
            self.board_stats[name] = st
            if name in self.failed or self.policy.state[name] in (BoardState.DEAD, BoardState.OFF):
                self.failed.discard(name)
                self.policy.revive(name)
            self._measure(name, st)
        booting = frozenset(self._booting)
        plan = self.policy.decide(
            FleetObservation(
                now=now,
                rate_rps=self.rate_rps,
                ongoing={n: float(v) for n, v in self.in_flight.items()},
                dead=frozenset((silent | self.failed) - booting),
                booting=booting,
            )
        )
        for name in plan.park:
            self._park(name)
        for name in plan.wake:
            self._wake(name)
        self.router.set(plan.weights)
        self._export(plan.weights)

    def _measure(self, name: str, st: Mapping[str, Any]) -> None:
        """A board's capacity and J/request from its own batches (not while parked).

        The capacity is the fleet's one definition (``ecoserve.core.fleet.capacity_rps``):
        the highest rate the board serves within ``slo_s``, from its batch times. A board
        whose batches cannot meet the target at all keeps the lowest capacity the policy
        takes, so it is the last one asked to serve.
        """
        line, jpr = st.get("batch_line_s"), st.get("joules_per_request")
        if st.get("parked") or not line or jpr is None:
            return
        b = self.boards[name]
        max_batch = int(st.get("max_batch") or self.settings.max_batch)
        try:
            cap = capacity_rps((float(line[0]), float(line[1])), max_batch, self.fleet.params)
        except (ValueError, TypeError, IndexError) as exc:
            log.warning("board %s: batch times %r unusable (%s)", name, line, exc)
            return
        cap = max(cap, UNMEASURED_CAPACITY_RPS)
        self.policy.update(BoardSpec(name, b.kind, cap, float(jpr), b.wake_s))

    def _then(self, name: str, step: Callable[[], Awaitable[Any]]) -> asyncio.Task[Any]:
        """Run ``step`` for a board once its previous park or wake is over."""
        before = self._ops.get(name)

        async def run() -> Any:
            if before is not None and not before.done():
                await asyncio.wait([before])
            return await step()

        task = asyncio.create_task(run(), name=f"ecoserve-fleet-{name}")
        self._ops[name] = task
        return task

    def _park(self, name: str) -> None:
        self.events.append({"t": self.clock(), "board": name, "event": "park"})
        log.info("parking board %s", name)
        boot = self._booting.pop(name, None)
        if boot is not None:
            boot.cancel()
        self._then(name, lambda: self._park_board(name))

    async def _park_board(self, name: str) -> None:
        try:
            await asyncio.wait_for(self.clients[name].park(), self.fleet.stats_timeout_s)
        except Exception as exc:
            log.warning("board %s could not pin its minimum clocks: %s", name, exc)
        if self.lender is not None:
            try:
                await self.lender.lend(name)
                return  # lent: it stays powered and trains, so no park command
            except Exception as exc:
                log.warning("board %s could not be lent (%s); parking it", name, exc)
        cmd = self.boards[name].park_command
        if cmd:
            await self.command(cmd.format(board=name))

    def _first_answered(self, name: str) -> None:
        woke = self._first_pending.pop(name)
        timing = self.wake_timings.get(name)
        if timing is not None:
            timing["first_request_s"] = self.clock() - woke

    def _wake(self, name: str) -> None:
        if name in self._booting:
            return
        self.events.append({"t": self.clock(), "board": name, "event": "wake"})
        log.info("waking board %s", name)
        self._booting[name] = self._then(name, lambda: self._boot(name))

    async def _boot(self, name: str) -> bool:
        """Unpark command, then wait until the board answers (up to its boot timeout).

        True once it serves; False when it did not come up: it is marked failed. Each step is
        timed from the wake, in ``wake_timings[name]`` (seconds): ``command_s`` (the unpark
        command), ``answer_s`` (the board's first answer), ``up_s`` (unparked: it serves),
        ``first_request_s`` (its first request answered, set later). When the board's service
        is newer than the wake (a powered-off board booted, its replica placed again),
        ``placement_s`` is the time from the command's end to the service starting (node
        join, replica placement, process start), and ``load_s`` / ``start_s`` the board's own
        model load and service start; between boards these compare two wall clocks.
        """
        loop = asyncio.get_running_loop()
        board = self.boards[name]
        deadline = loop.time() + board.boot_timeout
        client = self.clients[name]
        woke, woke_wall = self.clock(), time.time()
        timing: dict[str, float | None] = {"at": woke_wall}
        self.wake_timings[name] = timing
        self._first_pending.pop(name, None)
        try:
            if self.lender is not None and self.lender.is_lent(name):
                await self.lender.recall(name)  # leaves the job at a step boundary
            elif board.unpark_command:
                await self.command(board.unpark_command.format(board=name))
            timing["command_s"] = self.clock() - woke
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    return self._boot_failed(name, f"no answer within {board.boot_timeout:g} s")
                try:
                    st = await asyncio.wait_for(client.stats(), min(left, self.fleet.period_s))
                    break
                except Exception:
                    await asyncio.sleep(min(BOOT_POLL_S, max(0.0, deadline - loop.time())))
            timing["answer_s"] = self.clock() - woke
            self.board_stats[name] = st
            created = st.get("created_at")
            if isinstance(created, (int, float)) and created > woke_wall:
                timing["placement_s"] = created - woke_wall - (timing["command_s"] or 0.0)
                timing["load_s"] = st.get("load_s")
                timing["start_s"] = st.get("start_s")
            try:
                await asyncio.wait_for(client.unpark(), max(0.1, deadline - loop.time()))
            except Exception as exc:
                return self._boot_failed(name, f"answered but could not be unparked: {exc}")
            timing["up_s"] = self.clock() - woke
            self._first_pending[name] = woke
            self.failed.discard(name)
            self.wake_failures.pop(name, None)
            self.policy.woken(name, self.clock())
            if self.policy.state[name] is BoardState.SERVING:
                self.router.set(self.policy.weights(self.policy.serving(), self.clock()))
            self.events.append({"t": self.clock(), "board": name, "event": "up"})
            return True
        finally:
            if self._booting.get(name) is asyncio.current_task():
                del self._booting[name]

    def _boot_failed(self, name: str, why: str) -> bool:
        log.error("board %s failed to wake: %s", name, why)
        self.wake_failures[name] = why
        self.events.append({"t": self.clock(), "board": name, "event": "wake-failed", "why": why})
        self.policy.fail(name)
        return False

    async def settle(self) -> None:
        """Wait for every park and wake under way (a test, or at shutdown); failures are logged."""
        while pending := [t for t in self._ops.values() if not t.done()]:
            await asyncio.wait(pending)

    def _export(self, weights: Mapping[str, float]) -> None:
        for state, count in self.policy.counts().items():
            self._g_state.labels(state).set(count)
        for name in self.boards:
            self._g_weight.labels(name).set(weights.get(name, 0.0))
            energy = self.board_stats.get(name, {}).get("energy_j")
            if energy is not None:
                self._g_energy.labels(name).set(energy)
        self._g_rate.set(self.rate_rps)

    # -- status and shutdown --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        boards = {}
        for name, b in self.boards.items():
            spec = self.policy.boards[name]
            boards[name] = {
                "kind": b.kind,
                "state": self.policy.state[name].value,
                "weight": self.router.weights.get(name, 0.0),
                "in_flight": self.in_flight[name],
                "capacity_rps": spec.capacity_rps,
                "joules_per_request": spec.joules_per_request,
                "resource": b.resource,
                **self.board_stats.get(name, {}),
            }
        return {
            "model": self.name,
            "ready": self.ready,
            "draining": self.draining,
            "policy": self.policy.name,
            "arrival_rate_rps": self.rate_rps,
            "requests_moved": self.moved,
            "wake_failures": dict(self.wake_failures),
            "wake_timings": {n: dict(t) for n, t in self.wake_timings.items()},
            "boards": boards,
            "counts": self.policy.counts(),
            "events": self.events[-50:],
            **({"lending": self.lender.status()} if self.lender is not None else {}),
        }

    async def close(self) -> None:
        self.draining = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, call in self._stats_calls.values():
            call.cancel()
        for boot in self._booting.values():
            boot.cancel()
        await self.settle()
        if self.lender is not None:
            await self.lender.close()


def fleet_app(service: FleetService) -> FastAPI:
    """The daemon's HTTP API over the fleet: its own routes, the fleet's ``/v1/status``."""
    app = FastAPI(title="ecoserve fleet", description="ecoserve's HTTP API over a fleet of boards")
    app.state.service = service
    app.state.catalogue = OipCatalogue(service)  # type: ignore[arg-type]
    app.state.tenants = None

    @app.get("/v1/status", summary="The fleet: policy, and each board's state and tuning")
    async def status(request: Request) -> Response:
        return json_response(_finite(service.status()))

    add_routes(app, routes_v1.router)
    add_routes(app, routes_v2.router)
    return app


def _finite(value: Any) -> Any:
    """JSON has no infinity or NaN: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
