"""Reward families against their text-level oracles (the seed's plain Python rules)."""

import pytest
import torch

import proxdecode as pd
from proxdecode.rewards import EndsWith, Fluency, Keywords

TEXTS = ["I ate an apple and an orange.", "Apples and oranges", "An apple a day.", "orange juice. apple pie",
         "pineapple!", "The Orange is big.\n", "nothing here", "end with a dot.", " apples, oranges.",
         "applesauce and orangeade.", "No. Not yet", "...", "x"]


def teacher_force(rewards, tok, texts, eos=True, **start):
    """Run a RewardRun over given completions: [B, T] per-component rewards incl. terminal.

    Two runs side by side: the steering path (the [B, V] ``score``, then ``record``) and the
    path without steering (each family's ``chosen``); they must record the same rewards.
    ``start``: ``Rewards.start``'s keywords (``eos_token_ids``, ``prompts``)."""
    ids = [tok.encode(t, add_special_tokens=False) + ([tok.eos_token_id] if eos else []) for t in texts]
    T = max(map(len, ids))
    B = len(ids)
    run, fast = rewards.start(len(tok), B, "cpu", **start), rewards.start(len(tok), B, "cpu", **start)
    comps = torch.zeros(len(rewards.names), B, T)
    logits = torch.zeros(B, len(tok))
    for t in range(T):
        tokens = torch.tensor([r[t] if t < len(r) else tok.pad_token_id for r in ids])
        alive = torch.tensor([t < len(r) for r in ids])
        run.score(logits)
        comps[:, :, t] = run.record(tokens, alive)
        assert_same_path(fast.record(tokens, alive, logits), comps[:, :, t], rewards.names, t)
    totals = comps.sum(2) + run.terminal(B, "cpu")
    assert_same_path(fast.terminal(B, "cpu"), run.terminal(B, "cpu"), rewards.names, "terminal")
    return {n: totals[i] for i, n in enumerate(rewards.names)}, ids


def assert_same_path(chosen, dense, names, where):
    """The chosen-token path's ``[F, B]`` rewards equal the dense path's (fp32 rounding)."""
    for i, n in enumerate(names):
        torch.testing.assert_close(chosen[i], dense[i], atol=1e-6, rtol=1e-6,
                                   msg=lambda m: f"{n} at step {where}: chosen-token path differs\n{m}")


def seed_ends(text):  # the seed's first rule
    return -1.0 if not text.endswith(".") else 0.0


@pytest.mark.parametrize("eos", [True, False])
def test_ends_with_sums_to_the_seed_rule(tiny, eos):
    _, tok = tiny
    rewards = pd.Rewards(tok, [EndsWith(".", weight=2.0)])
    totals, ids = teacher_force(rewards, tok, TEXTS, eos)
    want = [2.0 * seed_ends(tok.decode(i, skip_special_tokens=True)) for i in ids]
    assert totals["ends_with"].tolist() == want


SUFFIX_TEXTS = ["the end.", "Hi. ", "Really!?", "He came home.", "end. more", "the end", ".", "x..", "e.e."]


@pytest.mark.parametrize("suffix", ["end.", ". ", "!?", "e.", "..", "e.e."])
@pytest.mark.parametrize("eos", [True, False])
def test_ends_with_a_suffix_spanning_tokens(tiny, suffix, eos):
    """" end" + "." ends with "end.", "." + " " with ". ": the oracle is str.endswith on the
    decoded completion, the gated Keywords' too."""
    _, tok = tiny
    rewards = pd.Rewards(tok, [EndsWith(suffix), Keywords(["end", "home"], only_if_ends_with=suffix)])
    totals, ids = teacher_force(rewards, tok, SUFFIX_TEXTS, eos)
    texts = [tok.decode(i, skip_special_tokens=True) for i in ids]
    assert totals["ends_with"].tolist() == [0.0 if t.endswith(suffix) else -1.0 for t in texts]
    want = [t.endswith(suffix) * sum(w in t for w in ("end", "home")) / 2 for t in texts]
    assert totals["keywords"].tolist() == pytest.approx(want)


