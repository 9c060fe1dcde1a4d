"""The README's first snippets work as written, and it names no package host."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _decorator_snippet() -> str:
    section = README.read_text().split("1. **Decorator**", 1)[1]
    block = section.split("```python", 1)[1].split("```", 1)[0]
    return "\n".join(line.removeprefix("   ") for line in block.splitlines())


def test_the_decorator_snippet_runs_as_written() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _decorator_snippet()], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in {str(i) for i in range(10)}


def test_the_readme_names_no_package_index_host() -> None:
    text = README.read_text().lower()
    for host in ("pypi.org", "download.pytorch.org", "pythonhosted", "--index-url"):
        assert host not in text, host
    assert not re.search(r"https?://[^\s)]*(pypi|whl|simple)", text)
