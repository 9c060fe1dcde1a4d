"""What ecoserve serves of a Triton model configuration, checked field by field.

Every field the parsed message has set is compared with an allow-list (protobuf's
``ListFields``), so a field ecoserve does not honour — including one added to Triton's schema
later — is refused by name instead of being silently ignored. The checked message is completed
as Triton completes it (name, platform, backend, version policy) into a ``ModelConfig``.

Version directories are chosen here too: integer names without a leading zero (others are
ignored, as Triton ignores them), picked by the version policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ecoserve.models.repository_config import (
    CONFIG_FILE,
    MODEL_FILES,
    PLATFORMS,
    Backend,
    ModelConfig,
    RepositoryError,
    TensorConfig,
    model_config_class,
    read_config,
)

#: Config data types ecoserve serves, with the protocol's name for each.
DATATYPES = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_BF16": "BF16",
}
INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")
ENTRY_POINT = "entry_point"
#: A model's latency target in SLO mode, in milliseconds (ecoserve's own parameter).
SLO_PARAMETER = "ecoserve_slo_latency_ms"

#: The fields honoured, at each level of the message; anything else set is refused.
TOP_FIELDS = frozenset(
    {
        "name",
        "platform",
        "backend",
        "version_policy",
        "max_batch_size",
        "input",
        "output",
        "dynamic_batching",
        "instance_group",
        "default_model_filename",
        "parameters",
    }
)
TENSOR_FIELDS = frozenset({"name", "data_type", "dims"})
BATCHING_FIELDS = frozenset({"preferred_batch_size", "max_queue_delay_microseconds"})
INSTANCE_FIELDS = frozenset({"name", "kind", "count"})
#: Why some refused fields cannot be honoured, so the error says what to do instead.
REFUSAL_HINTS = {
    "sequence_batching": "ecoserve serves stateless models; drop it",
    "ensemble_scheduling": "ensembles are not served; serve each step as its own model",
    "model_warmup": "ecoserve runs one zero item through each version when it loads it; drop it",
    "optimization": "ecoserve runs the model as exported; drop it",
    "reshape": "export the model with the shape it serves; drop it",
}


class _Refuser:
    """Raises ``RepositoryError`` for one model's config, naming model, file and field."""

    def __init__(self, model: str, path: Path) -> None:
        self.model = model
        self.path = path

    def error(self, field: str, problem: str) -> RepositoryError:
        return RepositoryError(
            f"model {self.model!r} ({self.path}): {field}: {problem}", self.model, field
        )

    def only(self, message: Any, allowed: frozenset[str], prefix: str) -> None:
        """Refuse the first field set in ``message`` that is not in ``allowed``."""
        for fd, _ in message.ListFields():
            if fd.name not in allowed:
                hint = REFUSAL_HINTS.get(fd.name, f"supported here: {', '.join(sorted(allowed))}")
                raise self.error(f"{prefix}{fd.name}", f"is not supported by ecoserve ({hint})")


def available_versions(model_dir: Path) -> tuple[int, ...]:
    """Version directories, ascending: integer names without a leading zero, as Triton."""
    found = [
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit() and not p.name.startswith("0")
    ]
    return tuple(sorted(found))


def load_config(model_dir: Path) -> ModelConfig:
    """Read, check and complete one model directory's config; RepositoryError if refused."""
    message = read_config(model_dir)
    dir_name = model_dir.name
    refuse = _Refuser(dir_name, model_dir / CONFIG_FILE)
    if message.name and message.name != dir_name:
        raise refuse.error(
            "name",
            f"is {message.name!r} but the directory is {dir_name!r}; Triton requires them equal "
            "(rename one, or drop name)",
        )
    refuse.only(message, TOP_FIELDS, "")
    backend = _backend(message, refuse)
    max_batch = int(message.max_batch_size)
    if max_batch < 0:
        raise refuse.error("max_batch_size", f"is {max_batch}; use 0 (no batching) or more")
    tensor_in = _one_tensor(message.input, "input", refuse, fixed=True)
    tensor_out = _one_tensor(message.output, "output", refuse, fixed=False)
    delay, preferred = _batching(message, max_batch, refuse)
    kind = _instance_kind(message, backend, refuse)
    entry_point = _entry_point(message, backend, refuse)
    slo_latency_s = _slo(message, refuse)
    filename = _model_filename(message, backend, refuse)
    versions = choose_versions(message.version_policy, available_versions(model_dir), refuse)
    for version in versions:
        if filename is not None and not (model_dir / str(version) / filename).is_file():
            raise refuse.error(
                f"{version}/{filename}",
                f"version {version} has no {filename} (looked for "
                f"{model_dir / str(version) / filename}); put the {backend} model file there",
            )
    message.name = dir_name
    message.backend = backend
    if backend != "python":
        message.platform = PLATFORMS[backend]
    if not message.HasField("version_policy"):
        message.version_policy.latest.num_versions = 1
    return ModelConfig(
        name=dir_name,
        backend=backend,
        max_batch_size=max_batch,
        input=tensor_in,
        output=tensor_out,
        versions=versions,
        path=model_dir,
        dynamic_batching=message.HasField("dynamic_batching"),
        preferred_batch_sizes=preferred,
        max_queue_delay_s=delay,
        instance_kind=kind,
        model_filename=filename,
        entry_point=entry_point,
        slo_latency_s=slo_latency_s,
        serialized=message.SerializeToString(),
    )


