"""The HTTP face of ecoserve: a FastAPI app over the real-time runtime, served by uvicorn.

Everything it does to the engine goes through ``ecoserve.runtime.Runtime``'s methods; it
never drives the controller or the device itself. May import the runtime, the core's types,
``devices`` (the exit guard), ``tuners`` (the registry for ``/v1/config``) and the models.

Names are imported on first use so that building the ``ecoserve`` command line (which
reads ``options``) does not load torch or FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app", "load_settings"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ecoserve.server.app import create_app

        return create_app
    if name in ("ServeSettings", "load_settings"):
        from ecoserve.server import settings

        return getattr(settings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
