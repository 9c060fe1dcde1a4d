"""``ServeSettings``: the daemon's settings, merged from defaults, TOML, environment and flags.

Every field has one name used everywhere: ``--max-queue`` on the command line,
``ECOSERVE_MAX_QUEUE`` in the environment, ``max_queue`` in the TOML file given with
``--config``. Precedence: command line > environment > TOML file > defaults, so a systemd
unit can keep a config file and an operator can still override one value for one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ecoserve.core.assembly import EngineSettings
from ecoserve.core.batch_timer import TIMER_KINDS
from ecoserve.server.deprecated import upgrade_keys, warn
from ecoserve.server.hosts import is_loopback
from ecoserve.server.options import ENV_PREFIX, RENAMED

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ServeSettings(EngineSettings):
    """Engine settings plus what the HTTP daemon needs (model, socket, limits, control)."""

    #: Empty: the tuner for this daemon's role, resolved at load (see ``default_tuner``).
    tuner: str = ""
    model: str = "builtin:cnn"
    model_name: str | None = None
    input_shape: tuple[int, ...] | None = None
    preprocess: str | None = None
    postprocess: str | None = None
    onnx_providers: str | None = None
    model_repository: str | None = None
    tenants: str | None = None
    memory_budget: str | None = None
    background: str | None = None
    background_checkpoint_every: int = 50
    background_max_delay_s: float = 0.02
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    allowed_hosts: str | None = None
    admin_token: str | None = None
    state_file: str | None = None
    request_timeout_s: float | None = 30.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_connections: int = 512
    idle_timeout_s: float = 10.0
    baseline_at_start: bool = True
    drain_timeout_s: float = 30.0
    retry_after_s: int = 1
    access_log: bool = False
    torch_threads: int | None = None
    watchdog_s: float | None = 60.0
    next_tier: str | None = None
    tier_mode: str = "split"
    link_emulation: str | None = None
    link_rtt_s: float = 0.0
    cascade_threshold: float | None = None
    serve_tier: bool = False
    tier_token: str | None = None
    tier_slowdown: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {self.port}")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise ValueError(f"grpc_port must be within 0..65535, got {self.grpc_port}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        if self.request_timeout_s is not None and self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if not self.idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be positive, got {self.idle_timeout_s}")
        if self.background_checkpoint_every < 1:
            raise ValueError(
                "background_checkpoint_every must be >= 1 steps, got "
                f"{self.background_checkpoint_every}"
            )
        if not self.background_max_delay_s > 0:
            raise ValueError(
                f"background_max_delay_s must be > 0 seconds, got {self.background_max_delay_s}"
            )
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.batch_timer not in TIMER_KINDS:
            raise ValueError(
                f"batch_timer must be one of {', '.join(TIMER_KINDS)}, got {self.batch_timer!r}"
            )
        if self.admin_token == "":
            self.admin_token = None
        if self.tier_token == "":
            self.tier_token = None
        if self.next_tier == "":
            self.next_tier = None
        if not self.tuner:
            self.tuner = self.default_tuner()
        self._check_tiers()
        self._check_repository()

    def _check_repository(self) -> None:
        """A repository's models come with their own contracts: no per-model flags, no tiers."""
        if self.model_repository is None:
            if self.memory_budget is not None:
                raise ValueError(
                    "memory_budget applies to a model repository: add --model-repository"
                )
            return
        clashing = [
            flag
            for flag, value in (
                ("--input-shape", self.input_shape),
                ("--preprocess", self.preprocess),
                ("--postprocess", self.postprocess),
                ("--model-name", self.model_name),
                ("--next-tier", self.next_tier),
                ("--serve-tier", self.serve_tier or None),
                ("--baseline-path", self.baseline_path),
            )
            if value is not None
        ]
        if clashing:
            raise ValueError(
                f"{', '.join(clashing)} cannot be used with --model-repository: drop "
                f"{'it' if len(clashing) == 1 else 'them'} (each model's config.pbtxt gives its "
                "name, input and output; tiers split one --model; each model's baseline is kept "
                "in the --state-file)"
            )

    def default_tuner(self) -> str:
        """Neurosurgeon for a split tier, EcoGD otherwise.

        EcoGD gets stuck on the split knob (its cost has a valley at each end), so a split
        tier left to it never splits; Neurosurgeon plans the split from the stage profiles
        and the measured link.
        """
        if self.next_tier is not None and self.tier_mode == "split":
            return "neurosurgeon"
        return "ecogd"

    def _check_tiers(self) -> None:
        """Reject tier settings at load time, so a typo fails before the model loads."""
        if self.tier_mode not in ("split", "cascade"):
            raise ValueError(f"tier_mode must be split or cascade, got {self.tier_mode!r}")
        if self.next_tier is not None and not self.next_tier.startswith(("http://", "https://")):
            raise ValueError(
                f"next_tier must be an http:// or https:// URL, got {self.next_tier!r}"
            )
        if self.link_rtt_s < 0:
            raise ValueError(f"link_rtt_s must be >= 0, got {self.link_rtt_s}")
        if self.link_emulation is not None:
            from twins.link import EmulatedLink

            EmulatedLink.parse(self.link_emulation, rtt_s=self.link_rtt_s)
        if self.cascade_threshold is not None and not 0 <= self.cascade_threshold <= 1:
            raise ValueError(f"cascade_threshold must be within 0..1, got {self.cascade_threshold}")
        if not self.tier_slowdown >= 1:
            raise ValueError(f"tier_slowdown must be >= 1, got {self.tier_slowdown}")
        if self.serve_tier and self.tier_token is None and not is_loopback(self.host):
            raise ValueError(
                f"--serve-tier on --host {self.host} would let anyone who can reach it run "
                "the model: set a tier token with ECOSERVE_TIER_TOKEN=<secret> (or "
                "--tier-token, or tier_token in the --config file), and give the sending "
                "tier the same one; or bind to 127.0.0.1"
            )

    @property
    def served_identity(self) -> str:
        """What the tuner state was measured for: the ``--model`` spec, or the repository."""
        if self.model_repository is not None:
            return f"repository:{Path(self.model_repository).resolve()}"
        return self.model

    @property
    def served_name(self) -> str:
        """The model's short name in responses and Open Inference Protocol paths."""
        if self.model_name:
            return self.model_name
        tail = self.model.rsplit(":", 1)[-1]
        return Path(tail).stem if tail.endswith((".pt", ".ts", ".onnx")) else tail

    def public_dict(self) -> dict[str, Any]:
        """All settings, the admin token masked (for status pages and logs)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for secret in ("admin_token", "tier_token"):
            if out[secret]:
                out[secret] = "***"
        if out["input_shape"] is not None:
            out["input_shape"] = list(out["input_shape"])
        return out


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(ServeSettings)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_text(name: str, text: str) -> Any:
    """Convert a flag or environment string to the field's type (ValueError says which)."""
    tp, optional = _unwrap_optional(_field_types()[name])
    if optional and text.strip().lower() in ("", "none", "null"):
        return None
    try:
        if tp is bool:
            return _parse_bool(text)
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if typing.get_origin(tp) is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
        if typing.get_origin(tp) is tuple:
            parts = text.replace("x", ",").split(",")
            return tuple(int(p) for p in parts if p.strip())
        return text
    except ValueError as exc:
        raise ValueError(f"{name}: cannot read {text!r}: {exc}") from None


