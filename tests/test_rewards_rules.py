"""The style rule families (Repetition, Length, WordList, Capitalization) against their
plain-Python oracles by teacher forcing, their bad arguments, and one steering check each."""

import random
import re

import pytest
import torch

import proxdecode as pd
from proxdecode.rewards.style import Capitalization, Length, Repetition, WordList

from test_rewards import assert_same_path

TEXTS = [
    "the cat and the dog and the bird",
    "la la la la la",
    "Buffalo buffalo Buffalo buffalo buffalo buffalo Buffalo buffalo.",
    "I ate an apple. then an apple pie! And apple juice? yes.",
    "It is 3.5 km. e.g. the road is long.\nNext line starts here.",
    'She said "Stop." then left. "Why?" he asked.  okay',
    "def f(x): return x + x + x",
    "No repeats in this sentence at all",
    "APPLE! Apple, apple; applesauce and pineapple. quokka quokka",
    "... !!! ??? ... . a",
    "To be, or not to be, that is the question.",
    "Ok. Über alles. éclair? Ça va.",
    "x",
    "",
    "pineapple, crabapple and applewood. the and andante",
]

CAP_RE = re.compile(r"(?=[.!?][\"')\]\u201d\u2019]*\s+(\S))")


def teacher_force(rewards, tok, texts, eos=True, prompts=None, max_new_tokens=0, check=None, vocab=None,
                  eos_ids=None):
    """Run a RewardRun over given completions; per-component totals incl. terminal.

    ``prompts`` are left-padded into ``prompt_ids``/``prompt_mask``; ``check(t, dense, ids)``
    sees every step's ``[B, V]`` weighted reward before the step's tokens are recorded;
    ``eos_ids``: the call's EOS ids (None: the tokenizer's)."""
    ids = [tok.encode(t, add_special_tokens=False) + ([tok.eos_token_id] if eos else []) for t in texts]
    T, B = max(1, max(map(len, ids))), len(ids)
    pids = pmask = None
    if prompts is not None:
        penc = [tok.encode(p, add_special_tokens=False) for p in prompts]
        P = max(map(len, penc))
        pids = torch.tensor([[tok.pad_token_id] * (P - len(p)) + p for p in penc])
        pmask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in penc])
    V = vocab or len(tok)
    run = rewards.start(V, B, "cpu", None, pids, pmask, max_new_tokens, eos_token_ids=eos_ids)
    fast = rewards.start(V, B, "cpu", None, pids, pmask, max_new_tokens, eos_token_ids=eos_ids)  # no steering
    comps = torch.zeros(len(rewards.names), B, T)
    for t in range(T):
        tokens = torch.tensor([r[t] if t < len(r) else tok.pad_token_id for r in ids])
        alive = torch.tensor([t < len(r) for r in ids])
        dense = run.score(torch.zeros(B, V))
        assert dense.shape == (B, V)
        if check is not None:
            check(t, dense, ids)
        comps[:, :, t] = run.record(tokens, alive)
        assert_same_path(fast.record(tokens, alive, torch.zeros(B, V)), comps[:, :, t], rewards.names, t)
    totals = comps.sum(2) + run.terminal(B, "cpu")
    assert_same_path(fast.terminal(B, "cpu"), run.terminal(B, "cpu"), rewards.names, "terminal")
    return {n: totals[i] for i, n in enumerate(rewards.names)}, ids


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------- oracles (plain Python)

def _repeats(seq, n, start=0):
    """#n-grams - #distinct n-grams among the n-grams ending at positions >= start."""
    seen, count = set(), 0
    for i in range(n - 1, len(seq)):
        g = tuple(seq[i - n + 1: i + 1])
        count += i >= start and g in seen
        seen.add(g)
    return count


def _length(seq, special, lo, hi, eos):
    """``eos``: the call's EOS ids; the row ends at the first (free past the budget when it
    adds no text); nothing after it counts."""
    count, total, last = 0, 0, None
    for a in seq:
        if a in special:
            total -= lo is not None and count < lo
            total -= hi is not None and count >= hi and a not in eos
        else:
            total -= hi is not None and count >= hi
            count += 1
        last = a
        if a in eos:
            break
    if lo is not None and count < lo and last not in special:
        total -= 1
    return total