@pytest.mark.parametrize("word", ["quokka", "Quokka", "QUOKKA"])
def test_keywords_ignore_case_does_not_depend_on_how_the_word_is_written(tiny, word):
    _, tok = tiny
    texts = ["a quokka", "quokka", "A Quokka", "QUOKKA!", "a kangaroo"]
    totals, ids = teacher_force(pd.Rewards(tok, [Keywords([word], ignore_case=True)]), tok, texts)
    assert totals["keywords"].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("ignore_case", [False, True])
def test_keywords_know_a_split_word_in_its_own_inner_capitals(tiny, ignore_case):
    """"OpenAI" is "Open" + "AI", "GitHub" at the start of a text "Git" + "Hub"."""
    _, tok = tiny
    texts = ["I use OpenAI", "OpenAI is here", "GitHub is here", "i use openai"]
    rewards = pd.Rewards(tok, [Keywords(["OpenAI", "GitHub"], ignore_case=ignore_case)])
    totals, ids = teacher_force(rewards, tok, texts)
    fold = str.lower if ignore_case else (lambda x: x)
    want = [sum(fold(w) in fold(tok.decode(i, skip_special_tokens=True)) for w in ("OpenAI", "GitHub")) / 2
            for i in ids]
    assert totals["keywords"].tolist() == pytest.approx(want)


@pytest.mark.parametrize("require_all,ignore_case", [(False, False), (True, False), (False, True)])
def test_keywords_track_word_in_text(tiny, require_all, ignore_case):
    _, tok = tiny
    words = ["apple", "orange"]
    rewards = pd.Rewards(tok, [Keywords(words, require_all=require_all, ignore_case=ignore_case)])
    totals, ids = teacher_force(rewards, tok, TEXTS)
    mismatched = []
    for b, i in enumerate(ids):
        text = tok.decode(i, skip_special_tokens=True)
        text = text.lower() if ignore_case else text
        hits = sum(w in text for w in words)
        if totals["keywords"][b].item() != pytest.approx(float(hits == 2) if require_all else hits / 2):
            mismatched.append(TEXTS[b])
    # the documented gap: "Apples" at the start of a text is the tokens "App" + "les", and no
    # single token or canonical spelling of "apple" ends there
    assert mismatched == (["Apples and oranges"] if ignore_case else [])


def test_seed_rule_reproduced_as_vectorised_rules(tiny):
    """The seed's get_reward: -1 unless it ends with '.', else +1 with apple and orange."""
    _, tok = tiny

    def get_reward(text):
        if not text.endswith("."):
            return -1
        if "apple" in text and "orange" in text:
            return 1
        return 0

    rewards = pd.Rewards(tok, [EndsWith("."), Keywords(["apple", "orange"], require_all=True)])
    totals, ids = teacher_force(rewards, tok, TEXTS)
    for b, i in enumerate(ids):
        text = tok.decode(i, skip_special_tokens=True)
        ends, kw = totals["ends_with"][b].item(), totals["keywords"][b].item()
        assert (-1 if ends < 0 else kw) == get_reward(text), text


