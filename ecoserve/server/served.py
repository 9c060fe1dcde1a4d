"""The models one daemon serves, each on its own engine queue over one shared runtime.

A daemon started with ``--model`` serves one model on the engine's default queue, as it
always has. With ``--model-repository`` it serves every model of the repository on one
board: each model has its own queue and batch-size knob, the clock knobs are the board's
and tuned for all of them together, and the model's weights may be swapped out under a
memory budget. ``ServedModel`` is what the front ends need of one of them: the name they
answer to, its input contract, its batch bound, its statistics and whether it is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ecoserve.models.loader import LoadedModel
from ecoserve.models.repository import ModelConfig
from ecoserve.server.oip_stats import InferenceStatistics
from ecoserve.server.tensors import TensorSpec


@dataclass
class ServedModel:
    """One served model: its engine queue, what its requests look like, and its figures."""

    name: str
    #: The engine queue its requests wait in (``default`` for a daemon of one model).
    queue: str
    #: The model as loaded at start (its input contract, pre- and postprocessing); None
    #: where the model runs elsewhere (a fleet's boards).
    model: LoadedModel | None
    spec: TensorSpec
    #: The largest batch a request may carry, and the bound of its batch-size knob.
    max_batch: int
    statistics: InferenceStatistics
    #: The versions it serves (the repository's version policy chose them).
    versions: tuple[str, ...] = ("1",)
    #: Triton's configuration of the model, as given in its ``config.pbtxt`` (None: made up).
    triton_config: dict[str, Any] | None = None
    #: Its configuration in the model repository (None: a ``--model`` daemon's model).
    repository: ModelConfig | None = None
    #: False once unloaded through the repository API; requests are refused until a load.
    loaded: bool = True
    #: Why the model is not available, when it is not.
    reason: str | None = None
    #: Requests accepted for it and not yet answered (an unload lets them finish first).
    pending: int = 0
    #: How long loading it took, in seconds, each time (the first at start).
    load_times_s: list[float] = field(default_factory=list)

    @property
    def platform(self) -> str | None:
        """Triton's platform name for the model, where its loader knows one."""
        return getattr(self.model, "platform", None)