def _word_count(text, words, whole_words, ignore_case):
    if whole_words:
        flags = re.I if ignore_case else 0
        return sum(len(re.findall(rf"(?<!\w){re.escape(w)}(?!\w)", text, flags)) for w in words)
    fold = str.casefold if ignore_case else (lambda x: x)
    return sum(fold(text).count(fold(w)) for w in dict.fromkeys(words))


def _cap(text, first=False):
    chars = [m.group(1) for m in CAP_RE.finditer(text)]
    m = re.match(r"\s*(\S)", text)
    if first and m:
        chars.append(m.group(1))
    return sum(1 if c.isupper() else -1 if c.islower() else 0 for c in chars)


def _specials(tok):
    # the named special tokens and the added tokens flagged special (SmolLM2's ids 3-16)
    return set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}


# ---------------------------------------------------------------- Repetition

@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("max_new_tokens", [0, 40])  # 0: the history grows on demand
def test_repetition_sums_to_distinct_n_count(tiny, n, max_new_tokens):
    _, tok = tiny
    rewards = pd.Rewards(tok, [Repetition(n=n, weight=-0.5)])
    totals, ids = teacher_force(rewards, tok, TEXTS, max_new_tokens=max_new_tokens)
    sp = _specials(tok)
    want = [-0.5 * _repeats([a for a in r if a not in sp], n) for r in ids]
    assert totals["repetition"].tolist() == want


def test_repetition_history_grows(tiny):
    """Runs longer than the history's room (unknown or exceeded max_new_tokens) still count right."""
    _, tok = tiny
    texts = ["one two three " * 22 + "four", "la " * 70 + "end"]  # 67 and 71 tokens
    sp = _specials(tok)
    for n, mnt in ((2, 0), (3, 20)):
        totals, ids = teacher_force(pd.Rewards(tok, [Repetition(n=n)]), tok, texts, max_new_tokens=mnt)
        assert totals["repetition"].tolist() == [-float(_repeats([a for a in r if a not in sp], n)) for r in ids]


@pytest.mark.parametrize("n", [1, 2])
def test_repetition_every_candidate_matches_the_oracle(tiny, n):
    """Not just the chosen token: R(s, a) = oracle(prefix + a) - oracle(prefix) for a sample of a."""
    _, tok = tiny
    rng = random.Random(0)
    sp = _specials(tok)
    cands = sorted(set(rng.sample(range(len(tok)), 60)) | sp
                   | {a for t in TEXTS for a in tok.encode(t, add_special_tokens=False)})

    def check(t, dense, ids):
        for b, r in enumerate(ids):
            if t >= len(r):
                continue
            prefix = [a for a in r[:t] if a not in sp]
            base = _repeats(prefix, n)
            want = [0.0 if a in sp else float(_repeats(prefix + [a], n) - base) for a in cands]
            assert dense[b, cands].tolist() == want, (b, t)

    teacher_force(pd.Rewards(tok, [Repetition(n=n, weight=1.0)]), tok, TEXTS[:8], check=check)


@pytest.mark.parametrize("n", [1, 2])
def test_repetition_include_prompt(tiny, n):
    _, tok = tiny
    prompts = ["the cat and", "la la", "Nothing", "", "buffalo", "x y z x y z", "and the", "I ate an apple.",
               "<|im_start|>user\nthe the<|im_end|>", "def f(x):", "the question", "Ok.", "x x", "y", "apple"]
    assert len(prompts) == len(TEXTS)
    rewards = pd.Rewards(tok, [Repetition(n=n, weight=1.0, include_prompt=True)])
    totals, ids = teacher_force(rewards, tok, TEXTS, prompts=prompts, max_new_tokens=40)
    sp = _specials(tok)
    want = []
    for p, r in zip(prompts, ids):
        pk = [a for a in tok.encode(p, add_special_tokens=False) if a not in sp]
        want.append(float(_repeats(pk + [a for a in r if a not in sp], n, start=len(pk))))
    assert totals["repetition"].tolist() == want
    # without include_prompt the prompt is ignored
    plain, _ = teacher_force(pd.Rewards(tok, [Repetition(n=n, weight=1.0)]), tok, TEXTS, prompts=prompts)
    assert plain["repetition"].tolist() == [float(_repeats([a for a in r if a not in sp], n)) for r in ids]