def test_steered_generation_records_consistent_rewards(real):
    model, tok = real
    rewards = pd.Rewards(tok, [EndsWith("."), Keywords(["apple", "orange"]), Fluency(weight=0.1)])
    enc = tok(["I like to eat"] * 8, return_tensors="pt")
    kw = dict(max_new_tokens=24, do_sample=True, top_k=50, gamma=0.9)
    plain = pd.generate(model, **enc, rewards=rewards, steer=0.0, seed=list(range(8)), **kw)
    steered = pd.generate(model, **enc, rewards=rewards, steer=4.0, seed=list(range(8)), **kw)
    for out in (plain, steered):
        m = out.mask
        total = sum(out.reward_components.values())
        torch.testing.assert_close(total, out.rewards)
        torch.testing.assert_close(out.reward_components["fluency"][m], 0.1 * out.policy_logprobs[m])
        assert (out.rewards[~m] == 0).all()
        torch.testing.assert_close(out.returns, pd.returns.discounted_returns(out.rewards, m, 0.9))
        for b in range(8):
            text = tok.decode(out.tokens[b][m[b]], skip_special_tokens=True)
            assert out.reward_components["ends_with"][b].sum().item() == seed_ends(text), text
            kw_want = sum(w in text for w in ("apple", "orange")) / 2
            assert out.reward_components["keywords"][b].sum().item() == pytest.approx(kw_want), text
    rate = lambda out: sum(  # noqa: E731
        tok.decode(out.tokens[b][out.mask[b]], skip_special_tokens=True).endswith(".") for b in range(8))
    assert rate(steered) > rate(plain)


def test_keyword_steering_raises_mentions(real):
    model, tok = real
    rewards = pd.Rewards(tok, [Keywords(["apple", "orange"])])
    enc = tok(["I like to eat"] * 8, return_tensors="pt")
    # the keywords are outside the LM's top 50 after this prompt: steer over the whole vocabulary
    kw = dict(max_new_tokens=24, do_sample=True, top_k=0, rewards=rewards, seed=list(range(8)))
    covered = [pd.generate(model, **enc, steer=s, **kw).rewards.sum().item() for s in (0.0, 8.0)]
    assert covered[1] > covered[0] + 1, covered


def test_bad_reward_arguments(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="weight"):
        EndsWith(".", weight=float("nan"))
    with pytest.raises(ValueError, match="suffix"):
        EndsWith("")
    with pytest.raises(ValueError, match="words"):
        Keywords([])
    with pytest.raises(ValueError, match="Keywords: only_if_ends_with must be None or a non-empty string, got ''"):
        Keywords(["apple"], only_if_ends_with="")
    with pytest.raises(ValueError, match="duplicate"):
        pd.Rewards(tok, [EndsWith("."), EndsWith("!")])
    with pytest.raises(ValueError, match="at least one"):
        pd.Rewards(tok, [])
    with pytest.raises(TypeError, match="not a proxdecode reward"):
        pd.Rewards(tok, [lambda text: 1.0])


def test_weight_is_any_finite_real_number(tiny):
    """numpy scalars and 0-d tensors are numbers; bools, arrays and non-finite values are not."""
    import numpy as np

    for w in (np.float32(0.5), np.int64(2), torch.tensor(0.25), torch.tensor(3, dtype=torch.int32), 2, 1.5):
        assert EndsWith(".", weight=w).weight == float(w)
        assert type(EndsWith(".", weight=w).weight) is float
    for w in (True, np.bool_(True), np.float64("nan"), torch.tensor(float("inf")), torch.tensor([1.0]),
              np.array([0.5]), "1", None, 1j):
        with pytest.raises(ValueError, match=r"EndsWith: weight must be a finite real number \(Python, numpy"):
            EndsWith(".", weight=w)
    # the families' own numbers too
    model, _ = tiny
    assert pd.rewards.KLPenalty(model, coef=np.float32(0.25)).coef == 0.25
    assert pd.rewards.HumanFeedback(ratings=[("good", 5.0), ("bad", 1.0)], ridge=np.float32(0.5)).ridge == 0.5
    with pytest.raises(ValueError, match="KLPenalty: coef must be a finite number >= 0"):
        pd.rewards.KLPenalty(model, coef=np.float32(-1))
    with pytest.raises(ValueError, match="HumanFeedback: ridge must be a finite number > 0"):
        pd.rewards.HumanFeedback(ratings=[("good", 5.0)], ridge=torch.tensor(0.0))


