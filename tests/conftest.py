"""Every test, and every daemon a test starts, keeps its clocks' restore record in a temporary
folder, never in the machine's own ``/var/lib/ecoserve``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def state_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    folder = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("STATE_DIRECTORY", str(folder))
    return folder