PROSE = [
    "The quick brown fox jumps over the lazy dog, and the dog does not care.",
    "I like to eat apples. I like to eat oranges. I like to eat bananas.",
    "Once upon a time there was a king who had three daughters. The youngest daughter was the most "
    "beautiful of them all.",
    "We went to the market and bought bread, milk, eggs and cheese, then we went home.",
    "Rain, rain, go away, come again another day. Little Johnny wants to play.",
    "Machine learning models learn patterns from data; the more data they see, the better the patterns "
    "they learn.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells for sure.",
    "Yesterday was sunny. Today is cloudy. Tomorrow will be rainy, or so the forecast says.",
    "The results were clear: accuracy improved by five percent while latency stayed the same.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness.",
    "Please send me the report by Friday so that I can review the report before the meeting.",
    "Hello world.",
    "A dog. A cat. A bird. A fish. A horse. A cow.",
    "Data, data, data! I cannot make bricks without clay.",
]


@pytest.mark.parametrize("n", [1, 2])
def test_token_repeats_track_word_repeats(tiny, n):
    """Token-level repeated n-grams vs word-level ones of the decoded text, on prose.

    Measured (SmolLM2 tokenizer): Pearson 0.997 (n=1) / 0.997 (n=2) against words and
    punctuation marks (``\\w+|[^\\w\\s]``), 0.96 / 0.94 against ``text.split()`` (which
    glues punctuation to words); the differences are a text's first word, whose token has no
    leading space ("A" vs " A"), and case ("Data" vs " data" are different tokens)."""
    _, tok = tiny
    totals, ids = teacher_force(pd.Rewards(tok, [Repetition(n=n, weight=1.0)]), tok, PROSE)

    def rep(w):
        grams = [tuple(w[i: i + n]) for i in range(len(w) - n + 1)]
        return float(len(grams) - len(set(grams)))

    token_rep = totals["repetition"]
    words = torch.tensor([rep(re.findall(r"\w+|[^\w\s]", decode(tok, r))) for r in ids])
    split = torch.tensor([rep(decode(tok, r).split()) for r in ids])
    corr = torch.corrcoef(torch.stack([token_rep, words, split]))
    print(f"\nn={n} token vs word repeats: pearson {corr[0, 1]:.3f} (words+punct), {corr[0, 2]:.3f} (split); "
          f"mean |diff| {(token_rep - words).abs().mean():.2f}, {(token_rep - split).abs().mean():.2f}")
    assert corr[0, 1] > 0.99 and corr[0, 2] > 0.9
    assert (token_rep - words).abs().mean() < 0.2


# ---------------------------------------------------------------- Length

@pytest.mark.parametrize("lo,hi", [(5, None), (None, 6), (4, 9), (0, 0)])
@pytest.mark.parametrize("eos", [True, False])
def test_length_matches_token_count_rule(tiny, lo, hi, eos):
    _, tok = tiny
    rewards = pd.Rewards(tok, [Length(min_tokens=lo, max_tokens=hi, weight=2.0)])
    texts = TEXTS + ["mid<|im_start|>row special", "<|endoftext|>"]
    totals, ids = teacher_force(rewards, tok, texts, eos=eos)
    sp = _specials(tok)
    assert totals["length"].tolist() == [2.0 * _length(r, sp, lo, hi, {tok.eos_token_id}) for r in ids]
    # the engine's case, only the final EOS special: -[L < min] - max(0, L - max)
    for b, r in enumerate(ids[: len(TEXTS)]):
        L = len([a for a in r if a not in sp])
        want = -float(lo is not None and L < lo) - (max(0, L - hi) if hi is not None else 0)
        assert totals["length"][b].item() == 2.0 * want, texts[b]


