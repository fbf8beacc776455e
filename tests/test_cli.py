"""The command line, driven as a user would."""

import functools
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


def test_sampling_flags_are_hfs_arguments(real, capsys, monkeypatch):
    """--repetition-penalty, --no-repeat-ngram-size and --min-p reach generate: greedy tokens
    are HF's with the same arguments (min-p, a warper, no more changes greedy tokens than in
    HF), and differ from the run without them."""
    import proxdecode as pd

    model, tok = real
    seen, generate = [], pd.generate
    monkeypatch.setattr(pd, "generate", lambda *a, **kw: seen.append(kw) or generate(*a, **kw))
    flags = ["--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2", "--min-p", "0.05"]
    main(["generate", "I like to eat", "--greedy", "--max-new-tokens", "16", "--json"] + flags)
    got = json.loads(capsys.readouterr().out)["completions"][0]["tokens"]
    assert (seen[0]["repetition_penalty"], seen[0]["no_repeat_ngram_size"], seen[0]["min_p"]) == (1.3, 2, 0.05)
    enc = tok(["I like to eat"], return_tensors="pt")
    hf = model.generate(**enc, do_sample=False, max_new_tokens=16, repetition_penalty=1.3, no_repeat_ngram_size=2)
    plain = model.generate(**enc, do_sample=False, max_new_tokens=16)
    P = enc["input_ids"].shape[1]
    assert got == hf[0, P:].tolist() != plain[0, P:].tolist()


@pytest.mark.parametrize("args,match", [
    (["generate", "x", "-n", "0"], "-n: must be an integer >= 1"),
    (["generate", "x", "--steer", "nan"], "--steer: must be a finite number"),
    (["generate", "x", "--seed", "-1"], "--seed: must be an integer >= 0"),
    (["generate", "x", "--top-p", "2"], r"--top-p: must be a finite number in \(0, 1\]"),
    (["generate", "x", "--min-p", "-0.1"], r"--min-p: must be a finite number in \[0, 1\]"),
    (["generate", "x", "--repetition-penalty", "0"], r"--repetition-penalty: must be a finite number in \(0, inf\)"),
    (["generate", "x", "--no-repeat-ngram-size", "1.5"], "--no-repeat-ngram-size: '1.5' is not an integer"),
    (["generate", "x", "--reward", "sentiment=abc"], "weight after '=' must be a number"),
    (["generate", "x", "--reward", "sentiment:x"], "sentiment takes no arguments"),
    (["generate", "x", "--reward", "ends-with:"], r"nothing after ':' \(the form is ends-with"),
    (["generate", "x", "--reward", "length:abc"], r"cannot read 'abc' \(the form is length:MIN.*'abc' is not a whole"),
    (["generate", "x", "--reward", "repetition:x"], "'x' is not a whole number"),
    (["generate", "x", "--reward", "keywords:apple=abc"], "the weight after '=' must be a number, got 'abc'"),
    (["generate", "x", "--reward", "keywords:apple=2=3"],  # README: only a free-text argument holds an '='
     r"--reward keywords:apple=2=3: keywords's arguments 'apple=2' hold an '='; .*only a free-text argument"),
    (["generate", "x", "--reward", "topic:,,"], r"--reward topic:,,: Topic: words must be a non-empty list"),
    (["generate", "x", "--greedy", "-n", "2"], r"--greedy gives one completion per prompt, and -n is 2"),
    (["demo", "--greedy"], r"--greedy gives one completion per prompt, and -n is 3"),
    (["generate", "x", "--reward", "keywords:apple", "--reward", "keywords:orange"],
     r"--reward keywords:orange: a second reward named 'keywords' \(the first: --reward keywords:apple\); list all"),
    (["generate", "x", "--reward", "ends-with:.", "--reward", "ends-with:!"],
     r"a second reward named 'ends_with' \(the first: --reward ends-with:.\); give each its own name"),
    (["generate", "x", "--reward", "sentimental:x=abc"], "unknown reward 'sentimental'; known"),
    (["generate", "x", "--reward", "kl"], r"kl needs reference \(the form is kl:MODEL_FOLDER"),
    (["generate", "x", "--reward", "keywords:,"], "words must be a non-empty list"),
    (["generate", "x", "--reward", "repetition:0"], "n must be an int >= 1"),
    (["generate", "x", "--reward", "length:1,2,3"], "at most MIN,MAX"),
    (["generate", "x", "--reward", "fluency:/no/such/model"], "reference '/no/such/model': no such model folder"),
    (["train", "x", "--reward", "sentiment", "--lr", "0"], r"--lr: must be a finite number in \(0, 1\]"),
    (["bench", "--rewards", "--dtype", "bfloat16"], "run the default model in float32 on the CPU"),
    (["bench", "--device", "gpu"], "--device 'gpu'"),
    (["generate", "", "x"], "empty prompt"),
    (["train", " ", "--reward", "sentiment"], "empty prompt"),
    (["rate", "--prompt", ""], "empty prompt"),
    (["rate", "-n", "0"], "-n: must be an integer >= 1"),
    (["rate", "--max-new-tokens", "0"], "--max-new-tokens: must be an integer >= 1"),
    (["rate", "--temperature", "0"], r"--temperature: must be a finite number in \(0, inf\)"),
    (["rate", "--top-p", "1.5"], r"--top-p: must be a finite number in \(0, 1\]"),
    (["rate", "--top-k", "-1"], "--top-k: must be an integer >= 0"),
    (["bench", "--batch", "0"], "--batch: must be an integer >= 1"),
    (["bench", "--rewards", "--no-repeat-ngram-size", "3"], "--no-repeat-ngram-size applies to the end-to-end"),
    (["bench", "--runs", "0"], "--runs: must be an integer >= 1"),
    (["train", "x", "--reward", "sentiment", "--group-size", "0"], "--group-size: must be an integer >= 1"),
    (["train", "x"], "at least one --reward"),
])
def test_bad_input_is_refused_before_the_model_loads(monkeypatch, capsys, args, match):
    import re

    import proxdecode as pd

    def no_load(*a, **k):
        raise AssertionError("the model loaded before the input was checked")
    monkeypatch.setattr(pd, "load_model", no_load)
    with pytest.raises(SystemExit) as e:
        main(args)
    message = str(e.value) if e.value.code not in (0, 2) else capsys.readouterr().err  # argparse: exit 2
    assert re.search(match, message), message


