"""Settings: one name per setting across flags, environment and TOML, with precedence."""

from __future__ import annotations

import dataclasses

import pytest

from ecoserve.cli import build_parser
from ecoserve.core.assembly import EngineSettings
from ecoserve.server.options import FIELDS
from ecoserve.server.settings import ServeSettings, load_settings


def _parse(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_every_setting_is_a_flag_and_documented():
    names = [f.name for f in dataclasses.fields(ServeSettings)]
    assert list(FIELDS) == names
    assert set(EngineSettings.field_names()) <= set(names)
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # noqa: SLF001
    text = serve.format_help()
    for name in names:
        assert "--" + name.replace("_", "-") in text
        assert "ECOSERVE_" + name.upper() in text


def test_defaults_are_the_documented_ones():
    s = load_settings(_parse(), environ={})
    assert (s.model, s.device, s.tuner, s.host, s.port) == (
        "builtin:cnn",
        "virtual:xavier-nx",
        "ecogd",
        "127.0.0.1",
        8000,
    )


def test_precedence_cli_over_env_over_toml_over_defaults(tmp_path):
    toml = tmp_path / "ecoserve.toml"
    toml.write_text(
        'max_queue = 10\nport = 9000\ntuner = "grid"\nwindow_seconds = 5\n'
        "input_shape = [3, 8, 8]\nbaseline_at_start = false\n[tuner_params]\nstride = 2\n"
    )
    env = {"ECOSERVE_PORT": "9001", "ECOSERVE_TUNER": "linear", "ECOSERVE_WINDOW_REQUESTS": "none"}
    s = load_settings(_parse("--config", str(toml), "--port", "9002"), environ=env)
    assert s.port == 9002  # flag
    assert s.tuner == "linear" and s.window_requests is None  # environment
    assert s.max_queue == 10 and s.window_seconds == 5.0  # file
    assert s.input_shape == (3, 8, 8) and s.baseline_at_start is False
    assert s.tuner_params == {"stride": 2}
    assert s.alpha == 0.5  # default
    s = load_settings(_parse(), environ={"ECOSERVE_CONFIG": str(toml)})
    assert s.port == 9000


def test_flag_forms():
    s = load_settings(
        _parse("--input-shape", "3x32x32", "--no-baseline-at-start", "--tuner-params", '{"a": 1}'),
        environ={"ECOSERVE_REQUEST_TIMEOUT_S": "none"},
    )
    assert s.input_shape == (3, 32, 32) and not s.baseline_at_start and s.tuner_params == {"a": 1}
    assert s.request_timeout_s is None
    with pytest.raises(SystemExit):
        _parse("--max-queue", "many")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("max_qeue = 3\n", "unknown setting 'max_qeue'"),
        ('max_queue = "x"\n', "max_queue"),
        ("max_queue = 1.5\n", "max_queue"),
        ("port = [\n", "not valid TOML"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_settings({"config": str(path)}, environ={})


def test_bad_environment_names_the_variable():
    with pytest.raises(ValueError, match="port"):
        load_settings({}, environ={"ECOSERVE_PORT": "eighty"})


def test_served_name_and_masked_token():
    s = ServeSettings(model="torchscript:/models/resnet.pt", admin_token="secret")
    assert s.served_name == "resnet"
    assert s.public_dict()["admin_token"] == "***"
    assert ServeSettings(model="builtin:cnn").served_name == "cnn"


def test_a_split_tier_defaults_to_a_tuner_that_moves_the_split() -> None:
    from ecoserve.server.settings import ServeSettings, load_settings

    edge = "http://127.0.0.1:8001"
    assert load_settings({"next_tier": edge}, environ={}).tuner == "neurosurgeon"
    assert load_settings({}, environ={}).tuner == "ecogd"
    cascade = {"next_tier": edge, "tier_mode": "cascade"}
    assert load_settings(cascade, environ={}).tuner == "ecogd"
    chosen = load_settings({"next_tier": edge}, environ={"ECOSERVE_TUNER": "grid"})
    assert chosen.tuner == "grid"  # a tuner asked for is kept
    assert ServeSettings(next_tier=edge).tuner == "neurosurgeon"