@pytest.mark.parametrize("lo,hi", [(5, None), (None, 2), (4, 6)])
@pytest.mark.parametrize("eos", [None, "<|endoftext|>", "."])
def test_length_ends_at_the_calls_first_eos(tiny, lo, hi, eos):
    """The call's EOS ids (the tokenizer's when it names none) end the row: a second EOS, or
    text after it, scores nothing; the tokenizer's <|im_end|> is an ordinary special token
    when the call's EOS is another; an EOS that is text (".") counts and pays as text."""
    _, tok = tiny
    rewards = pd.Rewards(tok, [Length(min_tokens=lo, max_tokens=hi)])
    texts = ["Hi<|im_end|><|im_end|>", "Hi there<|im_end|> and more text after it.",
             "A<|im_end|> long row of words.<|endoftext|> then more words", "One. Two<|endoftext|> three."]
    eos_ids = {tok.eos_token_id} if eos is None else set(tok.encode(eos, add_special_tokens=False))
    totals, ids = teacher_force(rewards, tok, texts, eos=False, eos_ids=None if eos is None else tuple(eos_ids))
    assert totals["length"].tolist() == [_length(r, _specials(tok), lo, hi, eos_ids) for r in ids]


# ---------------------------------------------------------------- WordList

WORD_CASES = [  # (words, whole_words, ignore_case, texts where token count != word count)
    (["apple"], True, False, {TEXTS[-1]: 3}),
    (["apple"], True, True, {TEXTS[-1]: 3, TEXTS[8]: -1}),
    (["the", "and"], True, False, {TEXTS[-1]: 1}),
    (["quokka"], True, False, {}),  # split: scored on its first token " qu" / "qu"
    (["!", "?", "."], False, False, {}),  # punctuation: exact
    (["la"], False, True, {}),
]


@pytest.mark.parametrize("words,whole,ic,gaps", WORD_CASES)
def test_wordlist_counts_words(tiny, words, whole, ic, gaps):
    _, tok = tiny
    wl = WordList(words, weight=-1.5, whole_words=whole, ignore_case=ic)
    totals, ids = teacher_force(pd.Rewards(tok, [wl]), tok, TEXTS)
    mismatched = {}
    for b, r in enumerate(ids):
        want = -1.5 * _word_count(decode(tok, r), words, whole, ic)
        got = totals["words"][b].item()
        if got != want:
            mismatched[TEXTS[b]] = (got - want) / -1.5  # extra tokens counted
    # the documented gaps: whole-word tokens that are only part of the text's word ("pine" +
    # "apple", " crab" + "apple", " apple" + "wood", " and" + "ante": +1 each), and words the
    # text spells with other tokens ("APPLE" is "APP" + "LE": -1)
    assert {t: int(d) for t, d in mismatched.items()} == gaps
    assert wl.split_words == (["quokka"] if words == ["quokka"] else [])


def test_wordlist_table_entries(tiny):
    _, tok = tiny
    wl = WordList(["apple", "Orange", "apple"], ignore_case=True)
    pd.Rewards(tok, [wl])
    t = wl.table()
    on = {tok.decode([i]) for i in torch.nonzero(t)[:, 0].tolist()}
    assert {" apple", "apple", " Apple", "Apple", " orange", "orange", " Orange"} <= on
    assert all(s.strip().casefold() in ("apple", "orange") for s in on)
    assert t[tok.eos_token_id] == 0 and set(t.unique().tolist()) == {0.0, 1.0}


# ---------------------------------------------------------------- Capitalization