@pytest.mark.parametrize("folder", ["missing", ""])  # "": Path("") is the current folder, not a model
def test_a_model_folder_that_does_not_exist_is_named(tmp_path, monkeypatch, folder):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=f"model '{folder}': no such folder"):
        main(["generate", "x", "--model", folder, "--max-new-tokens", "2"])


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    """A rewards.toml naming "ratings.jsonl" works from any working directory."""
    from proxdecode.rewards import registry

    (tmp_path / "ratings.jsonl").write_text('{"text": "I like apples.", "rating": 5}\n{"text": "no", "rating": 1}\n')
    (tmp_path / "rewards.toml").write_text('[[reward]]\ntype = "human"\nratings = "ratings.jsonl"\n')
    monkeypatch.chdir("/")
    [entry] = registry.read_config(tmp_path / "rewards.toml")
    assert entry.kind == "human" and entry.kwargs["ratings"] == str(tmp_path / "ratings.jsonl")
    assert registry.from_config(tmp_path / "rewards.toml")[0].ratings[0] == ("I like apples.", 5)


def test_two_families_of_one_name_in_a_config_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    import proxdecode as pd

    monkeypatch.setattr(pd, "load_model", lambda *a, **k: pytest.fail("the model loaded first"))
    (tmp_path / "r.toml").write_text('[[reward]]\ntype = "sentiment"\n\n[[reward]]\ntype = "sentiment"\n')
    with pytest.raises(SystemExit, match=r"reward #2: a second reward named 'sentiment' \(the first: .*reward #1\)"):
        main(["generate", "x", "--rewards", str(tmp_path / "r.toml")])
    (tmp_path / "r.toml").write_text('[[reward]]\ntype = "sentiment"\n\n[[reward]]\ntype = "sentiment"\n'
                                     'name = "sentiment_2"\n')
    with pytest.raises(pytest.fail.Exception, match="the model loaded first"):  # accepted: on to the model
        main(["generate", "x", "--rewards", str(tmp_path / "r.toml")])


