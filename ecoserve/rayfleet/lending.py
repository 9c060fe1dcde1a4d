"""Lent boards train one data-parallel job on Ray; a board recalled to serving leaves it.

When the fleet policy parks a board and lending is configured, the ingress lends it
(:class:`FleetLender`) instead of powering it off: :class:`LentTraining` starts a Ray actor
on that board holding a replica of the job (``builtin:digits-finetune`` by default), and
from the next step boundary the replica trains on its own data batches. Replicas average
their parameters as :class:`~ecoserve.background.data_parallel.SyncPlan` says: plain
all-reduce every step, or SoCFlow's groups (every step within a group, every ``k`` steps
across groups, each group's first board its leader). When the fleet wakes a lent board it
is recalled first: it leaves at the next step boundary, after an average that folds its
last steps into the boards that stay, and the job goes on with them (while replicas start,
a recalled board leaves at once). When the last board leaves, the job's state stays here
until a board is lent again; ``stop`` saves it in a checkpoint that the next start resumes.

The averaging goes through Ray's object store, not ``torch.distributed`` over gloo. A gloo
process group has a fixed world: every leave or join would tear it down and rendezvous
again (all ranks at once, with a store to agree on), and SoCFlow's groups would each need
a subgroup made collectively; a board that dies mid-collective hangs the others until a
timeout. Through the object store a membership change is just who is asked next step: each
replica puts its floating-point state (weights and optimizer moments) in the store, the
group leader's actor averages the references it is handed (the data moves board to
leader, never through this driver), the leaders' averages are averaged by the first leader
on cross-group steps, and every member adopts the result. The models that fit an edge
board's idle time are small (the digits CNN is 690 parameters), so the copies through the
store cost little beside a step; and a lost actor is simply dropped from the step.

Each replica's actor is pinned to its board's node (the node offering the board's Ray
custom resource, as the board's serving replica is placed) with node affinity rather than
by taking a unit of that resource, which the board's serving replica already holds; it
asks for no CPU, as the serving replicas do, and runs one torch thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ecoserve.background.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ecoserve.background.data_parallel import (
    LendSettings,
    Regroup,
    SyncPlan,
    float_tensors,
    mean_tensors,
    shardable_job,
    with_tensors,
)
from ecoserve.background.digits_finetune import DigitsFinetune
from ecoserve.models.digits import load_digits_split

log = logging.getLogger("ecoserve.fleet")

#: Evaluations, membership events and step/average times kept for ``status()``.
KEEP_EVALUATIONS = 50
KEEP_EVENTS = 200
KEEP_TIMES = 20
#: Seconds between checks, while lent boards' replicas start, for a board recalled meanwhile.
START_POLL_S = 0.2


def board_resource(board: str) -> str:
    """The Ray custom resource a fleet board's node offers (``BoardSettings.resource``)."""
    return f"board_{board}"


class Replica:
    """One board's replica of the job (a Ray actor; plain class, so it runs in tests too).

    A step is one optimizer update on data batch number ``batch`` of the job's data order
    (batches numbered across epochs), so the driver, not the replica, decides who trains
    on what.
    """

    def __init__(
        self, board: str, spec: str, options: Mapping[str, Any], torch_threads: int = 1
    ) -> None:
        torch.set_num_threads(torch_threads)
        self.board = board
        self.job = shardable_job(spec, options)
        self.batch_size = int(self.job.options["batch_size"])
        self.per_epoch = math.ceil(len(load_digits_split().x_train) / self.batch_size)

    def ready(self) -> str:
        return self.board

    def state(self) -> dict[str, Any]:
        return self.job.state_dict()

    def load(self, state: Mapping[str, Any]) -> None:
        self.job.load_state_dict(state)

    def step(self, batch: int) -> dict[str, Any]:
        """Train on data batch ``batch``: one full update group of the job."""
        started = time.perf_counter()
        self.job.eval_pos = None  # the driver evaluates; an evaluation due here is skipped
        self.job.epoch, self.job.cursor = divmod(batch, self.per_epoch)
        self.job.cursor *= self.batch_size
        if self.job.done:
            return {"items": 0, "loss": None, "done": True, "seconds": 0.0}
        result = self.job.step(self.batch_size)
        loss = result.loss
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(f"board {self.board}: non-finite loss {loss} on batch {batch}")
        return {
            "items": result.items,
            "loss": loss,
            "done": False,
            "seconds": time.perf_counter() - started,
        }

    def tensors(self) -> dict[tuple[Any, ...], torch.Tensor]:
        return float_tensors(self.job.state_dict())

    def mean(
        self, weights: Sequence[float] | None, *parts: Mapping[tuple[Any, ...], torch.Tensor]
    ) -> dict[tuple[Any, ...], torch.Tensor]:
        """As a group's leader: the mean of the members' tensors (refs resolved by Ray)."""
        return mean_tensors(parts, weights)

    def adopt(self, tensors: Mapping[tuple[Any, ...], torch.Tensor]) -> None:
        self.job.load_state_dict(with_tensors(self.job.state_dict(), tensors))

    def evaluate(self) -> float:
        return float(self.job.evaluate())


