"""The HTTP face of ecoserve: a FastAPI app over the engine, served by uvicorn.

Names are imported on first use so that building the ``ecoserve`` command line (which
reads ``options``) does not load torch or FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app", "load_settings"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("ServeSettings", "load_settings"):
        from . import settings

        return getattr(settings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
