"""The OpenAPI document against the daemon it describes, checked by schemathesis.

A bounded, seeded run (10 examples per operation, one worker) of every check except
``positive_data_acceptance``: a JSON schema cannot say that a tensor's ``data`` must hold
``prod(shape)`` values or that a ``.npy`` body must hold the model's item shape, so
schema-valid bodies the server rightly refuses (400/422) would count as failures there.
Status codes, content types, headers and response bodies must all match the document.
Run a longer one with ``ECOSERVE_SCHEMATHESIS_EXAMPLES=200``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_server_fixtures import FAST, daemon

EXAMPLES = os.environ.get("ECOSERVE_SCHEMATHESIS_EXAMPLES", "10")


def schemathesis_command() -> str:
    beside = Path(sys.executable).with_name("schemathesis")
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    assert found, "schemathesis is not installed: pip install -e '.[test]'"
    return found


@pytest.fixture(scope="module")
def served():
    with daemon("--model", "builtin:cnn", "--admin-token", "conformance", *FAST) as d:
        yield d


def test_document_is_resolvable_and_has_accepted_examples(served) -> None:
    d = served
    document = httpx.get(d.url + "/openapi.json").json()
    text = httpx.get(d.url + "/openapi.json").text
    assert "#/$defs/" not in text, "a reference that OpenAPI cannot resolve"
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    example = infer["requestBody"]["content"]["application/json"]["example"]
    assert set(infer["responses"]) >= {"200", "400", "404", "413", "500", "503", "504"}
    r = httpx.post(d.url + "/v2/models/cnn/infer", json=example, timeout=30)
    assert r.status_code == 200, r.text
    assert "422" not in infer["responses"], "/v2 answers bad input with 400"
    status = document["paths"]["/v1/status"]["get"]["responses"]["422"]
    assert status["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_schemathesis_finds_no_failures(served, tmp_path) -> None:
    run = subprocess.run(
        [schemathesis_command(), "run", served.url + "/openapi.json",
         "--max-examples", EXAMPLES, "--workers", "1", "--seed", "7",
         "--generation-database", "none", "--no-color",
         "--header", "Authorization: Bearer conformance",
         "--exclude-checks", "positive_data_acceptance"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
