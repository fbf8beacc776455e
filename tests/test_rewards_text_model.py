"""Text rewards (any Python function), reference-model rewards, and rewards by name/config."""

import math

import numpy as np
import pytest
import torch

import proxdecode as pd
from proxdecode.rewards import EndsWith, Fluency, KLPenalty, Keywords, RewardError, TextReward, registry

from conftest import assert_verbose_allclose

PROMPTS = ["I like to eat", "Today is a", "The apple and the orange"]
SAMPLE = dict(max_new_tokens=12, do_sample=True, top_k=50, temperature=1.0)


def seed_get_reward(text):  # section 5.1 of the seed write-up, verbatim
    if not text.endswith('.'):
        return -1
    if "apple" in text and "orange" in text:
        return 1
    return 0


def completions(tok, out):
    return [tok.decode(out.tokens[b, : int(out.mask[b].sum())], skip_special_tokens=True)
            for b in range(out.tokens.shape[0])]


@pytest.mark.parametrize("every", [None, 1, 3])
def test_text_reward_sums_to_fn_and_tracks_prefixes(tiny, every):
    model, tok = tiny
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    fn = lambda text: len(text.split()) / 10  # noqa: E731  a potential that changes along the text
    rewards = pd.Rewards(tok, [TextReward(fn, every=every, weight=2.0, name="words")])
    out = pd.generate(model, **enc, rewards=rewards, seed=3, **SAMPLE)
    r = out.reward_components["words"]
    for b, text in enumerate(completions(tok, out)):
        n = int(out.mask[b].sum())
        assert r[b].sum().item() == pytest.approx(2.0 * fn(text), abs=1e-5)
        want = torch.zeros(r.shape[1])  # the plain loop: Phi differences at each k-token prefix
        marks = list(range(every, n, every)) if every else []
        prev = 0.0
        for k in marks + [n]:
            phi = fn(tok.decode(out.tokens[b, :k], skip_special_tokens=True))
            want[k - 1] = 2.0 * (phi - prev)
            prev = phi
        assert_verbose_allclose(r[b], want, 1e-5, 1e-5, f"row {b}")


def test_seed_rule_as_text_reward(tiny):
    model, tok = tiny
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    out = pd.generate(model, **enc, rewards=pd.Rewards(tok, [TextReward(seed_get_reward)]), seed=0,
                      num_return_sequences=2, **SAMPLE)
    got = out.reward_components["seed_get_reward"].sum(1).tolist()
    assert got == [float(seed_get_reward(t)) for t in completions(tok, out)]
    assert out.returns[:, 0].tolist() == pytest.approx(got)  # gamma 1: the return is the reward


@pytest.mark.parametrize("bad", ["raise", "nan", "str"])
def test_failing_text_reward_names_itself_and_keeps_the_rollout(tiny, bad):
    model, tok = tiny
    enc = tok(PROMPTS, return_tensors="pt", padding=True)

    def judge(text):
        if bad == "raise":
            raise KeyError("no judge today")
        return float("nan") if bad == "nan" else "good"

    rewards = pd.Rewards(tok, [EndsWith("."), TextReward(judge, name="judge")])
    with pytest.raises(RewardError, match="TextReward 'judge'") as err:
        pd.generate(model, **enc, rewards=rewards, seed=0, **SAMPLE)
    kept = err.value.rollout  # the generation work is not lost
    plain = pd.generate(model, **enc, rewards=pd.Rewards(tok, [EndsWith(".")]), seed=0, **SAMPLE)
    assert torch.equal(kept.sequences, plain.sequences)
    assert torch.equal(kept.reward_components["ends_with"], plain.reward_components["ends_with"])
    assert torch.isnan(kept.reward_components["judge"]).all()


def test_text_reward_bad_arguments():
    with pytest.raises(TypeError, match="fn must be callable"):
        TextReward("not a function")
    with pytest.raises(ValueError, match="every must be None or an int >= 1"):
        TextReward(len, every=0)
    with pytest.raises(ValueError, match="weight must be a finite real number"):
        TextReward(len, weight=math.inf)


