"""Real arrival traces shipped inside the package, by name.

They are read from the installed package (``traces/data/``), never from the source tree
around it, so a wheel or a CI checkout replays them with nothing else on disk. Each carries
its attribution: the licence (CC-BY-4.0) requires it wherever results built on it appear.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from traces.loaders import load_csv_trace
from traces.trace import Trace

_AZURE = (
    "Azure LLM inference trace ({kind}), Azure/AzurePublicDataset "
    "data/AzureLLMInferenceTrace_{kind}.csv at commit b469a113cedca53ddc3bdea71a143dc4b7d8700c, "
    'CC-BY-4.0; cite Patel et al., "Splitwise: Efficient Generative LLM Inference Using '
    'Phase Splitting", ISCA 2024'
)


@dataclass(frozen=True)
class BundledTrace:
    """A shipped trace: its file under ``traces/data/`` and what to cite."""

    name: str
    filename: str
    description: str
    attribution: str
    requests: int


BUNDLED: tuple[BundledTrace, ...] = (
    BundledTrace(
        name="azure-code",
        filename="azure_code.csv",
        description="code-completion LLM requests, about one hour on 2023-11-16; bursty",
        attribution=_AZURE.format(kind="code"),
        requests=8819,
    ),
    BundledTrace(
        name="azure-conv",
        filename="azure_conv.csv",
        description="conversation LLM requests, about one hour on 2023-11-16; steadier",
        attribution=_AZURE.format(kind="conv"),
        requests=19366,
    ),
)


def bundled_names() -> tuple[str, ...]:
    """Names accepted by ``load_bundled`` and ``load_trace``."""
    return tuple(b.name for b in BUNDLED)


def get_bundled(name: str) -> BundledTrace:
    """The entry called ``name``; KeyError lists the bundled names."""
    for entry in BUNDLED:
        if entry.name == name:
            return entry
    raise KeyError(f"no bundled trace {name!r}; bundled traces: {', '.join(bundled_names())}")


def bundled_path(name: str) -> Path:
    """Where the named trace's CSV is installed."""
    entry = get_bundled(name)
    return Path(str(resources.files("traces").joinpath("data", entry.filename)))


def load_bundled(name: str, seed: int = 0) -> Trace:
    """The named bundled trace, with its attribution as the trace's source."""
    entry = get_bundled(name)
    return load_csv_trace(bundled_path(name), seed=seed, name=entry.name, source=entry.attribution)
