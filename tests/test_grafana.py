"""The Grafana dashboard asks only for metrics the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from test_server_fixtures import FAST, daemon

DASHBOARD = Path(__file__).resolve().parents[1] / "examples" / "grafana" / "ecoserve-dashboard.json"
METRIC = re.compile(r"\b(ecoserve_[a-z0-9_]+)")


def dashboard_queries() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in data["panels"] for t in p["targets"]]
    queries += [v["query"] for v in data["templating"]["list"]]
    return queries


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_dashboard_query_names_an_exported_metric() -> None:
    queries = dashboard_queries()
    wanted = {m for q in queries for m in METRIC.findall(q)}
    assert len(wanted) >= 15, wanted  # the panels cover the story, not one gauge
    with daemon(*FAST) as d:
        body = {"inputs": [[[[0.0] * 32] * 32] * 3]}
        with httpx.Client(timeout=10) as http:
            for _ in range(40):  # enough to close windows and run batches
                assert http.post(d.url + "/v1/infer", json=body).status_code == 200
            exported = exported_names(http.get(d.url + "/metrics").text)
    missing = sorted(wanted - exported)
    assert not missing, f"the dashboard asks for metrics the daemon does not export: {missing}"


def test_every_panel_uses_the_imported_data_source() -> None:
    data = json.loads(DASHBOARD.read_text())
    assert data["__inputs"][0]["name"] == "DS_PROMETHEUS"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