def test_every_text_reward_runs_when_one_fails(tiny):
    """A failing text family is NaN; the others still run (a 0 would pass for a score); the
    first failure is raised and names the others that failed."""
    model, tok = tiny
    enc = tok(PROMPTS, return_tensors="pt", padding=True)

    def bad(text):
        raise KeyError("boom")

    def worse(text):
        return float("inf")

    def good(text):
        return len(text) / 10

    rewards = pd.Rewards(tok, [TextReward(bad), TextReward(good), TextReward(worse)])
    with pytest.raises(RewardError, match=r"TextReward 'bad' raised KeyError.*; the text rewards 'worse' failed too"):
        pd.generate(model, **enc, rewards=rewards, seed=0, **SAMPLE)
    rewards = pd.Rewards(tok, [TextReward(bad), TextReward(good)])
    with pytest.raises(RewardError) as err:
        pd.generate(model, **enc, rewards=rewards, seed=0, **SAMPLE)
    assert "failed too" not in str(err.value)
    kept = err.value.rollout
    assert torch.isnan(kept.reward_components["bad"]).all()
    want = [good(t) for t in completions(tok, kept)]  # the plain loop over the decoded completions
    assert kept.reward_components["good"].sum(1).tolist() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("number", [np.float32, np.int64, torch.tensor, lambda v: torch.tensor(v, dtype=torch.int32)])
def test_text_reward_takes_numpy_and_0d_tensor_values(tiny, number):
    model, tok = tiny
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    rewards = pd.Rewards(tok, [TextReward(lambda text: number(len(text.split())), name="words")])
    out = pd.generate(model, **enc, rewards=rewards, seed=0, **SAMPLE)
    want = [float(len(t.split())) for t in completions(tok, out)]
    assert out.reward_components["words"].sum(1).tolist() == want
    for value in (torch.tensor([1.0]), np.float64("nan"), np.bool_(True)):
        rewards = pd.Rewards(tok, [TextReward(lambda text: value, name="odd")])
        with pytest.raises(RewardError, match=r"TextReward 'odd' returned .* it must return a finite real number"):
            pd.generate(model, **enc, rewards=rewards, seed=0, max_new_tokens=2, do_sample=True)


def teacher_forced_logprobs(model, seqs, attention, P):
    """[B, T] log-prob of each completion token, one forward over prompt + completion."""
    pos = (attention.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=seqs, attention_mask=attention, position_ids=pos).logits.float()
    lp = torch.log_softmax(logits[:, P - 1:-1], -1)
    return lp.gather(2, seqs[:, P:, None])[:, :, 0]


@pytest.mark.parametrize("linear", ["torch", "onednn"])
def test_kl_penalty_and_reference_fluency_equal_teacher_forced_forwards(tiny, linear, packed_calls):
    """The oracle runs F.linear; with linear="onednn" policy and reference run packed."""
    model, tok = tiny
    ref, _ = pd.random_model("tiny", seed=1)  # another set of weights, same vocabulary
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    rewards = pd.Rewards(tok, [KLPenalty(ref, coef=0.2), Fluency(reference=ref, name="ref_fluency"),
                               Fluency()])
    out = pd.generate(model, **enc, rewards=rewards, steer=0.5, seed=1, linear=linear, **SAMPLE)
    # both reference families step the same reference model: a KL and a fluency decoder
    assert sorted(packed_calls) == (sorted([id(model), id(ref)]) if linear == "onednn" else [])
    P = enc["input_ids"].shape[1]
    attention = torch.cat([enc["attention_mask"], out.mask.long()], 1)
    seqs = out.sequences
    with torch.no_grad():
        lp_pol = teacher_forced_logprobs(model, seqs, attention, P)
        lp_ref = teacher_forced_logprobs(ref, seqs, attention, P)
    m = out.mask
    assert_verbose_allclose(out.reward_components["kl"][m], (-0.2 * (lp_pol - lp_ref))[m], 1e-4, 1e-4, "kl")
    assert_verbose_allclose(out.reward_components["ref_fluency"][m], lp_ref[m], 1e-4, 1e-4, "ref fluency")
    assert_verbose_allclose(out.reward_components["fluency"][m], out.policy_logprobs[m], 1e-5, 1e-5, "fluency")


def test_reference_that_onednn_cannot_pack_is_refused_before_decoding(tiny):
    model, tok = tiny
    ref, _ = pd.random_model("tiny", seed=1, dtype=torch.float16)
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="float16"):
        pd.generate(model, **enc, rewards=pd.Rewards(tok, [KLPenalty(ref)]), linear="onednn", **SAMPLE)


def test_reference_with_another_vocabulary_is_refused(tiny):
    from transformers import LlamaConfig, LlamaForCausalLM

    model, tok = tiny
    other = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="reference model has 1000 logits"):
        pd.Rewards(tok, [KLPenalty(other)])
    with pytest.raises(ValueError, match="coef must be a finite number >= 0"):
        KLPenalty(model, coef=float("nan"))
    with pytest.raises(ValueError, match="reference must be a model"):
        KLPenalty(None)