def coerce_value(name: str, value: Any) -> Any:
    """Check and convert a value taken from TOML (already typed) to the field's type."""
    if isinstance(value, str):
        return parse_text(name, value)
    tp, optional = _unwrap_optional(_field_types()[name])
    ok: bool
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typing.get_origin(tp) is dict:
        ok = isinstance(value, dict)
    elif typing.get_origin(tp) is tuple:
        ok = isinstance(value, list) and all(isinstance(v, int) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = False
    if not ok:
        raise ValueError(f"{name}: {value!r} is not a valid {tp.__name__}")
    return value


def field_names() -> list[str]:
    return [f.name for f in fields(ServeSettings)]


def read_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file: top-level keys (or a ``[serve]`` table) named like fields."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
    if isinstance(data.get("serve"), dict):
        data = {**{k: v for k, v in data.items() if k != "serve"}, **data["serve"]}
    data = upgrade_keys(
        {k.replace("-", "_"): v for k, v in data.items()}, RENAMED, f"config file {path}"
    )
    known = set(field_names())
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key
        if name not in known:
            raise ValueError(f"config file {path}: unknown setting {key!r}")
        out[name] = coerce_value(name, value)
    return out


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from ``ECOSERVE_<NAME>`` variables (old names warn, the new name wins)."""
    out: dict[str, Any] = {}
    for old, new in RENAMED.items():
        old_key, new_key = ENV_PREFIX + old.upper(), ENV_PREFIX + new.upper()
        if old_key in environ:
            warn("ecoserve", old_key, new_key)
            if new_key not in environ:
                out[new] = parse_text(new, environ[old_key])
    for name in field_names():
        key = ENV_PREFIX + name.upper()
        if key in environ:
            out[name] = parse_text(name, environ[key])
    return out


def load_settings(
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServeSettings:
    """Merge defaults < TOML (``--config`` or ECOSERVE_CONFIG) < environment < flags."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else (args or {}))
    given = upgrade_keys(given, RENAMED, "ecoserve")
    env = os.environ if environ is None else environ
    config_path = given.pop("config", None) or env.get(ENV_PREFIX + "CONFIG")
    known = set(field_names())
    merged: dict[str, Any] = {}
    if config_path:
        merged.update(read_toml(config_path))
    merged.update(read_env(env))
    merged.update({k: v for k, v in given.items() if k in known})
    return ServeSettings(**merged)  # the tuner default follows the merged role
