"""``ecoserve top``: what a running daemon's tuner is doing, at a glance, in a terminal.

One ``GET /v1/status`` a second carries everything on the screen (the configuration against
the knobs' tables, the tuner and its phase, the last windows' cost, joules, latency and
arrival rate, the queue, rejections, device warnings and frozen knobs, the tier node, a
fleet's boards awake and parked, each when the status carries it), so the view costs the
daemon one small request a second. It fits an 80x24 terminal over SSH, draws on the
alternate screen (as ``htop`` does) with rich's live display, quits on ``q`` or Ctrl-C,
and when the daemon is unreachable or restarting it says so and keeps trying.

Split in two: :func:`render` turns a status (or the lack of one) into lines, with no I/O, so
it is tested directly; :func:`run` is the loop of fetching, drawing and reading keys.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

SPARKS = "▁▂▃▄▅▆▇█"
WIDTH = 80
#: Window figures drawn as sparklines: (label, key in a window report, scale, unit format).
SERIES = (
    ("cost", "cost", 1.0, "{:.3f}"),
    ("energy J/req", "energy_per_request_j", 1.0, "{:.4f}"),
    ("p50 latency ms", "latency_p50_s", 1e3, "{:.1f}"),
    ("p99 latency ms", "latency_p99_s", 1e3, "{:.1f}"),
    ("arrivals req/s", "arrival_rate", 1.0, "{:.1f}"),
)


def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values as block characters scaled between their min and max."""
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    if hi <= lo:
        return SPARKS[len(SPARKS) // 2] * len(vals)
    top = len(SPARKS) - 1
    return "".join(SPARKS[round((v - lo) / (hi - lo) * top)] for v in vals)


def _hz(value: float) -> str:
    return f"{value / 1e9:.2f} GHz" if value >= 1e9 else f"{value / 1e6:.0f} MHz"


def _value(name: str, value: float) -> str:
    if name.endswith("_hz"):
        return _hz(value)
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def knob_line(name: str, value: float, table: Sequence[float], pinned: bool) -> Text:
    """``cpu  1.19 GHz  ████░░░░  8/15  (0.12 .. 1.91 GHz)``: where the value sits in its table."""
    model = name.partition(":")[2]  # a model's own batch size: batch_size:<model>
    label = f"b:{model}" if model else name.removesuffix("_freq_hz").removesuffix("_size")
    index = min(range(len(table)), key=lambda i: abs(table[i] - value)) if table else 0
    bar_width = 20
    filled = round((index + 1) / max(len(table), 1) * bar_width)
    line = Text(f"{label:<10.10}", style="bold")
    line.append(f"{_value(name, value):>10}  ")
    line.append("█" * filled, style="green")
    line.append("░" * (bar_width - filled), style="dim")
    line.append(f" {index + 1:>2}/{len(table):<2}")
    if table:
        line.append(f"  ({_value(name, table[0])} .. {_value(name, table[-1])})", style="dim")
    if pinned:
        line.append("  pinned", style="yellow")
    return line


def _duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class Screen:
    """What the view knows between fetches: the last status and when it was seen."""

    url: str
    status: dict[str, Any] | None = None
    seen_at: float | None = None
    error: str | None = None
    fetches: int = 0


def _headline(screen: Screen, now: float) -> Text:
    """The state first (it must survive truncation), then the address and the model."""
    s = screen.status or {}
    head = Text("ecoserve top  ", style="bold cyan")
    if screen.error is not None:
        ago = "" if screen.seen_at is None else f", last seen {_duration(now - screen.seen_at)} ago"
        head.append(f"UNREACHABLE{ago}", style="bold red")
    elif s.get("draining"):
        head.append("DRAINING (shutting down)", style="bold yellow")
    elif not s.get("ready"):
        head.append("STARTING (measuring the baseline)", style="bold yellow")
    else:
        head.append("ready", style="bold green")
        head.append(f", up {_duration(float(s.get('uptime_s', 0.0)))}")
    head.append(f"  {screen.url.split('://', 1)[-1]}")
    if s:
        head.append(f"  {s.get('model', '?')} on {s.get('device', '?')}")
    return head


def render(screen: Screen, now: float | None = None, width: int = WIDTH) -> Group:
    """Every line of the view for the current state (no I/O)."""
    now = time.monotonic() if now is None else now
    lines: list[Text] = [_headline(screen, now)]
    s = screen.status
    if screen.error is not None:
        lines.append(Text(f"{screen.error}; retrying every second", style="red"))
    if not s:
        lines.append(Text("no status yet", style="dim"))
        lines.append(Text("q quit", style="dim"))
        return _fit(lines)
    tuner = s.get("tuner") or {}
    base = s.get("baseline") or {}
    line = Text(f"tuner {tuner.get('name', '?')}", style="bold")
    line.append(f"  phase {s.get('tuner_phase', s.get('phase', '?'))}", style="magenta")
    line.append(f"  windows {s.get('windows_closed', 0)}")
    if base:
        line.append(
            f"  baseline {base.get('energy_per_request_j', 0):.4f} J, "
            f"{1e3 * base.get('latency_s', 0):.1f} ms",
            style="dim",
        )
    lines.append(line)
    lines.append(Text("─" * width, style="dim"))
    config = s.get("config") or {}
    knobs = s.get("knobs") or {}
    pinned = s.get("pinned") or {}
    for name, value in config.items():
        lines.append(knob_line(name, float(value), knobs.get(name, []), name in pinned))
    lines.append(Text("─" * width, style="dim"))
    windows = s.get("windows") or []
    spark_width = width - 16 - 12
    lines.append(Text(f"{'last windows':<16}{'':<{spark_width}}{'last':>12}", style="dim"))
    for label, key, scale, fmt in SERIES:
        vals = [scale * float(w[key]) for w in windows if w.get(key) is not None]
        last = fmt.format(vals[-1]) if vals else "—"
        row = Text(f"{label:<16}")
        row.append(f"{sparkline(vals, spark_width):<{spark_width}}", style="cyan")
        row.append(f"{last:>12}")
        lines.append(row)
    lines.append(Text("─" * width, style="dim"))
    counters = s.get("counters") or {}
    settings = s.get("settings") or {}
    rejected = counters.get("rejected") or {}
    queue = Text(f"queue {s.get('queue_depth', 0)}/{settings.get('max_queue', '?')}")
    queue.append(
        f"  accepted {counters.get('accepted', 0)}  completed {counters.get('completed', 0)}"
        f"  failed {counters.get('failed', 0)}"
    )
    shown = {k: v for k, v in rejected.items() if v}
    queue.append(
        "  rejected " + (" ".join(f"{k}={v}" for k, v in shown.items()) if shown else "none"),
        style="yellow" if shown else "",
    )
    lines.append(queue)
    lines += _model_rows(s, width)
    background = s.get("background")
    if background:
        metric = " ".join(f"{k} {v:.3f}" for k, v in (background.get("metric") or {}).items())
        state = f"paused: {background.get('reason')}" if background.get("paused") else "running"
        lines.append(
            Text(
                f"background {background.get('job')}: {background.get('steps', 0)} steps, "
                f"checkpoint {background.get('checkpoint_step')}, "
                f"{float(background.get('joules') or 0):.1f} J, "
                f"busy {100 * float(background.get('busy_share') or 0):.0f}%  {metric}  {state}"[
                    :width
                ],
                style="yellow" if background.get("paused") else "",
            )
        )
    frozen = s.get("frozen") or {}
    if frozen:
        text = ", ".join(f"{k} ({v})" if isinstance(v, str) else str(k) for k, v in frozen.items())
        lines.append(Text(f"frozen knobs: {text}", style="bold red"))
    boards = s.get("boards") or []
    if boards:
        awake = [b for b in boards if b.get("state", "awake") == "awake"]
        parked = [b for b in boards if b.get("state") == "parked"]
        names = " ".join(str(b.get("name", "?")) for b in awake)
        lines.append(Text(f"boards: {len(awake)} awake ({names}), {len(parked)} parked"))
    warnings = s.get("device_warnings") or []
    if warnings:
        lines.append(Text(f"device: {warnings[-1]}"[:width], style="yellow"))
        if len(warnings) > 1:
            lines.append(Text(f"  and {len(warnings) - 1} more warnings", style="yellow"))
    else:
        lines.append(Text("device: no warnings, every knob applied", style="dim"))
    tier = s.get("tier")
    if tier:
        link = tier.get("link") or {}
        bw = link.get("bandwidth_bps")
        where = "down" if link.get("down") else ("?" if bw is None else f"{bw / 1e6:.3g} Mbit/s")
        lines.append(
            Text(
                f"tier {tier.get('mode')}: {tier.get('knob')} {tier.get('value')}  link {where}"
                f"  forwarded {tier.get('rows_forwarded', 0)}  local {tier.get('rows_local', 0)}"
                f"  fallbacks {tier.get('fallbacks', 0)}"[:width]
            )
        )
    lines.append(Text("q quit · refreshes every second · data from /v1/status", style="dim"))
    return _fit(lines)


def _model_rows(status: Mapping[str, Any], width: int) -> list[Text]:
    """One row per model of a board that serves several: its batch size, traffic and state."""
    models = status.get("models") or {}
    if len(models) < 2:
        return []
    last = (status.get("windows") or [{}])[-1].get("per_model") or {}
    rows = [Text(f"{'model':<20}{'batch':>6}{'requests':>10}{'p99 ms':>9}  state", style="dim")]
    for name, m in sorted(models.items()):
        p99 = (last.get(name) or {}).get("latency_p99_s")
        shown = "—" if p99 is None else f"{1e3 * float(p99):.1f}"
        state = "loaded" if m.get("loaded", True) else f"unloaded ({m.get('reason', '')})"
        if m.get("loads", 0) > 1:
            state += f", {m['loads']} loads {float(m.get('load_s_total', 0)):.2f} s"
        row = Text(f"{name[:19]:<20}{m.get('batch_size', '?'):>6}{m.get('requests', 0):>10}")
        row.append(f"{shown:>9}  ")
        row.append(state[: max(0, width - 47)], style="" if m.get("loaded", True) else "yellow")
        rows.append(row)
    return rows


def _fit(lines: list[Text]) -> Group:
    """One screen line per line: long ones end in an ellipsis instead of wrapping."""
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
    return Group(*lines)


def fetch(client: httpx.Client, screen: Screen, windows: int) -> None:
    """One status request; the screen remembers the last good one and any error."""
    screen.fetches += 1
    try:
        resp = client.get("/v1/status", params={"windows": windows})
        resp.raise_for_status()
        status = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        screen.error = f"{type(exc).__name__}: {exc}"[:200]
        return
    if not isinstance(status, Mapping):
        screen.error = "the answer to /v1/status is not a JSON object"
        return
    screen.status, screen.error, screen.seen_at = dict(status), None, time.monotonic()


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """stdin in cbreak mode (keys arrive one by one, Ctrl-C still interrupts), restored after."""
    if not sys.stdin.isatty():
        yield None
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(fd: Any, timeout: float) -> bool:
    """Wait up to ``timeout`` for a key; True when it is ``q``."""
    if fd is None:
        time.sleep(timeout)
        return False
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready and os.read(fd, 1).lower() == b"q":
            return True
    return False


def run(
    url: str,
    *,
    interval: float = 1.0,
    windows: int = 40,
    console: Console | None = None,
    frames: int | None = None,
) -> int:
    """Draw the view until ``q`` or Ctrl-C (or ``frames`` refreshes, for tests); returns 0."""
    console = console or Console()
    screen = Screen(url.rstrip("/"))
    with (
        httpx.Client(base_url=screen.url, timeout=min(1.0, interval)) as client,
        _keys() as fd,
        Live(console=console, screen=console.is_terminal, auto_refresh=False) as live,
    ):
        try:
            while frames is None or screen.fetches < frames:
                fetch(client, screen, windows)
                live.update(render(screen, width=min(console.width, 120)), refresh=True)
                if _quit_pressed(fd, interval):
                    break
        except KeyboardInterrupt:
            pass
    return 0
