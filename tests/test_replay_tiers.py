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
            "20mbit@0s,0.01mbit@20s",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    planned = next(line for line in out.splitlines() if line.startswith("| split neurosurgeon"))
    # forwards the input while the link is fast, keeps every stage here once it crawls
    assert "| 0 / 7 |" in planned
    for row in ("| split k=0 ", "| split ecogd ", "| cascade chooser ", "| cascade ecogd "):
        assert row in out


def test_replay_tiers_refuses_a_bad_link(capsys):
    assert main(["replay", "--tiers", "--link", "10mbps"]) == 2
    assert "replay --tiers" in capsys.readouterr().err