def test_rewards_config_errors_name_the_file_and_entry_before_the_model_loads(tmp_path, monkeypatch):
    import proxdecode as pd

    monkeypatch.setattr(pd, "load_model", lambda *a, **k: pytest.fail("the model loaded first"))
    cfg = tmp_path / "r.toml"

    def refused(*prompts):
        with pytest.raises(SystemExit) as e:
            main(["generate", *prompts, "--rewards", str(cfg)])
        return str(e.value)

    assert refused("x").endswith(f"rewards config {cfg}: no such file")
    assert f"rewards config {tmp_path}: a folder, not a TOML file" in str(
        pytest.raises(SystemExit, main, ["generate", "x", "--rewards", str(tmp_path)]).value)
    cfg.write_bytes(b'[[reward]]\ntype = "sentiment"\nname = "\xff"\n')
    assert f"rewards config {cfg}: not UTF-8 text" in refused("x")
    cfg.write_text('[[reward]]\ntype = "topic"\nwords = []\n')
    assert f"rewards config {cfg}, reward #1: Topic: words must be a non-empty list" in refused("x")
    cfg.write_text('[[reward]]\ntype = "overlap"\nreferences = ["a b c", "d e f"]\n')
    assert f"rewards config {cfg}, reward #1: Overlap: references holds 2 texts for 1 prompt(s)" in refused("x")
    for text in ('[[reward]]\ntype = "overlap"\nreferences = ["a b c", "d e f"]\n',  # one per prompt
                 '\ufeff[[reward]]\ntype = "sentiment"\n'):  # UTF-8 with a BOM
        cfg.write_text(text, encoding="utf-8")
        with pytest.raises(pytest.fail.Exception, match="the model loaded first"):  # accepted: on to the model
            main(["generate", "x", "y", "--rewards", str(cfg)])


def test_a_model_free_family_is_built_once(tmp_path, monkeypatch, tiny):
    """Checking a spec builds a family that needs no model (its own checks run before any
    model loads); building it with the model then gives that same family: the ratings file
    is read once. A family that takes the model is built with it, not before."""
    from proxdecode.rewards import HumanFeedback, registry

    ratings = tmp_path / "r.jsonl"
    ratings.write_text('{"text": "I like apples.", "rating": 5}\n{"text": "no", "rating": 1}\n')
    reads, read = [], HumanFeedback.from_ratings

    @functools.wraps(read)  # the registry checks arguments against the signature
    def counted(*args, **kwargs):
        reads.append(1)
        return read(*args, **kwargs)
    monkeypatch.setattr(HumanFeedback, "from_ratings", counted)
    entry = registry.parse_spec(f"human:{ratings}")
    assert len(reads) == 1 and entry.build(tiny[0]) is entry.family is entry.build(None)
    assert len(reads) == 1
    topic = registry.parse_spec("topic:fruit")
    assert topic.family is None and type(topic.build(tiny[0])).__name__ == "Topic"


def test_train_passes_the_rollouts_sampling_options(tiny, monkeypatch):
    """--temperature/--top-k/--top-p reach pd.rl.train; left out, the model's config decides."""
    import proxdecode as pd

    seen = []
    monkeypatch.setattr(pd, "load_model", lambda *a, **k: tiny)
    monkeypatch.setattr(pd.rl, "train", lambda *a, **k: seen.append(k) or [])
    main(["train", "x", "--reward", "ends-with", "--top-k", "5", "--temperature", "0.7"])
    main(["train", "x", "--reward", "ends-with"])
    assert (seen[0]["top_k"], seen[0]["temperature"]) == (5, 0.7) and "top_p" not in seen[0]
    assert not {"top_k", "temperature", "top_p"} & set(seen[1])
