"""Harvesting live: the engine's background slot against the job as a separate nice-19 process.

Issue 23's first baseline, measured rather than modelled. ``ecoserve serve`` (a built-in
model on a virtual board, 127.0.0.1) is driven open loop on the same arrival times (a trace,
rescaled to ``--rate``, or ``fixed:``/``poisson:`` at a fixed rate) in three arms:

1. ``alone``: serving only;
2. ``slot``: the same daemon with ``--background`` (the job in the engine's slot, steps only
   in predicted gaps and sized to the delay bound);
3. ``nice-19``: serving only, and the same job in a separate process at ``os.nice(19)``
   stepping back to back at micro-batch ``--micro-batch`` (``job`` below: load the job with
   ``ecoserve.background.specs.load_job``, call ``step`` in a loop, count steps and items).

Per arm: serving p50/p99 (from each request's scheduled send time), requests answered, the
background steps and items done while the load ran (the daemon's ``/v1/status`` ``background``
before and after; the process's own count), wall times, p99 over the alone arm's p99, and the
machine's load average before and after (the figures are only as quiet as the box). With
``--rounds R`` every arm runs R times, the order rotated each round; each p99 is divided by
the same round's alone p99, and the medians over rounds are added.

The job runs with ``--job-option`` (default ``epochs=1000``): the built-in fine-tune's own 20
epochs take seconds, so it would be done before the load was. Both arms run the same options.

    python benchmarks/bench_harvest_live.py --trace azure-conv --rate 40 --duration 20 --rounds 2
    python benchmarks/bench_harvest_live.py job --spec builtin:digits-finetune --max-steps 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from bench_http import HOST, Connection, Result, free_port, no_collector_pauses, server

HERE = Path(__file__).resolve()
DEFAULT_JOB = "builtin:digits-finetune"
DEFAULT_JOB_OPTIONS = ("epochs=1000",)
ARMS = ("alone", "slot", "nice-19")
#: The module the daemon's ``--background`` names: the job with the bench's options.
FACTORY = '''"""{spec} with {options!r}, for bench_harvest_live's slot arm."""

from ecoserve.background.specs import load_job


def job():
    return load_job({spec!r}, **{options!r})