@pytest.mark.parametrize("first", [False, True])
def test_capitalization_counts_sentence_starts(tiny, first):
    _, tok = tiny
    totals, ids = teacher_force(pd.Rewards(tok, [Capitalization(weight=0.5, first=first)]), tok, TEXTS)
    mismatched = [TEXTS[b] for b, r in enumerate(ids)
                  if totals["capitalization"][b].item() != 0.5 * _cap(decode(tok, r), first)]
    # the documented gap: "Über" is split inside its first character's UTF-8 bytes
    assert mismatched == ["Ok. Über alles. éclair? Ça va."]
    assert _cap(TEXTS[11], first) - 2 * totals["capitalization"][11].item() == 2  # Ü and Ç unscored


def test_capitalization_continues_from_the_prompt(tiny):
    _, tok = tiny
    prompts = ["It rained.", "It rained", "Wait!", "Hi. ", "<|im_start|>assistant\n", "Is it?\n"]
    texts = [" the end", " the end", " Go on. now", "ok", "Hello there. ok", " yes."]
    totals, ids = teacher_force(pd.Rewards(tok, [Capitalization()]), tok, texts, prompts=prompts)
    for b, (p, r) in enumerate(zip(prompts, ids)):
        pt = decode(tok, tok.encode(p, add_special_tokens=False))
        assert totals["capitalization"][b].item() == _cap(pt + decode(tok, r)) - _cap(pt), texts[b]
    assert totals["capitalization"].tolist() == [-1.0, 0.0, 0.0, -1.0, -1.0, -1.0]


def test_capitalization_every_candidate(tiny):
    _, tok = tiny
    rng = random.Random(1)
    cands = rng.sample(range(len(tok)), 300)
    strings = [tok.decode([a]) for a in cands]
    texts = ["Hi.", "Hi. ", "Hi.\n", "Hi", 'Hi."', "Hi. no"]

    def check(t, dense, ids):
        for b, r in enumerate(ids):
            if t == len(r) - 1:  # before the EOS: every candidate continues the full text
                pre = decode(tok, r[:t])
                want = [float(_cap(pre + s) - _cap(pre)) if "\ufffd" not in s else None for s in strings]
                got = dense[b, cands].tolist()
                assert [g for g, w in zip(got, want) if w is not None] == [w for w in want if w is not None]

    teacher_force(pd.Rewards(tok, [Capitalization()]), tok, texts, check=check)


def test_padded_vocabulary(tiny):
    """Models with padding rows beyond the tokenizer (up to 256): same totals, padding scores 0."""
    _, tok = tiny
    fams = [Repetition(n=2), Length(min_tokens=3, max_tokens=6), WordList(["the"]), Capitalization(first=True)]
    rewards = pd.Rewards(tok, fams)
    V = len(tok) + 64

    def check(t, dense, ids):
        assert (dense[:, len(tok):] == 0).all()

    texts = TEXTS[:6]
    padded, _ = teacher_force(rewards, tok, texts, prompts=["Hi."] * len(texts), vocab=V, check=check)
    plain, _ = teacher_force(rewards, tok, texts, prompts=["Hi."] * len(texts))
    for name in rewards.names:
        assert padded[name].tolist() == plain[name].tolist(), name


# ---------------------------------------------------------------- bad input

def test_bad_arguments(tiny):
    _, tok = tiny
    cases = [
        (lambda: Repetition(n=0), "n must"), (lambda: Repetition(n=1.5), "n must"),
        (lambda: Repetition(n=True), "n must"), (lambda: Repetition(include_prompt="yes"), "include_prompt"),
        (lambda: Repetition(weight=float("inf")), "weight"),
        (lambda: Length(), "min_tokens, max_tokens"), (lambda: Length(min_tokens=-1), "min_tokens"),
        (lambda: Length(max_tokens=2.5), "max_tokens"), (lambda: Length(max_tokens=True), "max_tokens"),
        (lambda: Length(min_tokens=5, max_tokens=2), "min_tokens .5. > max_tokens"),
        (lambda: WordList([]), "words"), (lambda: WordList(None), "words"),
        (lambda: WordList(["ok", " "]), "words"),
        (lambda: WordList(""), "words"), (lambda: WordList([3]), "words"),
        (lambda: WordList(["a"], whole_words="yes"), "whole_words"),
        (lambda: WordList(["a"], ignore_case=1), "ignore_case"),
        (lambda: Capitalization(first=1), "first"), (lambda: Capitalization(weight="1"), "weight"),
        (lambda: pd.rewards.Keywords(["a"], require_all="yes"), "Keywords: require_all must be True or False"),
        (lambda: pd.rewards.Keywords(["a"], ignore_case=None), "Keywords: ignore_case must be True or False"),
    ]
    for make, msg in cases:
        with pytest.raises(ValueError, match=msg):
            make()
    with pytest.raises(ValueError, match="duplicate"):
        pd.Rewards(tok, [Repetition(), Repetition(n=2)])
    pd.Rewards(tok, [Repetition(), Repetition(n=2, name="repetition2")])  # names tell them apart