def test_registry_builds_families_by_name_and_from_toml(tiny, tmp_path):
    model, tok = tiny
    f = registry.from_spec("keywords:apple,orange=0.5", model)
    assert isinstance(f, Keywords) and f.words == ["apple", "orange"] and f.weight == 0.5
    assert registry.from_spec("ends-with:!", model).suffix == "!"
    # the weight is a number after the last '='; in a free-text argument another '=' is text
    assert registry.from_spec("ends-with:!=2", model).weight == 2.0
    assert registry.from_spec("ends-with:!=x", model).suffix == "!=x"
    assert registry.from_spec("length:2,5=-1", model).weight == -1.0
    cfg = tmp_path / "rewards.toml"
    cfg.write_text('[[reward]]\ntype = "ends-with"\nweight = 2.0\n\n'
                   '[[reward]]\ntype = "keywords"\nwords = ["apple", "orange"]\nrequire_all = true\n')
    fams = registry.from_config(cfg, model)
    assert [type(x).__name__ for x in fams] == ["EndsWith", "Keywords"]
    assert fams[0].weight == 2.0 and fams[1].require_all
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    out = pd.generate(model, **enc, rewards=pd.Rewards(tok, fams), steer=1.0, seed=0, **SAMPLE)
    assert set(out.reward_components) == {"ends_with", "keywords"}


@pytest.mark.parametrize("text,match", [
    ('[[reward]]\ntype = "sentimentality"\n', "unknown reward 'sentimentality'; known: capitalization"),
    ('[[reward]]\ntype = "keywords"\nwords = ["a"]\ncolour = 1\n', "keywords takes .*unknown colour"),
    ('[[reward]]\ntype = "ends-with"\nweight = nan\n', "weight must be a finite number"),
    ('[[reward]]\nweight = 1.0\n', "reward #1 has no 'type'"),
    ('[[reward]\n', "not valid TOML"),
    ('import_this = "os"\n', "expected one or more"),
    ('[[reward]]\ntype = "keywords"\n', "keywords needs words"),
    ('[[reward]]\ntype = "fluency"\nreference = ""\n', "reference must be a model folder"),
    ('[[reward]]\ntype = "repetition"\nn = 0\n', "n must be an int >= 1"),
    ('[[reward]]\ntype = "keywords"\nwords = ["a"]\nrequire_all = "yes"\n',
     "keywords's require_all must be true or false, got 'yes'"),  # a string would be truthy
    ('[[reward]]\ntype = "repetition"\nn = 1.5\n', "repetition's n must be a whole number, got 1.5"),
    ('[[reward]]\ntype = "repetition"\nn = true\n', "repetition's n must be a whole number, got True"),
    ('[[reward]]\ntype = "overlap"\nreferences = "a b"\nkind = 2\n', "overlap's kind must be a string, got 2"),
    ('[[reward]]\ntype = "keywords"\nwords = 5\n', "keywords's words must be a word or a list of words, got 5"),
    ('[[reward]]\ntype = "words"\nwords = ["a", 3]\n', "words's words must be a word or a list of words"),
    ('[[reward]]\ntype = "kl"\nreference = true\n', "kl's reference must be a model folder, got True"),
    ('[[reward]]\ntype = "human"\nratings = 5\n', "human's ratings must be a ratings file, got 5"),
    ('[[reward]]\ntype = "topic"\nwords = ["x"]\nembeddings = [[1.0]]\n', "embeddings must be a \\[V, D\\] tensor"),
    # families that take a model: built with stand-ins for it, before any model loads
    ('[[reward]]\ntype = "topic"\nwords = []\n', r"reward #1: Topic: words must be a non-empty list"),
    ('[[reward]]\ntype = "kl"\nreference = "."\ncoef = -1.0\n',
     r"reward #1: KLPenalty: coef must be a finite number >= 0"),
])
def test_bad_reward_configs(tmp_path, text, match):
    cfg = tmp_path / "rewards.toml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=match):
        registry.from_config(cfg)


def test_cli_rewards_config(real, tmp_path, capsys):
    import json

    from proxdecode.cli import main

    cfg = tmp_path / "rewards.toml"
    cfg.write_text('[[reward]]\ntype = "ends-with"\n\n[[reward]]\ntype = "keywords"\nwords = ["apple"]\n')
    main(["generate", "I like to eat", "--rewards", str(cfg), "--steer", "2", "-n", "2",
          "--max-new-tokens", "8", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert all(set(c["components"]) == {"ends_with", "keywords"} for c in doc["completions"])
    with pytest.raises(SystemExit, match="no such file"):
        main(["generate", "x", "--rewards", str(tmp_path / "missing.toml"), "--max-new-tokens", "2"])