def test_start_checks_prompts_and_eos_ids(tiny):
    _, tok = tiny
    rewards = pd.Rewards(tok, [EndsWith(".")])
    for prompts in (0, 4, 2.0, True):
        with pytest.raises(ValueError, match="prompts must be an int >= 1 dividing the batch of 6 rows"):
            rewards.start(len(tok), 6, "cpu", prompts=prompts)
    for eos in ((len(tok),), (-1,), (2.0,), (True,)):
        with pytest.raises(ValueError, match=rf"eos_token_ids must be token ids in \[0, {len(tok)}\)"):
            rewards.start(len(tok), 6, "cpu", eos_token_ids=eos)
    rewards.start(len(tok), 6, "cpu", prompts=3, eos_token_ids=())


class Exclaim(pd.rewards.Reward):
    """A user-defined token table: +1 for every token whose text contains '!'."""

    kind = "table"
    default_name = "exclaim"

    def bind(self, tokenizer):
        strings, _ = pd.rewards.token_strings(tokenizer)
        self._table = torch.tensor([float("!" in s) for s in strings])

    def table(self):
        return self._table


def test_token_table_family_is_folded_and_recorded(tiny):
    model, tok = tiny
    rewards = pd.Rewards(tok, [Exclaim(weight=0.5), EndsWith(".")])
    enc = tok(["Wow", "Hey there"], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=12, do_sample=True, top_k=0, rewards=rewards, seed=[3, 4])
    plain, steered = pd.generate(model, **enc, **kw), pd.generate(model, **enc, steer=6.0, **kw)
    for out in (plain, steered):
        want = [[0.5 * ("!" in tok.decode([t])) if m else 0.0 for t, m in zip(row, mrow)]
                for row, mrow in zip(out.tokens.tolist(), out.mask.tolist())]
        assert out.reward_components["exclaim"].tolist() == want
    assert steered.reward_components["exclaim"].sum() > plain.reward_components["exclaim"].sum()


def test_steering_sum_and_recorded_rewards_over_a_padded_vocabulary(tiny):
    """The steering sum is the weighted sum of each family's scores, the folded tables
    included, and each recorded reward is its family's weighted score of the chosen token;
    with a model wider than the tokenizer a padding row may be chosen, and the text families
    score it 0 (EndsWith's tables once stopped at the tokenizer's size: an IndexError)."""
    from proxdecode.rewards import Sentiment

    _, tok = tiny
    fams = [Exclaim(weight=0.5), EndsWith(".", weight=-2.0), Sentiment(weight=3.0), Fluency(weight=0.1)]
    rewards = pd.Rewards(tok, fams)
    V, B = len(tok) + 64, 3
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(0))
    run = rewards.start(V, B, "cpu", max_new_tokens=4)
    for step, tokens in enumerate([[13, 30, 5], [V - 1, 256, 13]]):  # a padding row in the second
        tokens = torch.tensor(tokens)
        total = run.score(logits)  # [B, V]
        parts = [s * f.weight for f, s in zip(rewards.families[1:], (f.score(st, logits) for f, st in
                                                                      zip(rewards.families[1:], run.states)))]
        want = rewards.families[0].table().float() * 0.5
        want = torch.nn.functional.pad(want, (0, V - want.numel())).expand(B, -1)
        for p in parts:
            want = want + torch.nn.functional.pad(p, (0, V - p.shape[1]))
        torch.testing.assert_close(total, want, atol=1e-6, rtol=1e-6)
        got = run.record(tokens, torch.ones(B, dtype=torch.bool))  # [F, B]
        assert torch.equal(got, want.new_tensor([[0.5 * ("!" in tok.decode([t])) if t < len(tok) else 0.0
                                                  for t in tokens.tolist()]] + [
            (torch.nn.functional.pad(p, (0, V - p.shape[1])).gather(1, tokens[:, None])[:, 0]).tolist()
            for p in parts])), f"step {step}"
        if step == 1:  # the text families give a padding row 0; Fluency its log-prob
            assert (got[:3, 0] == 0).all() and got[3, 0] == 0.1 * torch.log_softmax(logits[0], 0)[V - 1]