# ---------------------------------------------------------------- steering on the tiny model

def _gen(model, tok, rewards, steer, **kw):
    # 4 rows: the engine's counter-based RNG costs ~0.1 s a step at [8, 49152] on this CPU
    enc = tok(["I like to eat"] * 4, return_tensors="pt")
    args = dict(do_sample=True, seed=list(range(4)), max_new_tokens=16)
    args.update(kw)
    return pd.generate(model, **enc, rewards=rewards, steer=steer, **args)


def _texts(tok, out):
    return [out.tokens[b][out.mask[b]].tolist() for b in range(out.tokens.shape[0])]


def test_repetition_steering_lowers_repeats(tiny):
    model, tok = tiny
    rewards = pd.Rewards(tok, [Repetition(n=1, weight=-1.0)])
    outs = [_gen(model, tok, rewards, s, top_k=8) for s in (0.0, 4.0)]
    sp = _specials(tok)
    reps = []
    for out in outs:
        rows = _texts(tok, out)
        got = out.reward_components["repetition"].sum(1).tolist()
        assert got == [-float(_repeats([a for a in r if a not in sp], 1)) for r in rows]
        reps.append(-sum(got))
    assert reps[1] < reps[0] / 2, reps


def test_length_steering_shortens(tiny):
    model, tok = tiny
    rewards = pd.Rewards(tok, [Length(max_tokens=4)])
    outs = [_gen(model, tok, rewards, s, top_k=0) for s in (0.0, 16.0)]
    sp = _specials(tok)
    lens = []
    for out in outs:
        rows = _texts(tok, out)
        want = [float(_length(r, sp, None, 4, {tok.eos_token_id})) for r in rows]
        assert out.reward_components["length"].sum(1).tolist() == want
        lens.append(sum(len(r) for r in rows) / len(rows))
    assert lens[1] < lens[0] - 4, lens


def test_wordlist_steering_raises_the_word(tiny):
    model, tok = tiny
    wl = WordList(["apple"], weight=1.0)
    rewards = pd.Rewards(tok, [wl])
    outs = [_gen(model, tok, rewards, s, top_k=0) for s in (0.0, 8.0)]
    counts = []
    for out in outs:
        table = wl.table()
        want = torch.where(out.mask, table[out.tokens], 0.0)
        assert torch.equal(out.reward_components["words"], want)
        counts.append(sum(_word_count(decode(tok, r), ["apple"], False, False) for r in _texts(tok, out)))
    assert counts[1] > counts[0] + 4, counts


def test_capitalization_steering_capitalises(tiny):
    model, tok = tiny
    rewards = pd.Rewards(tok, [Capitalization(first=True)])
    outs = [_gen(model, tok, rewards, s, top_k=0) for s in (0.0, 6.0)]
    scores = []
    for out in outs:
        got = out.reward_components["capitalization"].sum(1)
        for b, r in enumerate(_texts(tok, out)):
            if not any("\ufffd" in tok.decode([a]) for a in r):
                assert got[b].item() == _cap(decode(tok, r), first=True)
        scores.append(got.sum().item())
    assert scores[1] > scores[0] + 3, scores
