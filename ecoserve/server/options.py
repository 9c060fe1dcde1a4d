"""The command-line flags of ``ecoserve serve``, declared without importing the engine.

``ecoserve`` builds every sub-command's parser on each run, so this module must stay cheap:
it names the fields and their help, and converts values and shows defaults only when the
serve command actually parses or prints help (via ``settings``). A test keeps ``FIELDS``
equal to the fields of ``ServeSettings``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ecoserve.server.deprecated import add_alias

ENV_PREFIX = "ECOSERVE_"

#: Old setting name -> new one; the old flag, environment variable and TOML key still work
#: for one release, with a deprecation line. Holds ``core.assembly.RENAMED_SETTINGS`` too.
RENAMED: Mapping[str, str] = MappingProxyType(
    {"state_dir": "restore_dir", "warmup_at_start": "baseline_at_start"}
)

#: Every setting, in ``--help`` order, with its help text.
FIELDS: dict[str, str] = {
    # the engine (EngineSettings)
    "device": "device spec: virtual:BOARD, virtual:analytic[:BOARD], sysfs or none",
    "sysfs_root": "root under which sysfs paths are read (tests point it at a fake tree)",
    "restore_dir": "folder of the clocks' restore record (default $STATE_DIRECTORY, /var/lib/ecoserve or ~/.local/state/ecoserve)",
    "meter": "power meter: auto, or a meter name (see `ecoserve devices`)",
    "tuner": "tuner name: ecogd, grid, linear, dvfs, bayes, mab, mab-joint, fixed, random; "
    "with --next-tier also neurosurgeon (split) or cascade (threshold); a split tier "
    "(--next-tier, --tier-mode split) defaults to neurosurgeon",
    "tuner_params": "tuner parameters as a JSON object, e.g. '{\"memory_limit\": 20}'",
    "seed": "random seed of the tuner",
    "min_batch": "smallest batch size the tuner may choose",
    "max_batch": "largest batch size the tuner may choose",
    "max_wait_s": "longest time the oldest queued request waits for its batch to fill",
    "batch_timer": "fixed (wait up to --max-wait-s) or fill (twice the batch's fill time at the measured arrival rate, at most --max-wait-s)",
    "max_queue": "bound of the request queue; beyond it requests get 503 with Retry-After",
    "window_requests": "completions per tuning window ('none' for time windows only)",
    "warmup_requests": "completions dropped after each configuration change",
    "window_seconds": "a window also closes after this many seconds ('none' to disable)",
    "alpha": "weight of energy in the cost (1 - alpha weighs latency)",
    "accounting": "energy accounting: active (while batches run) or total (idle included)",
    "baseline_path": "JSON file with the baseline (E0, L0): loaded if present, else written",
    "slo_latency_s": "latency bound for SLO mode (minimise energy under it)",
    "slo_percentile": "latency percentile the SLO bound applies to",
    "error_weight": "weight of the estimated error rate in the cost (a cascade's threshold)",
    # the daemon (ServeSettings)
    "model": "model spec: builtin:NAME, torchscript:PATH, FILE.pt, onnx:PATH, FILE.onnx or package.module:callable",
    "model_name": "name the model is served under (default: derived from --model)",
    "input_shape": "shape of one input item, e.g. 3,32,32 (default: the model's own)",
    "preprocess": "entry point package.module:callable mapping one decoded input to an item",
    "postprocess": "entry point package.module:callable mapping one item's output",
    "onnx_providers": "ONNX Runtime execution providers in priority order, e.g. CUDAExecutionProvider,CPUExecutionProvider (default: CPU only; needs ecoserve[onnx])",
    "model_repository": "folder of models in Triton's layout (<model>/config.pbtxt, <model>/<version>/model.pt or model.onnx): serve them all on this board, one queue and batch size each, the clocks tuned for all (instead of --model)",
    "tenants": "TOML file of tenants (token, models, share, rate_limit): each sees and calls only its own models, and a saturated board is shared by weight (needs --model-repository)",
    "memory_budget": "memory the repository's models may hold, e.g. 3GiB (default: the board's memory less a reserve); past it the least recently used are unloaded and loaded back when called",
    "background": "a background job for the idle time between batches: builtin:digits-finetune, builtin:batch-infer or package.module:factory (its checkpoints in <restore dir>/background/<job>/)",
    "background_checkpoint_every": "background steps between checkpoints (one is also written at stop)",
    "background_max_delay_s": "longest a background step may hold up a serving batch (steps are sized to it)",
    "host": "address to bind (loopback by default; 0.0.0.0 exposes the daemon)",
    "port": "TCP port to bind (0 picks a free one and prints it)",
    "grpc_port": "also serve the Open Inference Protocol over gRPC on this port (0 picks one; needs ecoserve[grpc]; off by default)",
    "allowed_hosts": "Host header names answered, comma list or * (default: loopback names when bound to loopback, any otherwise)",
    "admin_token": "bearer token enabling POST /v1/config (prefer ECOSERVE_ADMIN_TOKEN)",
    "state_file": "JSON file where tuner state is saved each window and at exit, and resumed",
    "request_timeout_s": "per-request deadline; past it the client gets 504 ('none' to disable)",
    "max_body_bytes": "largest request body accepted; bigger ones get 413",
    "max_connections": "open connections at most; past it the one idle longest is closed (or, all busy, the new one refused)",
    "idle_timeout_s": "a connection with no request running is closed after this many seconds",
    "baseline_at_start": "send synthetic example items at start to measure the baseline",
    "drain_timeout_s": "longest time a SIGTERM/SIGINT drain waits for accepted requests",
    "retry_after_s": "Retry-After seconds sent with 503 responses",
    "access_log": "log every HTTP request (uvicorn access log)",
    "torch_threads": "torch intra-op threads (default torch's; 1 leaves a core to the server)",
    "watchdog_s": "hand the clocks back to the governors if the engine stalls this long ('none' to disable)",
    # tiers (ecoserve.server.tier_bridge)
    "next_tier": "URL of the next tier's daemon (e.g. http://edge:8000); requests are split or cascaded to it",
    "tier_mode": "with --next-tier: split (cut a sequential model) or cascade (small model here, big one there)",
    "link_emulation": "emulated link to the next tier, e.g. 10mbit or 10mbit@0s,1mbit@60s (tests and demos)",
    "link_rtt_s": "round trip added to every emulated exchange, in seconds",
    "cascade_threshold": "cascade: answer here when the top softmax probability reaches this ('none': chosen online)",
    "serve_tier": "serve /v1/tier/* so other daemons can use this one as their next tier (sequential models; off unless asked)",
    "tier_token": "bearer token /v1/tier/* require, and --next-tier requests send (prefer ECOSERVE_TIER_TOKEN; needed with --serve-tier beyond loopback)",
    "tier_slowdown": "emulate a slower device: this tier's own stages sleep to take this many times longer",
}

BOOL_FIELDS = frozenset({"baseline_at_start", "access_log", "serve_tier"})


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends each setting's default and environment variable, read only when help prints."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        name = action.dest
        if name in FIELDS:
            from ecoserve.server.settings import ServeSettings

            default = getattr(ServeSettings(), name)
            if isinstance(default, dict):
                import json

                default = json.dumps(default)
            shown = str(default).replace("%", "%%")
            text = f"{text} (default: {shown}; env {ENV_PREFIX}{name.upper()})"
        return text


def _converter(name: str) -> Any:
    def convert(text: str) -> Any:
        from ecoserve.server.settings import parse_text

        try:
            return parse_text(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def formatter_class() -> type[argparse.HelpFormatter]:
    return _DefaultsFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting plus ``--config``; flags not given stay absent from the result."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML file with any of these settings, same names (env ECOSERVE_CONFIG)",
    )
    for name, help_text in FIELDS.items():
        flag = _flag(name)
        if name in BOOL_FIELDS:
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag,
                dest=name,
                metavar=name.upper(),
                default=argparse.SUPPRESS,
                type=_converter(name),
                help=help_text,
            )
    for old, new in RENAMED.items():
        add_alias(parser, _flag(old), _flag(new))
        if new in BOOL_FIELDS:
            add_alias(parser, _flag(old, "--no-"), _flag(new, "--no-"))


def _flag(name: str, prefix: str = "--") -> str:
    return prefix + name.replace("_", "-")