PADDED_FAMILIES = {
    "ends_with": lambda m: EndsWith("."), "keywords": lambda m: Keywords(["apple", "orange"]),
    "keywords_gated": lambda m: Keywords(["apple"], only_if_ends_with="."),
    "repetition": lambda m: pd.rewards.Repetition(), "repetition_2": lambda m: pd.rewards.Repetition(n=2),
    "length": lambda m: pd.rewards.Length(max_tokens=2), "words": lambda m: pd.rewards.WordList(["the"]),
    "capitalization": lambda m: pd.rewards.Capitalization(), "sentiment": lambda m: pd.rewards.Sentiment(),
    "topic": lambda m: pd.rewards.Topic(["food"], model=m), "fluency": lambda m: Fluency(),
    "overlap": lambda m: pd.rewards.Overlap("the cat sat", n=2)}


@pytest.mark.parametrize("steering", [True, False], ids=["score", "chosen"])
@pytest.mark.parametrize("family", list(PADDED_FAMILIES))
def test_every_family_takes_a_padding_row(tiny, family, steering):
    """A model may have up to 256 logits more than its tokenizer has tokens, and sampling may
    pick one: each family scores the full width and records such a token, on both paths
    (scoring every candidate, or the chosen token only), with finite rewards."""
    model, tok = tiny
    rewards = pd.Rewards(tok, [PADDED_FAMILIES[family](model)])
    V, B = len(tok) + 64, 3
    run = rewards.start(V, B, "cpu", None, torch.randint(0, 1000, (B, 3)), torch.ones(B, 3, dtype=torch.long), 4)
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(1))
    for tokens in ([13, 30, 5], [V - 1, 256, 13], [V - 2, V - 1, 13]):
        if steering:
            assert run.score(logits).shape == (B, V)
        got = run.record(torch.tensor(tokens), torch.ones(B, dtype=torch.bool), None if steering else logits)
        assert got.shape == (1, B) and torch.isfinite(got).all()


def seed_get_reward(text):  # the seed's section 5.1 rule, verbatim
    if not text.endswith('.'):
        return -1
    if "apple" in text and "orange" in text:
        return 1
    return 0


@pytest.mark.parametrize("eos", [True, False])
def test_seed_get_reward_as_vectorised_rules(tiny, eos):
    """EndsWith('.') + Keywords gated on the same ending sum to the seed's get_reward exactly."""
    _, tok = tiny
    rewards = pd.Rewards(tok, [EndsWith("."), Keywords(["apple", "orange"], require_all=True,
                                                       only_if_ends_with=".")])
    texts = TEXTS + ["apple and orange", "apple. orange", "an orange, an apple.", "apple orange. no"]
    totals, ids = teacher_force(rewards, tok, texts, eos)
    got = (totals["ends_with"] + totals["keywords"]).tolist()
    assert got == [float(seed_get_reward(tok.decode(i, skip_special_tokens=True))) for i in ids]


def test_gated_keywords_score_every_candidate_as_a_potential_difference(tiny):
    """Each candidate's score equals Phi(text + candidate) - Phi(text), Phi the gated rule."""
    _, tok = tiny
    kw = Keywords(["apple", "orange"], require_all=True, only_if_ends_with=".")
    rewards = pd.Rewards(tok, [kw])
    prefix = tok.encode("I ate an apple and an orange", add_special_tokens=False)
    run = rewards.start(len(tok), 1, "cpu")
    for t in prefix:
        run.score(torch.zeros(1, len(tok)))
        run.record(torch.tensor([t]), torch.tensor([True]))
    scores = run.score(torch.zeros(1, len(tok)))[0]
    phi = lambda text: float("apple" in text and "orange" in text and text.endswith("."))  # noqa: E731
    base = phi(tok.decode(prefix))
    for cand in [13, 30, 1012, tok.encode(" pie.", add_special_tokens=False)[-1], tok.eos_token_id]:
        want = phi(tok.decode(prefix + [cand], skip_special_tokens=True)) - base
        assert scores[cand].item() == want, (cand, tok.decode([cand]))