#: The replica as a Ray actor class (options per board at creation).
ReplicaActor = ray.remote(Replica)


def node_of(resource: str) -> str:
    """The ID of the live Ray node offering ``resource``; ValueError when none does."""
    for node in ray.nodes():
        if node.get("Alive") and node.get("Resources", {}).get(resource, 0) > 0:
            return str(node["NodeID"])
    raise ValueError(
        f"no live Ray node offers resource {resource!r}; start the board's node with "
        f"ray start --resources '{{\"{resource}\": 1}}'"
    )


class LentTraining:
    """The data-parallel job of the lent boards (see the module doc).

    ``lend(board)`` and ``recall(board)`` may be called from any thread; the job runs on a
    thread of its own, one step at a time, so membership changes only between steps.
    ``state_dir``: where the checkpoint goes unless ``settings.checkpoint`` names a file;
    ``resource_of``: a board's Ray custom resource; ``step_timeout_s``: how long a step or
    an average may take before the boards that did not answer are dropped;
    ``start_timeout_s``: how long a lent board's replica may take to start (a Python with
    torch on a busy board takes tens of seconds) before the board is dropped.
    """

    def __init__(
        self,
        settings: LendSettings | None = None,
        *,
        state_dir: str | Path | None = None,
        resource_of: Callable[[str], str] = board_resource,
        torch_threads: int = 1,
        step_timeout_s: float = 60.0,
        start_timeout_s: float = 300.0,
    ) -> None:
        self.settings = settings or LendSettings()
        self.options = dict(self.settings.options)
        # built once here so a bad spec or option fails now, not on a board
        probe = shardable_job(self.settings.job, self.options)
        self.job_name = probe.name
        self.resource_of = resource_of
        self.torch_threads = torch_threads
        self.step_timeout_s = step_timeout_s
        self.start_timeout_s = start_timeout_s
        path = self.settings.checkpoint
        if path is None and state_dir is not None:
            path = str(Path(state_dir) / "lend.ckpt")
        self.checkpoint_path = Path(path) if path is not None else None
        self.checkpoint_step: int | None = None
        self._plan = SyncPlan(group_size=self.settings.group_size, k=self.settings.k)
        self._state: dict[str, Any] | None = None  # the job's state while no board holds it
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            self._resume(probe, self.checkpoint_path)
        self._cond = threading.Condition()
        self._actors: dict[str, Any] = {}
        self._left: dict[str, threading.Event] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.done = False
        self.error: str | None = None
        self.accuracy: float | None = None
        self.accuracy_start: float | None = None
        # bounded: the job may run for as long as the fleet does
        self.evaluations: deque[dict[str, float]] = deque(maxlen=KEEP_EVALUATIONS)
        self.events: deque[dict[str, Any]] = deque(maxlen=KEEP_EVENTS)
        self._last_eval = -1
        self._step_s: deque[float] = deque(maxlen=KEEP_TIMES)
        self._sync_s: deque[float] = deque(maxlen=KEEP_TIMES)

    def _resume(self, probe: DigitsFinetune, path: Path) -> None:
        ckpt = load_checkpoint(path, job=self.job_name)
        try:
            state = dict(ckpt.state["job"])
            plan = dict(ckpt.state["plan"])
            probe.load_state_dict(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path} is not a lent-training checkpoint this job can resume ({exc}); "
                "remove it or name another lend.checkpoint"
            ) from exc
        self._plan = SyncPlan(
            group_size=self.settings.group_size,
            k=self.settings.k,
            step=int(plan["step"]),
            batches=int(plan["batches"]),
        )
        self._plan.steps_by_member.update({str(k): int(v) for k, v in plan["by_board"].items()})
        self._state = state
        self.checkpoint_step = ckpt.step
        log.info("lent training resumes %s at step %d", self.job_name, ckpt.step)

    # -- what the fleet calls ----------------------------------------------------------------
    def lend(self, board: str) -> None:
        """Add ``board`` to the job; it takes its first step after the next boundary."""
        with self._cond:
            if self.error is not None:
                raise RuntimeError(f"lent training stopped on an error: {self.error}")
            if self._stopping:
                raise RuntimeError("lent training is stopping; no board can be lent")
            node_of(self.resource_of(board))  # a board no Ray node offers fails here
            self._plan.join(board)
            self._left.pop(board, None)
            self.events.append({"t": time.time(), "board": board, "event": "lend"})
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ecoserve-lent-training", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def is_lent(self, board: str) -> bool:
        """In the job, or joining it, and not on its way out."""
        with self._cond:
            joining = board in self._plan.joining
            leaving = board in self._plan.leaving
            return (board in self._plan.members or joining) and not leaving

    def recall(self, board: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """Take ``board`` out of the job; returns once it has left at a step boundary."""
        with self._cond:
            was_member = board in self._plan.members
            self._plan.leave(board)  # ValueError names the members when it is not one
            event = self._left.setdefault(board, threading.Event())
            if not was_member or self._thread is None or not self._thread.is_alive():
                event.set()  # it never took a step, or nothing runs: nothing to wait for
                if was_member:
                    self._plan.boundary()
            self.events.append({"t": time.time(), "board": board, "event": "recall"})
            self._cond.notify_all()
        if not event.wait(timeout_s):
            raise TimeoutError(
                f"board {board} did not leave the lent job within {timeout_s:g} s "
                "(a step or an average is stuck); it is dropped at the next boundary"
            )
        with self._cond:
            return {
                "board": board,
                "step": self._plan.step,
                "steps": self._plan.steps_by_member.get(board, 0),
            }

    def stop(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Finish the step under way, average, save the checkpoint, release the boards."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        else:
            self._save()
        return self.status()

    def status(self) -> dict[str, Any]:
        with self._cond:
            plan = self._plan
            recent, syncs = list(self._step_s), list(self._sync_s)
            return {
                "job": self.job_name,
                "running": self._thread is not None and self._thread.is_alive(),
                "done": self.done,
                "error": self.error,
                "step": plan.step,
                "members": list(plan.members),
                "groups": [list(g) for g in plan.groups],
                "group_size": plan.group_size,
                "k": plan.k,
                "steps_by_board": dict(plan.steps_by_member),
                "accuracy": self.accuracy,
                "accuracy_start": self.accuracy_start,
                "evaluations": list(self.evaluations)[-10:],
                "step_s": sum(recent) / len(recent) if recent else None,
                "sync_s": sum(syncs) / len(syncs) if syncs else None,
                "checkpoint": None if self.checkpoint_path is None else str(self.checkpoint_path),
                "checkpoint_step": self.checkpoint_step,
                "events": list(self.events)[-20:],
            }

    # -- the job's thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._once():
                pass
        except Exception as exc:  # a replica's error: stop the job, release every board
            log.exception("lent training stopped")
            with self._cond:
                self.error = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                self._finish()
            except Exception:
                log.exception("lent training could not save its state")
            with self._cond:
                for event in self._left.values():
                    event.set()
                self._left.clear()

    def _once(self) -> bool:
        """One boundary and one step; False when the job is to end."""
        with self._cond:
            while (
                not self._stopping
                and not self._plan.pending
                and (not self._plan.members or self.done)
            ):
                self._cond.wait()
            if self._stopping:
                return False
            change = self._plan.boundary()
        if change is not None:
            self._regroup(change)
        with self._cond:
            if not self._plan.members or self.done:
                return True
            shards = self._plan.shards()
        if self.accuracy_start is None:
            self._evaluate()
        started = time.perf_counter()
        refs = {b: self._actors[b].step.remote(n) for b, n in shards.items()}
        results, lost = self._gather(refs)
        with self._cond:
            for board in lost:
                self._kill(board, "lost")
            sync = self._plan.finish_step(lost)
            self._step_s.append(time.perf_counter() - started)
            self.done = any(r["done"] for r in results.values())
        began = time.perf_counter()
        self._average(sync.groups, sync.across)
        with self._cond:
            self._sync_s.append(time.perf_counter() - began)
        if sync.consistent and sync.step - self._last_eval >= self.settings.eval_every:
            self._evaluate()
        return True

    def _gather(self, refs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        results: dict[str, Any] = {}
        lost: list[str] = []
        for board, ref in refs.items():
            try:
                results[board] = ray.get(ref, timeout=self.step_timeout_s)
            except (RayActorError, GetTimeoutError) as exc:
                log.warning("lent board %s lost during a step: %s", board, exc)
                lost.append(board)
            except RayTaskError as exc:
                raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None
        return results, lost

    def _average(self, groups: Sequence[Sequence[str]], across: bool) -> None:
        """Each group's members adopt their mean; on cross-group steps, the mean of the
        group means (weighted by size), computed by the first group's leader."""
        groups = [list(g) for g in groups if g]
        if not groups or (len(groups[0]) == 1 and len(groups) == 1):
            return
        actors = self._actors
        parts = {b: actors[b].tensors.remote() for g in groups for b in g}
        means = [
            actors[g[0]].mean.remote(None, *[parts[b] for b in g]) if len(g) > 1 else parts[g[0]]
            for g in groups
        ]
        if across and len(groups) > 1:
            total = actors[groups[0][0]].mean.remote([len(g) for g in groups], *means)
            adopt = [actors[b].adopt.remote(total) for g in groups for b in g]
        else:
            adopt = [
                actors[b].adopt.remote(m) for g, m in zip(groups, means) for b in g if len(g) > 1
            ]
        ray.get(adopt, timeout=self.step_timeout_s)

    def _regroup(self, change: Regroup) -> None:
        if change.sync_first:
            self._average(change.before, across=True)
        seed: dict[str, Any] | None = self._state
        if change.seed_from is not None:
            seed = ray.get(self._actors[change.seed_from].state.remote())
        elif change.left:  # everyone leaves: the job's state stays here
            seed = ray.get(self._actors[change.left[0]].state.remote())
            self._state = seed
        for board in change.left:
            with self._cond:
                self._kill(board, "left")
        if change.joined and seed is not None:
            # kept here while the joiners start: a staying board recalled meanwhile leaves
            # at once (see _start_all), and the job's state must outlive it
            with self._cond:
                self._state = seed
        created = self._start_all(change.joined)
        if created:
            if seed is None:  # a fresh job: every replica starts from the first one's state
                seed = ray.get(next(iter(created.values())).state.remote())
            ray.get([a.load.remote(seed) for a in created.values()], timeout=self.step_timeout_s)
            with self._cond:
                self._actors.update(created)
                for board in created:
                    self.events.append(
                        {"t": time.time(), "board": board, "event": "joined", "step": change.step}
                    )
        with self._cond:
            if self._plan.members:
                self._state = None  # the boards hold it now
        log.info(
            "lent training at step %d: %s left, %s joined; groups %s",
            change.step,
            list(change.left),
            list(change.joined),
            [list(g) for g in change.groups],
        )

    def _start_all(self, boards: Sequence[str]) -> dict[str, Any]:
        """A replica on each board; one that cannot start (no node offers its resource, or
        it is not up within ``start_timeout_s``) is dropped from the job, not fatal to it.

        Starting takes tens of seconds on a busy board, and the fleet may wake a board for
        serving meanwhile: a joiner recalled before it is up leaves at once, without a step,
        and so does a staying member (its state is the seed the driver holds), rather than
        hold up the wake until the others are up and have taken a step."""
        created: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for board in boards:
            try:
                node = node_of(self.resource_of(board))
            except ValueError as exc:
                failed[board] = str(exc)
                continue
            created[board] = ReplicaActor.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
            ).remote(board, self.settings.job, self.options, self.torch_threads)
        waiting = {created[b].ready.remote(): b for b in created}
        deadline = time.monotonic() + self.start_timeout_s
        while waiting:
            # short waits: a board recalled while its replica starts leaves now, not after
            remaining = max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(waiting), num_returns=1, timeout=min(START_POLL_S, remaining))
            for ref in done:
                board = waiting.pop(ref)
                try:
                    ray.get(ref)
                except RayActorError as exc:
                    failed[board] = f"{type(exc).__name__}: {exc}"
            with self._cond:
                gone = [
                    b
                    for b in created
                    if b not in failed and (b in self._plan.leaving or self._stopping)
                ]
                for board in gone:  # recalled (or stopping) before its first step
                    self._plan.drop(board)
                    self._actors[board] = created.pop(board)  # for _kill to release
                    self._kill(board, "left")
                # a staying board holds the seed's state (averaged at the boundary), which
                # the driver keeps: recalled now, it leaves without waiting for the start
                for board in [b for b in self._actors if b in self._plan.leaving]:
                    self._plan.drop(board)
                    self._kill(board, "left")
            waiting = {r: b for r, b in waiting.items() if b in created}
            if waiting and time.monotonic() >= deadline:
                for board in waiting.values():
                    failed[board] = f"not up within start_timeout_s={self.start_timeout_s:g} s"
                waiting = {}
        for board in failed:
            actor = created.pop(board, None)
            if actor is not None:
                ray.kill(actor)
        with self._cond:
            for board, why in failed.items():
                log.warning("board %s could not join the lent job: %s", board, why)
                self._plan.drop(board)
                self.events.append({"t": time.time(), "board": board, "event": "start-failed"})
                event = self._left.pop(board, None)
                if event is not None:
                    event.set()
        return created

    def _kill(self, board: str, why: str) -> None:
        """Release a board's actor (caller holds the lock) and wake whoever recalled it."""
        actor = self._actors.pop(board, None)
        if actor is not None:
            ray.kill(actor)
        self.events.append(
            {"t": time.time(), "board": board, "event": why, "step": self._plan.step}
        )
        event = self._left.pop(board, None)
        if event is not None:
            event.set()

    def _evaluate(self) -> None:
        members = list(self._plan.members)
        if not members:
            return
        accuracy = float(ray.get(self._actors[members[0]].evaluate.remote()))
        with self._cond:
            step = self._plan.step
            if self.accuracy_start is None:
                self.accuracy_start = accuracy
            self.accuracy = accuracy
            self._last_eval = step
            self.evaluations.append({"step": float(step), "accuracy": accuracy})

    def _finish(self) -> None:
        """At stop: one last global average, the state fetched, saved, the boards released."""
        members = list(self._plan.members)
        if members and self.error is None:
            if self._plan.diverged:
                self._average(self._plan.groups, across=True)
                self._plan.diverged = False
            self._state = ray.get(self._actors[members[0]].state.remote())
            if self._last_eval != self._plan.step:
                self._evaluate()
        with self._cond:
            for board in list(self._actors):
                self._kill(board, "released")
        if self.error is None:
            self._save()

    def _save(self) -> None:
        if self.checkpoint_path is None or self._state is None:
            return
        plan = self._plan
        state = {
            "job": self._state,
            "plan": {"step": plan.step, "batches": plan.batches, "by_board": plan.steps_by_member},
        }
        metric = {} if self.accuracy is None else {"accuracy": self.accuracy}
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            self.checkpoint_path,
            Checkpoint(job=self.job_name, step=plan.step, state=state, metric=metric),
        )
        self.checkpoint_step = plan.step


class FleetLender:
    """What the fleet's ingress calls (``FleetService(lender=...)``): async, never raising on
    a recall, since a board woken for serving must serve whatever the job does."""

    def __init__(self, training: LentTraining) -> None:
        self.training = training

    def is_lent(self, board: str) -> bool:
        return self.training.is_lent(board)

    async def lend(self, board: str) -> None:
        await asyncio.to_thread(self.training.lend, board)

    async def recall(self, board: str) -> None:
        try:
            await asyncio.to_thread(self.training.recall, board)
        except Exception as exc:
            log.warning(
                "board %s: recall from the lent job failed (%s); serving anyway", board, exc
            )

    def status(self) -> dict[str, Any]:
        return self.training.status()

    async def close(self) -> None:
        await asyncio.to_thread(self.training.stop)
