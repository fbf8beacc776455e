"""The command line, driven as a user would."""

import json

import pytest

from proxdecode.cli import main


def test_generate_json(real, capsys):
    main(["generate", "I like to eat", "--reward", "ends-with:.", "--reward", "keywords:apple,orange=2",
          "--steer", "2", "-n", "3", "--max-new-tokens", "12", "--seed", "0", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["completions"]) == 3
    for c in doc["completions"]:
        assert len(c["tokens"]) == len(c["rewards"]) == len(c["pieces"]) > 0
        assert c["return"] == pytest.approx(sum(c["rewards"]), abs=1e-5)  # gamma = 1
        assert set(c["components"]) == {"ends_with", "keywords"}
        assert sum(c["components"]["ends_with"]) == (0.0 if c["text"].endswith(".") else -1.0)


def test_generate_coloured(real, capsys):
    main(["generate", "Today is a", "--reward", "ends-with:.", "--max-new-tokens", "6", "--seed", "1"])
    out = capsys.readouterr().out
    assert "Today is a" in out and "return" in out


def test_unknown_reward_lists_the_known_ones(real):
    with pytest.raises(SystemExit, match="known: capitalization, ends-with, fluency, human, keywords, kl, length"):
        main(["generate", "x", "--reward", "sentimentality", "--max-new-tokens", "2"])
    with pytest.raises(SystemExit, match="steer"):  # --steer without a reward is not ignored
        main(["generate", "x", "--steer", "2", "--max-new-tokens", "2"])
    with pytest.raises(SystemExit, match="top_p"):
        main(["generate", "x", "--top-p", "2", "--max-new-tokens", "2"])


def test_demo_shows_both_columns(real, capsys):
    main(["demo", "-n", "1", "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    assert "steer = 0" in out and "steer = 2" in out and "I like to eat" in out and "Today is a" in out


def test_engine_flags_reach_generate(real, capsys, packed_calls):
    """--linear onednn runs the packed forward (same greedy tokens here as the torch path's);
    --compile with it is refused by name, as pd.generate refuses it."""
    args = ["generate", "I like to eat", "--greedy", "--max-new-tokens", "8", "--json"]
    main(args)
    want = json.loads(capsys.readouterr().out)["completions"][0]["tokens"]
    assert not packed_calls
    main(args + ["--linear", "onednn"])
    assert json.loads(capsys.readouterr().out)["completions"][0]["tokens"] == want
    assert sum(packed_calls.values()) > 0, "--linear onednn did not reach the model's forward"
    with pytest.raises(SystemExit, match="onednn"):
        main(args + ["--linear", "onednn", "--compile"])