'''


# --- the separate process: a job stepped back to back ------------------------------------


@dataclass
class JobCounts:
    """What a job did in the runner: steps and items, its last figures, why it stopped."""

    job: str
    steps: int = 0
    items: int = 0
    wall_s: float = 0.0
    done: bool = False
    accuracy: float | None = None
    loss: float | None = None
    error: str | None = None


def run_job(
    job: Any,
    micro_batch: int,
    should_stop: Callable[[], bool],
    max_steps: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> JobCounts:
    """Step ``job`` until ``should_stop()``, ``max_steps`` or the job is done.

    A step that raises or returns a non-finite loss ends the run with the reason, as the
    daemon's runner pauses such a job: the counts up to it are kept.
    """
    counts = JobCounts(job=str(job.name))
    start = clock()
    while not should_stop() and (max_steps is None or counts.steps < max_steps):
        try:
            result = job.step(micro_batch)
        except Exception as exc:  # the job's failure is a figure here, not a crash
            counts.error = f"{type(exc).__name__}: {exc}"
            break
        if result.loss is not None and not np.isfinite(result.loss):
            counts.error = f"non-finite loss {result.loss}"
            break
        counts.steps += 1
        counts.items += result.items
        if result.loss is not None:
            counts.loss = float(result.loss)
        if "accuracy" in result.metric:
            counts.accuracy = float(result.metric["accuracy"])
        if result.done:
            counts.done = True
            break
    counts.wall_s = clock() - start
    return counts


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict (``load_job`` converts each to its parameter's type)."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"job option {pair!r} must look like KEY=VALUE (e.g. epochs=1000)")
        options[key.strip()] = value.strip()
    return options


def job_main(argv: Sequence[str], stdin: IO[str] | None = None) -> int:
    """The runner: load the job, lower its priority, print a ``ready`` line, wait (with
    ``--wait-go``) for a line on stdin, step, print the counts as one JSON line."""
    p = argparse.ArgumentParser(
        prog="bench_harvest_live.py job", description="a background job as its own process"
    )
    p.add_argument("--spec", default=DEFAULT_JOB)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--nice", type=int, default=19, help="added niceness (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the daemon's: 1)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--wait-go", action="store_true", help="step only after a line on stdin")
    args = p.parse_args(argv)
    if args.micro_batch < 1 or args.threads < 1:
        p.error("--micro-batch and --threads must be >= 1")
    import torch

    from ecoserve.background.specs import load_job

    torch.set_num_threads(args.threads)
    try:
        job = load_job(args.spec, **parse_options(args.option))
    except ValueError as exc:
        print(f"bench_harvest_live.py job: {exc}", file=sys.stderr)
        return 2
    if args.nice:  # after loading: the niceness is the stepping's, not the imports'
        os.nice(args.nice)
    stop = {"now": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["now"] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(json.dumps({"ready": job.name, "niceness": os.nice(0)}), flush=True)
        if args.wait_go:
            (stdin or sys.stdin).readline()
        deadline = None if args.seconds is None else time.monotonic() + args.seconds

        def should_stop() -> bool:
            return stop["now"] or (deadline is not None and time.monotonic() >= deadline)

        counts = run_job(job, args.micro_batch, should_stop, args.max_steps)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(json.dumps(asdict(counts)), flush=True)
    return 0


# --- the benchmark -----------------------------------------------------------------------


def npy_request(port: int, shape: tuple[int, ...]) -> bytes:
    """One zero item of ``shape`` as a binary ``/v1/infer`` request (no torch needed here)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, dtype=np.float32))
    body = buf.getvalue()
    return (
        f"POST /v1/infer HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def replay(
    label: str, port: int, raw: bytes, offsets: np.ndarray, warmup_s: float, conns: int
) -> Result:
    """Send at ``offsets`` (s from the start); latency from the scheduled time, requests due
    after ``warmup_s`` counted; waits up to 30 s for the answers still out at the end."""
    result = Result(label)
    queue: asyncio.Queue[float] = asyncio.Queue()
    start = time.perf_counter() + 0.05
    measured_from = start + warmup_s

    async def worker() -> None:
        conn = Connection(port)
        try:
            while True:
                scheduled = await queue.get()
                status = await conn.request(raw)
                done = time.perf_counter()
                if scheduled >= measured_from:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status == 200:
                        result.latencies.append(done - scheduled)
                queue.task_done()
        finally:
            conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(conns)]
    with no_collector_pauses():
        for offset in offsets:
            due = start + float(offset)
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            queue.put_nowait(due)
        try:
            await asyncio.wait_for(queue.join(), timeout=30.0)
        except asyncio.TimeoutError:
            pass
    result.unfinished = queue.qsize()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    result.sent = len(offsets)
    result.seconds = time.perf_counter() - measured_from
    return result


def background_status(port: int) -> dict[str, Any]:
    """The daemon's ``/v1/status`` ``background`` (empty when it runs no job)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/v1/status", timeout=10) as resp:
        return dict(json.load(resp).get("background") or {})


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


@dataclass
class Arm:
    """One arm's figures (latencies in ms)."""

    arm: str
    p50_ms: float
    p99_ms: float
    answered: int
    measured: int
    refused: int
    unfinished: int
    bg_steps: int
    bg_items: int
    bg_accuracy: float | None
    load_s: float
    arm_wall_s: float
    load_before: float
    load_after: float
    p99_x: float = 1.0
    round: int = 0


def with_ratios(rows: Sequence[Arm]) -> None:
    """Each row's p99 over the same round's ``alone`` p99 (rounds drift with the box's load)."""
    alone = {r.round: r.p99_ms for r in rows if r.arm == "alone"}
    for r in rows:
        base = alone.get(r.round, 0.0)
        r.p99_x = round(r.p99_ms / base, 3) if base > 0 else float("nan")


def medians(rows: Sequence[Arm]) -> list[Arm]:
    """One row per arm: the median over rounds of every figure (round -1 marks them)."""
    out = []
    for arm in dict.fromkeys(r.arm for r in rows):
        mine = [r for r in rows if r.arm == arm]
        figures: dict[str, Any] = {"arm": arm, "round": -1}
        for name, value in asdict(mine[0]).items():
            if name in figures:
                continue
            values = [getattr(r, name) for r in mine]
            if any(v is None for v in values):
                figures[name] = None
                continue
            median = float(np.median(values))
            figures[name] = int(median) if isinstance(value, int) else round(median, 3)
        out.append(Arm(**figures))
    return out


def start_runner(spec: str, options: Sequence[str], micro_batch: int) -> subprocess.Popen[str]:
    """The job as its own process at nice 19, loaded and waiting for ``go``."""
    cmd = [
        sys.executable, str(HERE), "job", "--spec", spec, "--micro-batch", str(micro_batch),
        "--nice", "19", "--wait-go", *[f"--option={o}" for o in options],
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith('{"ready"'):
        proc.kill()
        raise RuntimeError(f"the job runner did not start (exit {proc.wait()}): {line!r}")
    return proc


def run_arm(
    arm: str,
    args: argparse.Namespace,
    offsets: np.ndarray,
    work: Path,
    options: Sequence[str],
) -> Arm:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        sys.executable, "-m", "ecoserve", "serve", "--model", args.model, "--device", args.device,
        "--host", HOST, "--port", str(port), "--torch-threads", "1", "--max-queue", "4096",
        "--restore-dir", str(work / arm),
    ]  # fmt: skip
    if arm == "slot":
        cmd += ["--background", "harvest_live_job:job"]
    load_before = load_average()
    t_arm = time.perf_counter()
    runner = None
    counts: dict[str, Any] = {}
    with server(cmd, port, "/readyz", work / f"{arm}.log"):
        try:
            if arm == "nice-19":
                runner = start_runner(args.job, options, args.micro_batch)
            before = background_status(port)
            if runner is not None:
                assert runner.stdin is not None
                runner.stdin.write("go\n")
                runner.stdin.flush()
            t0 = time.perf_counter()
            raw = npy_request(port, args.shape)
            result = asyncio.run(replay(arm, port, raw, offsets, args.warmup, args.conns))
            load_s = time.perf_counter() - t0
            after = background_status(port)
            if runner is not None:
                runner.send_signal(signal.SIGTERM)
                out, _ = runner.communicate(timeout=60)
                counts = json.loads(out.strip().splitlines()[-1])
        finally:
            if runner is not None and runner.poll() is None:  # a failed arm leaves no job behind
                runner.kill()
                runner.wait()
    steps = int(after.get("steps", 0)) - int(before.get("steps", 0))
    items = int(after.get("items", 0)) - int(before.get("items", 0))
    accuracy = (after.get("metric") or {}).get("accuracy")
    if counts:
        steps, items, accuracy = counts["steps"], counts["items"], counts["accuracy"]
    measured = sum(result.statuses.values())
    return Arm(
        arm=arm,
        p50_ms=round(result.pct(50), 2),
        p99_ms=round(result.pct(99), 2),
        answered=len(result.latencies),
        measured=measured,
        refused=measured - len(result.latencies),
        unfinished=result.unfinished,
        bg_steps=steps,
        bg_items=items,
        bg_accuracy=None if accuracy is None else round(float(accuracy), 3),
        load_s=round(load_s, 1),
        arm_wall_s=round(time.perf_counter() - t_arm, 1),
        load_before=load_before,
        load_after=load_average(),
    )


def arrivals(args: argparse.Namespace) -> np.ndarray:
    """The arrival offsets every arm is sent, from the trace (seeded)."""
    from traces import load_trace

    trace = load_trace(
        args.trace, duration=args.warmup + args.duration, seed=args.seed, rate=args.rate
    )
    if len(trace) == 0:
        raise ValueError(f"trace {args.trace!r} has no arrivals in {trace.duration:g} s")
    return np.asarray(trace.arrivals)


def markdown(rows: Sequence[Arm]) -> str:
    """The rows as a table; round -1 is the median over rounds."""
    head = (
        "| round | arm | p50 ms | p99 ms | p99 x alone | answered | refused | bg steps | bg items "
        "| accuracy | load s | arm s | load avg |\n" + "| --- " * 13 + "|"
    )
    lines = [head]
    for r in rows:
        acc = "-" if r.bg_accuracy is None else f"{r.bg_accuracy:.3f}"
        which = "median" if r.round < 0 else str(r.round + 1)
        lines.append(
            f"| {which} | {r.arm} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.p99_x:.2f} | {r.answered} "
            f"| {r.refused} | {r.bg_steps} | {r.bg_items} | {acc} | {r.load_s:.1f} "
            f"| {r.arm_wall_s:.1f} | {r.load_before:.1f}-{r.load_after:.1f} |"
        )
    return "\n".join(lines)


def bench_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", default="azure-conv", help="trace or generator spec")
    p.add_argument("--rate", type=float, default=40.0, help="rescale the trace to this req/s")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per arm")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="builtin:digits-small")
    p.add_argument("--shape", default="1,8,8", help="shape of one input item")
    p.add_argument("--device", default="virtual:xavier-nx")
    p.add_argument("--job", default=DEFAULT_JOB)
    p.add_argument("--job-option", action="append", metavar="KEY=VALUE")
    p.add_argument("--micro-batch", type=int, default=64, help="the nice-19 process's")
    p.add_argument("--conns", type=int, default=64, help="client connections")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {', '.join(ARMS)}")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every arm this many times, the order rotated each round (medians reported)",
    )
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    try:
        args.shape = tuple(int(x) for x in args.shape.split(","))
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        if not arms or set(arms) - set(ARMS):
            raise ValueError(f"--arms: a comma list of {', '.join(ARMS)}")
        if args.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
        options = list(args.job_option or DEFAULT_JOB_OPTIONS)
        parsed = parse_options(options)
        offsets = arrivals(args)
    except ValueError as exc:
        p.error(str(exc))
    work = Path(tempfile.mkdtemp(prefix="ecoserve-harvest-live-"))
    (work / "harvest_live_job.py").write_text(FACTORY.format(spec=args.job, options=parsed))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(work), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]
    )
    print(
        f"{len(offsets)} requests over {args.warmup + args.duration:g} s ({args.trace} "
        f"rescaled to {args.rate:g} req/s over its whole length: "
        f"{len(offsets) / (args.warmup + args.duration):.1f} req/s in this stretch), arms "
        f"{', '.join(arms)}; logs in {work}",
        file=sys.stderr,
    )
    rows: list[Arm] = []
    for n in range(args.rounds):
        for arm in arms[n % len(arms) :] + arms[: n % len(arms)]:
            row = run_arm(arm, args, offsets, work / f"round{n}", options)
            row.round = n
            rows.append(row)
            print(
                f"round {n + 1} {arm}: p99 {row.p99_ms} ms, {row.bg_items} items", file=sys.stderr
            )
    with_ratios(rows)
    summary = medians(rows) if args.rounds > 1 else []
    for r in rows:
        print(json.dumps(asdict(r)), file=sys.stderr)
    print(markdown(sorted(rows, key=lambda r: (r.round, arms.index(r.arm))) + summary))
    if args.out:
        meta: Mapping[str, Any] = vars(args) | {"out": str(args.out), "options": options}
        payload = {
            "args": meta,
            "rows": [asdict(r) for r in rows],
            "medians": [asdict(r) for r in summary],
        }
        args.out.write_text(json.dumps(payload, indent=1, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["job"]:
        return job_main(argv[1:])
    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