def _backend(message: Any, refuse: _Refuser) -> Backend:
    # The python backend is named by backend only: Triton gives it no platform.
    by_platform: dict[str, Backend] = {
        "pytorch_libtorch": "pytorch",
        "onnxruntime_onnx": "onnxruntime",
    }
    supported = (
        "platform pytorch_libtorch or onnxruntime_onnx, or backend pytorch, onnxruntime or python"
    )
    from_platform: Backend | None = None
    if message.platform:
        if message.platform not in by_platform:
            raise refuse.error("platform", f"{message.platform!r} is not served; use {supported}")
        from_platform = by_platform[message.platform]
    if message.backend:
        if message.backend not in PLATFORMS:
            raise refuse.error("backend", f"{message.backend!r} is not served; use {supported}")
        backend: Backend = message.backend
        if from_platform is not None and from_platform != backend:
            raise refuse.error(
                "backend",
                f"{backend!r} contradicts platform {message.platform!r}; drop one of them",
            )
        return backend
    if from_platform is None:
        raise refuse.error("platform", f"neither platform nor backend is set; set {supported}")
    return from_platform


def _one_tensor(tensors: Any, what: str, refuse: _Refuser, fixed: bool) -> TensorConfig:
    if len(tensors) != 1:
        names = [t.name for t in tensors]
        raise refuse.error(
            what,
            f"declares {len(tensors)} ({names}); ecoserve serves models with exactly one input "
            "and one output",
        )
    tensor = tensors[0]
    prefix = f"{what}[0]."
    refuse.only(tensor, TENSOR_FIELDS, prefix)
    if not tensor.name:
        raise refuse.error(f"{prefix}name", "is not set; name the tensor clients send/receive")
    if not tensor.data_type:  # TYPE_INVALID, the default: the field was left out
        raise refuse.error(f"{prefix}data_type", "is not set; declare it (e.g. TYPE_FP32)")
    type_name = _data_type_name(tensor.data_type)
    if type_name not in DATATYPES:
        raise refuse.error(
            f"{prefix}data_type",
            f"{type_name} is not served; use one of {', '.join(DATATYPES)}",
        )
    dims = tuple(int(d) for d in tensor.dims)
    if not dims:
        raise refuse.error(
            f"{prefix}dims", "is empty; declare the tensor's dims (e.g. [3, 32, 32])"
        )
    bad = [d for d in dims if d == 0 or d < -1]
    if bad:
        raise refuse.error(f"{prefix}dims", f"{list(dims)} holds {bad}; each dim is >= 1 or -1")
    if fixed and -1 in dims:
        raise refuse.error(
            f"{prefix}dims",
            f"{list(dims)} has a variable (-1) dim; ecoserve stacks requests into batches, so "
            "every input dim must be fixed: set the size the model serves",
        )
    return TensorConfig(tensor.name, DATATYPES[type_name], dims)


def _data_type_name(value: int) -> str:
    enum = model_config_class().DESCRIPTOR.file.enum_types_by_name["DataType"]
    found = enum.values_by_number.get(value)
    return found.name if found is not None else str(value)


def _batching(message: Any, max_batch: int, refuse: _Refuser) -> tuple[float, tuple[int, ...]]:
    if not message.HasField("dynamic_batching"):
        return 0.0, ()
    batching = message.dynamic_batching
    refuse.only(batching, BATCHING_FIELDS, "dynamic_batching.")
    if max_batch == 0:
        raise refuse.error(
            "dynamic_batching",
            "needs max_batch_size >= 1 (0 means the model takes no batch); set max_batch_size "
            "or drop dynamic_batching",
        )
    preferred = tuple(int(b) for b in batching.preferred_batch_size)
    bad = [b for b in preferred if not 1 <= b <= max_batch]
    if bad:
        raise refuse.error(
            "dynamic_batching.preferred_batch_size",
            f"{bad} outside 1..max_batch_size ({max_batch})",
        )
    delay_s = int(batching.max_queue_delay_microseconds) / 1e6
    return delay_s, tuple(sorted(set(preferred)))


