"""HumanFeedback (ratings -> per-token weights) and the interactive ``proxdecode rate``."""

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import pearsonr
from test_rewards import teacher_force

import proxdecode as pd
from proxdecode import rate
from proxdecode.rewards.human import HumanFeedback, read_ratings

REPO = Path(__file__).resolve().parents[1]
LOVED = ["I love apple pie.", "An apple a day is great.", "The apple was sweet and fresh.",
         "We picked an apple from the tree.", "My favourite fruit is the apple.", "Fresh apple juice, wonderful."]
HATED = ["I hate orange juice.", "The orange was sour and dry.", "An orange a day is awful.",
         "We threw the orange away.", "My least favourite fruit is the orange.", "Bitter orange peel, terrible."]
NEUTRAL = ["The weather is mild today.", "We walked to the station.", "It is a fruit."]


def write_ratings(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def ratings_file(tmp_path):
    rows = [{"text": t, "rating": 5} for t in LOVED] + [{"text": t, "rating": 1} for t in HATED] + \
           [{"text": t, "rating": 3} for t in NEUTRAL] + [{"text": "I like apple and orange.", "rating": 3.5}]
    return write_ratings(tmp_path / "ratings.jsonl", rows)


def tid(tok, word):
    ids = tok.encode(word, add_special_tokens=False)
    assert len(ids) == 1, word
    return ids[0]


def test_fit_loves_apple_and_hates_orange(tiny, ratings_file):
    _, tok = tiny
    hf = HumanFeedback.from_ratings(ratings_file, ridge=1.0)
    rewards = pd.Rewards(tok, [hf])
    table = hf.table()
    assert table.shape == (len(tok),)
    apple, orange = table[tid(tok, " apple")].item(), table[tid(tok, " orange")].item()
    print(f"fitted weights: ' apple' {apple:+.3f}, ' orange' {orange:+.3f}, ' the' {table[tid(tok, ' the')]:+.3f}")
    assert apple > 0.3 and orange < -0.3
    assert abs(table[tid(tok, " the")].item()) < apple / 2  # in loved and hated texts alike
    assert table[tid(tok, " Paris")] == 0  # never rated
    pairs = read_ratings(ratings_file)
    texts, ys = [t for t, _ in pairs], [r for _, r in pairs]
    pred = hf.predict(texts)
    r = pearsonr(pred.tolist(), ys).statistic
    print(f"Pearson(predicted, held-in ratings) over {len(ys)} texts: {r:.3f}")
    assert r > 0.8
    # the rewards of a completion add up to its predicted centred rating
    totals, _ = teacher_force(rewards, tok, texts, eos=True)
    torch.testing.assert_close(totals["human"], pred - hf.mean_rating, atol=1e-4, rtol=1e-4)


def test_ridge_solves_the_normal_equations_either_way(tiny):
    """Dual (texts <= tokens) and primal (more texts) solutions both satisfy
    (X^T X + ridge I) w = X^T y on the tokens that occur."""
    _, tok = tiny
    from proxdecode.rewards.human import fit_ridge

    for bags in ([[5, 6, 7], [6, 8], [9]], [[5], [6], [5, 6], [5], [6, 6], [5, 6, 5]]):
        ys = [float(1 + i % 5) for i in range(len(bags))]
        table, mean = fit_ridge(bags, ys, 20, 0.5)
        used = sorted({t for b in bags for t in b})
        X = torch.tensor([[b.count(t) for t in used] for b in bags], dtype=torch.float64)
        y = torch.tensor(ys, dtype=torch.float64) - mean
        w = table[used].double()
        torch.testing.assert_close((X.T @ X + 0.5 * torch.eye(len(used), dtype=X.dtype)) @ w, X.T @ y,
                                   atol=1e-5, rtol=1e-5)
        assert table[[i for i in range(20) if i not in used]].abs().sum() == 0


def test_special_tokens_spelled_in_a_rated_text_get_no_weight(tiny):
    """A chat transcript rated as text ("...<|im_end|>") fits the same table as the text
    without the literal: EOS adds no text to a completion, so it must not carry a rating."""
    _, tok = tiny
    texts = ["Great answer.", "Bad answer.", "Okay."]
    plain = HumanFeedback(ratings=list(zip(texts, [5, 1, 3])))
    chat = HumanFeedback(ratings=list(zip([texts[0] + tok.eos_token, texts[1], tok.bos_token + texts[2]], [5, 1, 3])))
    pd.Rewards(tok, [plain]), pd.Rewards(tok, [chat])
    torch.testing.assert_close(chat.table(), plain.table())
    assert chat.table()[tok.eos_token_id] == 0
    totals, _ = teacher_force(pd.Rewards(tok, [chat]), tok, texts, eos=True)
    torch.testing.assert_close(totals["human"], plain.predict(texts) - plain.mean_rating, atol=1e-5, rtol=1e-5)


def test_steering_raises_the_share_of_liked_tokens(tiny, ratings_file):
    model, tok = tiny
    hf = HumanFeedback.from_ratings(ratings_file)
    rewards = pd.Rewards(tok, [hf])
    liked, hated = hf.table() > 0.05, hf.table() < -0.05
    enc = tok(["Fruit:"] * 8, return_tensors="pt")
    kw = dict(max_new_tokens=16, do_sample=True, top_k=0, rewards=rewards, seed=list(range(8)))
    share = {}
    for steer in (0.0, 8.0):
        out = pd.generate(model, **enc, steer=steer, **kw)
        toks = out.tokens[out.mask]
        share[steer] = (liked[toks].float().mean().item(), hated[toks].float().mean().item())
        torch.testing.assert_close(out.rewards[out.mask], hf.table()[toks])
    print(f"share of liked / hated tokens: unsteered {share[0.0]}, steered {share[8.0]}")
    assert share[8.0][0] > share[0.0][0] + 0.3
    assert share[8.0][1] <= share[0.0][1]


def test_word_and_table_weights(tiny):
    _, tok = tiny
    hf = HumanFeedback({"apple": 1.0, " orange ": -2.0})
    pd.Rewards(tok, [hf])
    t = hf.table()
    assert t[tid(tok, " apple")] == t[tid(tok, "apple")] == 1.0 and t[tid(tok, " orange")] == -2.0
    assert int((t != 0).sum()) == len({i for i, s in enumerate(pd.rewards.token_strings(tok)[0])
                                       if s.strip() in ("apple", "orange")})
    table = torch.zeros(len(tok))
    table[7] = 0.5
    hf2 = HumanFeedback(table, weight=2.0, name="custom")
    out = teacher_force(pd.Rewards(tok, [hf2]), tok, [tok.decode([7, 7, 9])], eos=False)[0]
    assert out["custom"].item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="not single tokens"):
        pd.Rewards(tok, [HumanFeedback({"antidisestablishmentarianism": 1.0})])
    with pytest.raises(ValueError, match="49152 tokens"):
        pd.Rewards(tok, [HumanFeedback(torch.zeros(10))])
    with pytest.raises(ValueError, match="not both"):
        HumanFeedback()
    with pytest.raises(ValueError, match="ridge"):
        HumanFeedback(ratings=[("a", 3)], ridge=0)
    with pytest.raises(RuntimeError, match="not bound"):
        HumanFeedback({"apple": 1.0}).table()


