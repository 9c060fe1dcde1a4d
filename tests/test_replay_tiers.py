"""`ecoserve replay --tiers`: split points and thresholds compared under a changing link."""

from ecoserve.cli import main


def test_replay_tiers_follows_the_link(capsys):
    code = main(
        [
            "replay",
            "--tiers",
            "--trace",
            "poisson:20",
            "--duration",
            "40s",
            "--link",
            "20mbit@0s,0.2mbit@20s",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    online = next(line for line in out.splitlines() if line.startswith("| split online"))
    # forwards the input while the link is fast, keeps every stage here once it is slow
    assert "| 0 / 7 |" in online
    assert "| cascade online" in out


def test_replay_tiers_refuses_a_bad_link(capsys):
    assert main(["replay", "--tiers", "--link", "10mbps"]) == 2
    assert "replay --tiers" in capsys.readouterr().err