def _instance_kind(message: Any, backend: Backend, refuse: _Refuser) -> str:
    groups = message.instance_group
    if not groups:
        return "KIND_AUTO"
    if len(groups) > 1:
        raise refuse.error(
            "instance_group", f"has {len(groups)} groups; ecoserve runs one instance per model"
        )
    refuse.only(groups[0], INSTANCE_FIELDS, "instance_group[0].")
    count = int(groups[0].count) or 1  # Triton's default count is 1
    if count != 1:
        raise refuse.error(
            "instance_group[0].count",
            f"is {count}; ecoserve runs one instance per model (its batch-size knob is the "
            "parallelism): set count 1",
        )
    kind = type(groups[0]).Kind.Name(groups[0].kind)
    if kind not in INSTANCE_KINDS:
        raise refuse.error(
            "instance_group[0].kind", f"{kind} is not served; use KIND_AUTO, KIND_CPU or KIND_GPU"
        )
    if kind == "KIND_GPU" and backend != "onnxruntime":
        raise refuse.error(
            "instance_group[0].kind",
            f"KIND_GPU: ecoserve runs {backend} models on the CPU; use KIND_CPU or KIND_AUTO "
            "(or an ONNX model on a GPU execution provider)",
        )
    return str(kind)


def _slo(message: Any, refuse: _Refuser) -> float | None:
    """The model's latency target in SLO mode (``ecoserve_slo_latency_ms``), in seconds."""
    param = message.parameters.get(SLO_PARAMETER)
    if param is None:
        return None
    text = param.string_value
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise refuse.error(
            f"parameters.{SLO_PARAMETER}",
            f'is {text!r}; give the latency target in milliseconds, e.g. string_value: "100"',
        )
    return value / 1000.0


def _entry_point(message: Any, backend: Backend, refuse: _Refuser) -> str | None:
    params = {k: v for k, v in message.parameters.items() if k != SLO_PARAMETER}
    if backend != "python":
        if params:
            raise refuse.error(
                "parameters",
                f"{sorted(params)} are not supported for {backend} models (only "
                f"{SLO_PARAMETER}); drop them",
            )
        return None
    others = sorted(set(params) - {ENTRY_POINT})
    if others:
        raise refuse.error(
            "parameters",
            f"{others} are not supported; the python backend takes entry_point and {SLO_PARAMETER}",
        )
    value = params[ENTRY_POINT].string_value if ENTRY_POINT in params else ""
    if ":" not in value:
        raise refuse.error(
            f"parameters.{ENTRY_POINT}",
            f'is {value!r}; the python backend needs parameters {{ key: "entry_point" value '
            '{ string_value: "package.module:callable" } } naming an nn.Module or batch function',
        )
    return value


def _model_filename(message: Any, backend: Backend, refuse: _Refuser) -> str | None:
    default = MODEL_FILES[backend]
    if not message.default_model_filename:
        return default
    if default is None:
        raise refuse.error(
            "default_model_filename",
            "the python backend loads its entry point, not a file; drop it",
        )
    name = str(message.default_model_filename)
    if Path(name).name != name or name in (".", ".."):
        raise refuse.error("default_model_filename", f"{name!r} must be a plain file name")
    return name


def choose_versions(policy: Any, available: Iterable[int], refuse: _Refuser) -> tuple[int, ...]:
    """The versions a policy serves out of ``available`` (default: the latest one)."""
    have = sorted(set(available))
    if not have:
        raise refuse.error(
            "version",
            f"{refuse.path.parent} has no version directory; put the model in "
            f"{refuse.path.parent}/1/ (directories are named by integers from 1)",
        )
    choice = policy.WhichOneof("policy_choice") or "latest"
    if choice == "all":
        return tuple(have)
    if choice == "specific":
        wanted = sorted({int(v) for v in policy.specific.versions})
        if not wanted:
            raise refuse.error("version_policy.specific.versions", "is empty; list the versions")
        missing = [v for v in wanted if v not in have]
        if missing:
            raise refuse.error(
                "version_policy.specific.versions",
                f"names {missing}, which have no directory; the model has versions {have}",
            )
        return tuple(wanted)
    count = int(policy.latest.num_versions) if policy.HasField("latest") else 1
    if count < 1:
        raise refuse.error(
            "version_policy.latest.num_versions", f"is {count}; serve at least 1 version"
        )
    return tuple(have[-count:])
