"""One entry point for "give me a trace": a generator spec, a bundled name or a file path.

The CLI's ``--trace`` and the benchmark configs take a single string, so the resolution
order is fixed and documented: a bundled name first (``azure-code``), then a generator
spec (``fixed:50ms``), then a path to a CSV file. A string that is none of them gets an
error listing all three forms.
"""

from __future__ import annotations

from pathlib import Path

from traces.bundled import bundled_names, load_bundled
from traces.durations import parse_duration
from traces.generators import DEFAULT_DURATION_S, SPEC_FORMS, generate, is_generator_spec
from traces.loaders import load_csv_trace
from traces.trace import Trace


def load_trace(
    spec_or_name_or_path: str | Path,
    duration: str | float | None = None,
    seed: int = 0,
    rate: float | None = None,
    time_scale: float | None = None,
) -> Trace:
    """The trace named by ``spec_or_name_or_path``, rescaled and cut as asked.

    - ``duration`` (``"3h"``, ``"90s"``, ``600``): for a generator, how long to generate
      (default 10 minutes); for a bundled or file trace, where to cut it after rescaling.
      Cutting never extends a trace: a one-hour trace asked for three hours stays one hour.
    - ``rate`` (target mean requests/s) or ``time_scale`` (time multiplier): rescale the
      time axis, keeping the arrival pattern (see ``Trace.rescaled``). At most one.
    - ``seed``: for Poisson arrivals and for spreading binned timestamps.
    """
    if rate is not None and time_scale is not None:
        raise ValueError("give at most one of rate= and time_scale=")
    seconds = None if duration is None else parse_duration(duration)
    text = str(spec_or_name_or_path).strip()
    if isinstance(spec_or_name_or_path, str) and text in bundled_names():
        trace = load_bundled(text, seed=seed)
    elif isinstance(spec_or_name_or_path, str) and is_generator_spec(text):
        return _generated(text, seconds, seed, rate, time_scale)
    else:
        path = Path(spec_or_name_or_path)
        if not path.is_file():
            message = (
                f"no trace {text!r}: not a bundled trace ({', '.join(bundled_names())}), "
                f"not a generator spec ({SPEC_FORMS}), and no such file"
            )
            # Something typed as a path is a missing file; anything else is a bad name/spec.
            looks_like_path = (
                isinstance(spec_or_name_or_path, Path) or "/" in text or text.endswith(".csv")
            )
            raise FileNotFoundError(message) if looks_like_path else ValueError(message)
        trace = load_csv_trace(path, seed=seed)
    if rate is not None or time_scale is not None:
        trace = trace.rescaled(time_scale=time_scale, rate=rate)
    return trace if seconds is None else trace.cut(seconds)


def _generated(
    spec: str, seconds: float | None, seed: int, rate: float | None, time_scale: float | None
) -> Trace:
    """A generated trace that still covers ``seconds`` after rescaling.

    Compressing time (a higher target rate) would shorten it, so the pattern is generated
    for long enough first and then cut back to the asked duration.
    """
    target = DEFAULT_DURATION_S if seconds is None else seconds
    trace = generate(spec, target, seed)
    if rate is None and time_scale is None:
        return trace
    if time_scale is None:
        assert rate is not None
        time_scale = trace.mean_rate / rate
    if time_scale < 1.0:
        trace = generate(spec, target / time_scale, seed)
        if rate is not None:
            time_scale = trace.mean_rate / rate
    return trace.rescaled(time_scale=time_scale).cut(target)