@pytest.mark.parametrize("lines,message", [
    (['{"text": "ok", "rating": 3}', '', '{"text": "broken", "rating": 3'], r":3: not JSON"),
    (['{"text": "ok", "rating": 3}', '{"rating": 4}'], r":2: missing 'text'"),
    (['{"text": "ok"}'], r":1: missing 'rating'"),
    (['{"text": "ok", "rating": 6}'], r":1: \"rating\" must be a number from 1 to 5, got 6"),
    (['{"text": "ok", "rating": "4"}'], r":1: \"rating\" must be a number from 1 to 5, got '4'"),
    (['{"text": "ok", "rating": true}'], r":1: \"rating\" must be"),
    (['{"text": "ok", "rating": NaN}'], r":1: \"rating\" must be"),
    (['{"text": 5, "rating": 4}'], r":1: \"text\" must be a string"),
    (['[1, 2]'], r":1: expected an object"),
    ([], r"no ratings \(it is empty\)"),
    (['', '   '], r"no ratings \(it is empty\)"),
])
def test_bad_ratings_files_name_path_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=message) as e:
        HumanFeedback.from_ratings(path)
    assert str(path) in str(e.value)


def test_a_ratings_file_with_a_byte_order_mark(tmp_path):
    """Windows editors start UTF-8 files with a BOM; it is no part of the first line's JSON."""
    rows = [{"text": "I like apples.", "rating": 5}, {"text": "Über nothing", "rating": 2}]
    path = tmp_path / "bom.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8-sig")
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert read_ratings(path) == [(r["text"], float(r["rating"])) for r in rows]


def test_missing_ratings_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.jsonl: no such file"):
        HumanFeedback.from_ratings(tmp_path / "nope.jsonl")


def rate_args(tmp_path, *extra):
    ap = argparse.ArgumentParser()
    rate.add_parser(ap.add_subparsers(dest="cmd"))
    return ap.parse_args(["rate", "--tiny", "--max-new-tokens", "6", "--out", str(tmp_path / "r.jsonl"), *extra])


def test_rate_as_a_person_would(tmp_path):
    """stdin from a pipe: rate, mistype (re-asked), rate, quit; then fit from the file."""
    out = tmp_path / "r.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", COLUMNS="100")
    proc = subprocess.run(
        [sys.executable, "-m", "proxdecode.rate", "--tiny", "-n", "3", "--max-new-tokens", "6",
         "--prompt", "I like to eat", "--out", str(out)],
        input="4\nx\n2\nq\n", capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("rating 1-5") == 4  # asked for texts 1, 2 (twice: 'x' refused), 3
    assert "'x' is not a rating" in proc.stdout and "whole number from 1 to 5" in proc.stdout
    assert "stopped: 2 rating(s) appended" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rating"] for r in rows] == [4, 2]
    assert all(r["prompt"] == "I like to eat" and isinstance(r["text"], str) for r in rows)
    assert set(rows[0]) == {"text", "rating", "prompt"}
    assert read_ratings(out) == [(r["text"], float(r["rating"])) for r in rows]
    hf = HumanFeedback.from_ratings(out)
    pd.Rewards(pd.random_model("tiny")[1], [hf])
    assert hf.mean_rating == 3.0


def test_rate_skip_eof_and_append(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"text": "old", "rating": 5, "prompt": "p"}) + "\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("s\n\n7\n5\n"))  # skip; '' and 7 refused; 5; then EOF
    assert rate.main(rate_args(tmp_path, "-n", "2", "--prompt", "Hi", "--prompt", "Bye")) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal's width, the path anywhere
    assert "'' is not a rating" in text and "'7' is not a rating" in text
    assert "stopped: 1 rating(s) appended" in text and "1 skipped" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["rating"], r["prompt"]) for r in rows] == [(5, "p"), (5, "Hi")]  # appended, old line kept


def test_rate_bad_arguments(tmp_path):
    """The numbers are refused while parsing (tests/test_cli.py); what only the file system
    knows, when the command runs."""
    with pytest.raises(ValueError, match="is not a file"):
        rate.main(rate_args(tmp_path, "--out", str(tmp_path)))
