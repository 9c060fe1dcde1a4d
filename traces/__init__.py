"""Request-arrival traces: bundled real ones, synthetic generators and CSV loaders.

``load_trace("azure-code")``, ``load_trace("fixed:50ms", duration="10m")`` or
``load_trace("my_trace.csv", rate=15)`` all return a ``Trace`` of arrival times;
``scale_load(trace, 2.0)`` doubles its arrivals over the same clock.

Plain data and numpy: imports no other part of ecoserve.
"""

from traces.bundled import BUNDLED, BundledTrace, bundled_names, bundled_path, load_bundled
from traces.durations import parse_duration
from traces.generators import SPEC_FORMS, generate
from traces.load_scale import scale_load
from traces.loaders import TIMESTAMP_COLUMNS, TraceFormatError, load_csv_trace
from traces.resolve import load_trace
from traces.trace import Trace

__all__ = [
    "BUNDLED",
    "BundledTrace",
    "SPEC_FORMS",
    "TIMESTAMP_COLUMNS",
    "Trace",
    "TraceFormatError",
    "bundled_names",
    "bundled_path",
    "generate",
    "load_bundled",
    "load_csv_trace",
    "load_trace",
    "parse_duration",
    "scale_load",
]
