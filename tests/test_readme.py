"""The README's Usage section, run as a newcomer would paste it: its Python blocks in order
in one namespace, on the default model, and its claims checked against their oracles
(TextBlob for the Sentiment example, the registry for the TOML example)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _usage_section() -> str:
    text = README.read_text()
    start = text.index("## Usage")
    return text[start:text.index("\n## ", start + 1)]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", _usage_section(), flags=re.S | re.M)


def test_usage_python_blocks_run_and_say_true(real, monkeypatch):
    from textblob import TextBlob

    import proxdecode as pd

    monkeypatch.setattr(pd, "load_model", lambda *a, **k: real)  # the session's copy, loaded once
    blocks = _blocks("python")
    assert len(blocks) == 4, "the Usage section's Python blocks changed: update this test"
    ns: dict = {}
    after = []  # the namespace after each block (later blocks reuse names: out, rewards)
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md Usage block {i + 1}", "exec"), ns)  # noqa: S102 - the README's own code
        after.append(dict(ns))

    tok, first = ns["tok"], after[0]
    # block 1: a LongTensor as HF's; the Rollout's fields as its comments say
    seqs, out, enc = first["seqs"], first["out"], first["enc"]
    B, P = enc["input_ids"].shape
    assert seqs.dtype == torch.long and seqs.shape[0] == B and seqs.shape[1] <= P + 32
    T = out.sequences.shape[1] - P  # 32, or fewer when every row stopped early, as in HF
    assert 0 < T <= 32 and out.tokens.shape == out.mask.shape == out.rewards.shape == out.returns.shape == (B, T)
    assert set(out.reward_components) == {"ends_with", "keywords", "fluency"}
    torch.testing.assert_close(sum(out.reward_components.values()), out.rewards)
    torch.testing.assert_close(out.returns, pd.returns.discounted_returns(out.rewards, out.mask, 0.99))
    assert torch.equal(out.sequences[:, P:][out.mask], out.tokens[out.mask])
    assert first["adv"].shape == first["ret"].shape == (B, T)
    group = first["group"]
    assert group.sequences.shape[0] == 4
    advantages = pd.returns.group_advantages(group.rewards.sum(1), group_size=4)
    assert advantages.shape == (4,) and abs(advantages.sum().item()) < 1e-4  # centred within the group
    # block 2: the seed's first example returns one row of at most 20 tokens, prompt included
    assert after[1]["generated"].ndim == 1 and after[1]["generated"].shape[0] <= 20
    # block 3: the summed Sentiment rewards are TextBlob's polarity of each continuation
    out = after[2]["out"]
    P = out.sequences.shape[1] - out.tokens.shape[1]
    for row, total in zip(out.sequences, out.rewards.sum(1)):
        text = tok.decode(row[P:], skip_special_tokens=True)
        assert total.item() == pytest.approx(TextBlob(text).sentiment.polarity, abs=1e-5), text
    # block 4: the caller's processor and HF's no-repeat rule hold under steering: no token with
    # a digit (the same call without the processor says some), no 3-gram twice in a row
    # (prompt included), and the Sentiment rewards still TextBlob's
    out, digits, dated = after[3]["out"], set(after[3]["NoDigits"](tok).ids), after[3]["dated"]
    assert len(digits) >= 10 and not digits & set(out.tokens[out.mask].tolist())
    free = pd.generate(ns["model"], **dated, max_new_tokens=32, do_sample=True, seed=0, rewards=after[3]["rewards"],
                       steer=2.0, no_repeat_ngram_size=3)
    assert digits & set(free.tokens[free.mask].tolist()), "without NoDigits the call must say a digit"
    rows = zip(out.sequences.tolist(), out.mask.tolist(), dated["attention_mask"].tolist(), out.rewards.sum(1))
    for row, mask, prompt, total in rows:
        ids = [t for t, m in zip(row, prompt + mask) if m]
        grams = list(zip(ids, ids[1:], ids[2:]))
        assert len(grams) == len(set(grams)), tok.decode(ids)
        text = tok.decode(ids[sum(prompt):], skip_special_tokens=True)
        assert total.item() == pytest.approx(TextBlob(text).sentiment.polarity, abs=1e-5), text


def test_usage_toml_block_is_a_valid_rewards_config(tmp_path):
    from proxdecode.rewards import registry

    [toml] = _blocks("toml")
    (tmp_path / "rewards.toml").write_text(toml)
    (tmp_path / "ratings.jsonl").write_text('{"text": "I like apples.", "rating": 5}\n'
                                            '{"text": "Bad.", "rating": 1}\n')
    kinds = [e.kind for e in registry.read_config(tmp_path / "rewards.toml")]
    assert kinds == ["sentiment", "keywords", "human"]
