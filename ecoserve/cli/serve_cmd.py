"""``ecoserve serve``: the HTTP inference daemon.

Every setting is a flag here, an ``ECOSERVE_<NAME>`` environment variable, and a key of
the TOML file given with ``--config`` (command line > environment > file > defaults).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

log = logging.getLogger("ecoserve.serve")


def add_parser(subparsers: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    from ecoserve.server.options import add_arguments, formatter_class

    parser = subparsers.add_parser(
        name,
        help=help_text,
        formatter_class=formatter_class(),
        description=(
            "Serve a model over HTTP while tuning CPU frequency, GPU frequency and batch size. "
            "Each option can also be set as ECOSERVE_<OPTION> (upper-case, underscores) or in "
            "the TOML file given with --config; the command line wins, then the environment, "
            "then the file."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecoserve.server.settings import load_settings

    try:
        settings = load_settings(args)
    except (ValueError, TypeError) as exc:
        print(f"ecoserve serve: {exc}", file=sys.stderr)
        return 2

    from devices.base import DeviceError
    from ecoserve.models.loader import load_model
    from ecoserve.runtime.device_spec import open_device
    from ecoserve.server.app import create_app
    from ecoserve.server.lifecycle import serve

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        model = load_model(
            settings.model,
            settings.input_shape,
            settings.preprocess,
            settings.postprocess,
            settings.onnx_providers,
        )
        device = open_device(
            settings.device, settings.sysfs_root, settings.meter, settings.restore_dir
        )
    except (ValueError, OSError, DeviceError) as exc:
        print(f"ecoserve serve: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            app = create_app(settings, model=model, device=device)
        except ValueError as exc:
            print(f"ecoserve serve: {exc}", file=sys.stderr)
            return 2
        return serve(app, settings)
    finally:
        device.close()  # idempotent: the lifespan normally restored it already
