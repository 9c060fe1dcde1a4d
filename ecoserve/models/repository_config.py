"""One model's ``config.pbtxt`` in a Triton-layout repository: the record ecoserve serves.

The file is parsed by protobuf's ``text_format`` into the ``ModelConfig`` message that
tritonclient ships, so the grammar is Triton's own (``read_config``). ``repository_rules``
checks the message and completes it into the frozen ``ModelConfig`` here, which keeps the
effective message so the server can answer ``/v2/models/<m>/config`` with it (``to_json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

CONFIG_FILE = "config.pbtxt"

Backend = Literal["pytorch", "onnxruntime", "python"]
#: Triton's platform for each backend ecoserve serves; its metadata reports a backend model's
#: backend name as the platform (the python backend has no platform of its own).
PLATFORMS: dict[Backend, str] = {
    "pytorch": "pytorch_libtorch",
    "onnxruntime": "onnxruntime_onnx",
    "python": "python",
}
#: The file a version directory holds for each backend, unless ``default_model_filename``.
MODEL_FILES: dict[Backend, str | None] = {
    "pytorch": "model.pt",
    "onnxruntime": "model.onnx",
    "python": None,
}


class RepositoryError(ValueError):
    """A model repository ecoserve cannot serve; the message names the model, field and fix.

    ``problems`` holds one error per refused model when a scan found several.
    """

    def __init__(
        self,
        message: str,
        model: str | None = None,
        field: str | None = None,
        problems: Sequence[RepositoryError] = (),
    ) -> None:
        super().__init__(message)
        self.model = model
        self.field = field
        self.problems = tuple(problems)


@dataclass(frozen=True)
class TensorConfig:
    """One input or output: its protocol name, datatype (``FP32``) and dims without batch."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelConfig:
    """What ecoserve serves of one repository model, and the config it was read from.

    ``dims`` exclude the batch dimension when ``max_batch_size > 0``; with 0 the model takes
    one item exactly of ``dims`` and its batch-size knob is bound at 1 (``batch_bound``).
    ``versions`` are the versions the policy chose, ascending. ``instance_kind`` is recorded
    for the config endpoint: ecoserve runs TorchScript and Python models on the CPU, and
    ONNX models on the execution providers it is given.
    """

    name: str
    backend: Backend
    max_batch_size: int
    input: TensorConfig
    output: TensorConfig
    versions: tuple[int, ...]
    path: Path
    dynamic_batching: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    instance_kind: str = "KIND_AUTO"
    model_filename: str | None = None
    entry_point: str | None = None
    #: The latency target in SLO mode (parameter ``ecoserve_slo_latency_ms``), seconds.
    slo_latency_s: float | None = None
    serialized: bytes = field(default=b"", repr=False)

    @property
    def platform(self) -> str:
        return PLATFORMS[self.backend]

    @property
    def batch_bound(self) -> int:
        """The largest batch the model's batch-size knob may choose."""
        return max(1, self.max_batch_size)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    def version_path(self, version: int) -> Path:
        return self.path / str(version)

    def model_path(self, version: int) -> Path | None:
        """The file one version is loaded from (None for an entry point)."""
        if self.model_filename is None:
            return None
        return self.version_path(version) / self.model_filename

    def to_protobuf(self) -> Any:
        """A fresh copy of the effective ``inference.ModelConfig`` message."""
        message = model_config_class()()
        message.ParseFromString(self.serialized)
        return message

    def to_json(self) -> dict[str, Any]:
        """The config as Triton's ``/v2/models/<m>/config`` answers it: proto field names,
        and 64-bit integers as numbers (protobuf's JSON writes them as strings)."""
        from google.protobuf import json_format

        message = self.to_protobuf()
        out = json_format.MessageToDict(message, preserving_proto_field_name=True)
        return _int64_as_numbers(message.DESCRIPTOR, out)


def model_config_class() -> Any:
    """Triton's ``inference.ModelConfig`` message class, from tritonclient's wheel."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise RepositoryError(
            "reading a Triton model repository needs tritonclient's model config schema, which "
            "is not installed: pip install 'ecoserve[grpc]'"
        ) from exc
    return model_config_pb2.ModelConfig


_INT64_TYPES = frozenset({3, 4, 6, 16, 18})  # INT64, UINT64, FIXED64, SFIXED64, SINT64


def _int64_as_numbers(descriptor: Any, value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        fd = descriptor.fields_by_name[key]
        entry = fd.message_type
        if entry is not None and entry.GetOptions().map_entry:
            inner = entry.fields_by_name["value"].message_type
            out[key] = {k: _int64_as_numbers(inner, v) for k, v in item.items()} if inner else item
        elif entry is not None:
            out[key] = (
                [_int64_as_numbers(entry, v) for v in item]
                if isinstance(item, list)
                else _int64_as_numbers(entry, item)
            )
        elif fd.type in _INT64_TYPES:
            out[key] = [int(v) for v in item] if isinstance(item, list) else int(item)
        else:
            out[key] = item
    return out


def read_config(model_dir: Path) -> Any:
    """Parse ``model_dir/config.pbtxt`` into Triton's ``ModelConfig`` message."""
    from google.protobuf import text_format

    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise RepositoryError(
            f"model {model_dir.name!r}: {path} not found; every model directory needs a "
            "config.pbtxt (Triton's model configuration)",
            model_dir.name,
            CONFIG_FILE,
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(
            f"model {model_dir.name!r}: cannot read {path}: {exc}", model_dir.name, CONFIG_FILE
        ) from exc
    message = model_config_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise RepositoryError(
            f"model {model_dir.name!r}: {path} is not a valid model configuration: {exc}"
            + _suggestion(str(exc), message),
            model_dir.name,
            CONFIG_FILE,
        ) from exc
    return message


def _suggestion(problem: str, message: Any) -> str:
    """``; did you mean "max_batch_size"?`` for a field name protobuf does not know."""
    import difflib
    import re

    unknown = re.search(r'has no field named "([^"]+)"', problem)
    if unknown is None:
        return ""
    known = [f.name for f in message.DESCRIPTOR.fields]
    close = difflib.get_close_matches(unknown.group(1), known, n=1)
    return f'; did you mean "{close[0]}"?' if close else ""
