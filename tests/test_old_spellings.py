"""One spelling per flag and setting; the old spellings still work for one release.

Each old spelling must do what the new one does and say so in one stderr line naming the
new spelling; the new spelling must work silently.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from ecoserve.cli import build_parser
from ecoserve.server.deprecated import add_alias, upgrade_keys
from ecoserve.server.settings import load_settings


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _deprecation_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "is deprecated" in line]


#: (command, old argv, new argv, attribute, expected value)
FLAGS: list[tuple[str, list[str], list[str], str, Any]] = [
    ("replay", ["--max-wait", "0.2"], ["--max-wait-s", "0.2"], "max_wait_s", 0.2),
    ("replay", ["--slo-p95-ms", "250"], ["--slo-latency-s", "0.25"], "slo_latency_s", 0.25),
    ("replay", ["--slo-ms", "300"], ["--slo-latency-s", "0.3"], "slo_latency_s", 0.3),
    ("replay", ["--period", "2"], ["--period-s", "2"], "period_s", 2.0),
    ("replay", ["--device", "nano"], ["--device", "virtual:nano"], "device", "nano"),
    ("serve", ["--state-dir", "/r"], ["--restore-dir", "/r"], "restore_dir", "/r"),
    ("serve", ["--no-warmup-at-start"], ["--no-baseline-at-start"], "baseline_at_start", False),
    ("serve", ["--warmup-at-start"], ["--baseline-at-start"], "baseline_at_start", True),
    ("profile", ["--warmup", "3"], ["--warmup-batches", "3"], "warmup_batches", 3),
    ("profile", ["--warmup-seconds", "1"], ["--startup-seconds", "1"], "startup_seconds", 1.0),
    ("profile", ["--state-dir", "/r"], ["--restore-dir", "/r"], "restore_dir", "/r"),
    ("restore", ["--state-dir", "/r"], ["--restore-dir", "/r"], "restore_dir", "/r"),
    ("fleet", ["--period", "2"], ["--period-s", "2"], "period_s", 2.0),
    ("fleet", ["--park-after", "5"], ["--park-after-s", "5"], "park_after_s", 5.0),
]
REQUIRED = {"profile": ["--device", "none", "--out", "x.csv"]}


@pytest.mark.parametrize(("command", "old", "new", "attr", "value"), FLAGS)
def test_old_flag_works_and_names_the_new_one(
    command: str,
    old: list[str],
    new: list[str],
    attr: str,
    value: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _parse([command, *REQUIRED.get(command, []), *new])
    assert getattr(args, attr) == pytest.approx(value)
    assert not _deprecation_lines(capsys.readouterr().err)

    args = _parse([command, *REQUIRED.get(command, []), *old])
    assert getattr(args, attr) == pytest.approx(value)
    lines = _deprecation_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ecoserve {command}: {old[0]}")
    assert new[0] in lines[0] if old[0] != "--device" else "virtual:nano" in lines[0]


def test_old_flags_stay_out_of_help() -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    for command, old, new, _, _ in FLAGS:
        text = sub[command].format_help()
        assert new[0] in text
        if old[0] != new[0]:
            assert f"{old[0]} " not in text and f"{old[0]}\n" not in text, (command, old[0])


def test_replay_seed_is_the_first_seed_and_seeds_the_count() -> None:
    args = _parse(["replay", "--seed", "5", "--seeds", "3"])
    assert (args.seed, args.seeds) == (5, 3)
    args = _parse(["replay"])
    assert (args.seed, args.seeds, args.device) == (0, 1, "xavier-nx")


def test_one_helper_converts_units_and_keeps_the_new_default() -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--limit-s", type=float, default=1.0)
    add_alias(parser, "--limit-ms", "--limit-s", lambda ms: ms / 1e3, "--limit-s (seconds)")
    assert parser.parse_args([]).limit_s == 1.0
    assert parser.parse_args(["--limit-ms", "500"]).limit_s == 0.5


def test_old_settings_keys_in_toml_and_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "ecoserve.toml"
    toml.write_text('warmup_at_start = false\nstate_dir = "/from-file"\n')
    s = load_settings({"config": str(toml)}, environ={})
    assert s.baseline_at_start is False and s.restore_dir == "/from-file"
    lines = _deprecation_lines(capsys.readouterr().err)
    assert len(lines) == 2
    assert any("warmup_at_start" in x and "baseline_at_start" in x for x in lines)
    assert any("state_dir" in x and "restore_dir" in x for x in lines)

    env = {"ECOSERVE_WARMUP_AT_START": "no", "ECOSERVE_STATE_DIR": "/from-env"}
    s = load_settings({}, environ=env)
    assert s.baseline_at_start is False and s.restore_dir == "/from-env"
    lines = _deprecation_lines(capsys.readouterr().err)
    assert len(lines) == 2 and "ECOSERVE_RESTORE_DIR" in "".join(lines)

    # both spellings given: the new one wins
    env["ECOSERVE_RESTORE_DIR"] = "/new"
    assert load_settings({}, environ=env).restore_dir == "/new"
    capsys.readouterr()

    toml.write_text('baseline_at_start = false\nrestore_dir = "/r"\n')
    s = load_settings({"config": str(toml)}, environ={"ECOSERVE_BASELINE_AT_START": "0"})
    assert s.baseline_at_start is False and s.restore_dir == "/r"
    assert not _deprecation_lines(capsys.readouterr().err)


def test_upgrade_keys_prefers_the_new_key(capsys: pytest.CaptureFixture[str]) -> None:
    out = upgrade_keys({"old": 1, "new": 2, "other": 3}, {"old": "new"}, "here")
    assert out == {"new": 2, "other": 3}
    assert capsys.readouterr().err.strip() == (
        "here: old is deprecated and goes in the next release; use new"
    )


def test_fleet_settings_take_the_old_engine_table(capsys: pytest.CaptureFixture[str]) -> None:
    from ecoserve.rayfleet.config import FleetSettings

    fleet = FleetSettings.from_args(
        {"boards": "nano:1", "engine": {"window_seconds": 5, "state_dir": "/r"}}
    )
    assert fleet.serve == {"window_seconds": 5, "restore_dir": "/r"}
    err = capsys.readouterr().err
    assert "engine is deprecated" in err and "use serve" in err and "use restore_dir" in err


def test_decorator_takes_the_old_keyword() -> None:
    import eco_edge_infer

    with pytest.warns(FutureWarning, match="restore_dir"):
        method = eco_edge_infer.inference_method(
            lambda xs: xs, device="virtual:xavier-nx", state_dir="/r"
        )
    assert method.settings.restore_dir == "/r"
