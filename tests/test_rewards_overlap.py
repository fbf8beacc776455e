"""Overlap against its oracles: sacrebleu's sentence BLEU and rouge-score's ROUGE-N recall.

Texts come from the seed write-up: its translation example (section 6.3, "即时奖励可以用于训练
模型生成更准确、更流畅的译文", translated) and a summary of its section 1.2 (the summarisation
example of section 6.2), each with reference copies, partial copies, paraphrases, shuffled
words and unrelated sentences as hypotheses.
"""

import random
from collections import Counter

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer
from scipy.stats import spearmanr
from sacrebleu.metrics.bleu import BLEU
from test_rewards import teacher_force

import proxdecode as pd
from proxdecode.rewards.overlap import Overlap

TRANSLATION = "Proximal rewards can be used to train the model to produce more accurate and more fluent translations."
SUMMARY = ("Proximal rewards give the model a feedback signal at every step of generation, which helps it "
           "understand the task and learn a better strategy.")
PARAPHRASES = {
    TRANSLATION: ["Proximal rewards can train the model to produce more accurate and fluent translations.",
                  "Immediate rewards can be used to train models that translate more accurately and fluently.",
                  "With proximal rewards the model can be trained to give translations that are more accurate.",
                  "Rewards can help a translation model.", "The model produces more fluent translations."],
    SUMMARY: ["Proximal rewards give the model a signal at every step, which helps it understand the task.",
              "At every step of generation the model gets a feedback signal from proximal rewards.",
              "Immediate rewards help a model learn the task and a better strategy.",
              "The model learns a better strategy.", "Proximal rewards give feedback."],
}
UNRELATED = ["I like to eat apples and oranges.", "Today is a sunny day in the park.",
             "The stock market fell sharply on Monday.", "Hugging Face Transformers is a popular NLP library."]


def hypotheses(ref):
    words, rnd = ref[:-1].split(), random.Random(0)
    out = [ref, ref[:-1], " ".join(words[: len(words) // 2]), " ".join(words[: 3 * len(words) // 4]) + ".",
           " ".join(words[len(words) // 3:]), ref + " " + ref, ref + " It is also cheap to compute.",
           " ".join(words[::2]) + ".", " ".join(reversed(words)) + ".", ref.lower(), ref.upper()]
    for keep in (len(words), len(words) // 2):
        shuffled = words[:]
        rnd.shuffle(shuffled)
        out.append(" ".join(shuffled[:keep]) + ".")
    return out + PARAPHRASES[ref] + UNRELATED


PAIRS = [(h, r) for r in (TRANSLATION, SUMMARY) for h in hypotheses(r)]  # 44 (hypothesis, reference)


def summed(tok, fam, hyps, eos=True, **start):
    totals, ids = teacher_force(pd.Rewards(tok, [fam]), tok, hyps, eos, **start)
    return totals[fam.name], [i[:-1] if eos else i for i in ids]


def token_bleu(fam, tok, hyp_ids, ref):
    """sacrebleu's sentence-BLEU formula on the reward's token classes, in plain Python."""
    h, r = fam.token_ids(hyp_ids), fam.token_ids(tok.encode(ref, add_special_tokens=False))
    grams = lambda s, k: Counter(tuple(s[i:i + k]) for i in range(len(s) - k + 1))  # noqa: E731
    correct = [sum((grams(h, k) & grams(r, k)).values()) for k in range(1, fam.n + 1)]
    total = [max(len(h) - k + 1, 0) for k in range(1, fam.n + 1)]
    return BLEU.compute_bleu(correct, total, len(h), len(r), smooth_method="exp", effective_order=True,
                             max_ngram_order=fam.n).score / 100


def token_rouge(fam, tok, hyp_ids, ref):
    h, r = fam.token_ids(hyp_ids), fam.token_ids(tok.encode(ref, add_special_tokens=False))
    grams = lambda s: Counter(tuple(s[i:i + fam.n]) for i in range(len(s) - fam.n + 1))  # noqa: E731
    return sum((grams(h) & grams(r)).values()) / sum(grams(r).values())


@pytest.mark.parametrize("kind,n", [("bleu", 4), ("bleu", 2), ("rouge", 2), ("rouge", 1)])
@pytest.mark.parametrize("eos", [True, False])
def test_rewards_sum_to_the_token_level_metric(tiny, kind, n, eos):
    """Exact: BLEU via the potential (EOS or terminal pays the brevity penalty), ROUGE additively."""
    _, tok = tiny
    fam = Overlap([r for _, r in PAIRS], n=n, kind=kind)
    got, ids = summed(tok, fam, [h for h, _ in PAIRS], eos)
    oracle = token_bleu if kind == "bleu" else token_rouge
    want = torch.tensor([oracle(fam, tok, i, r) for i, (_, r) in zip(ids, PAIRS)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bleu", "rouge"])
@pytest.mark.parametrize("text,eos", [
    ("The cat sat on a mat<|im_end|><|im_end|>", None),  # a second EOS pays nothing again
    ("The cat sat on a mat<|im_end|> and the dog on the mat.", None),  # nor text after the EOS
    ("a mat<|im_end|> and the cat sat<|endoftext|> on the mat", "<|endoftext|>"),  # the call's EOS, not the tokenizer's
    ("The cat sat on the mat. on the mat", "."),  # an EOS the metric may count as text
])
def test_settled_once_at_the_calls_first_eos(tiny, kind, text, eos):
    """A row's rewards sum to the metric of its completion: its tokens up to and including
    the first of the call's EOS ids (the tokenizer's when the call names none)."""
    _, tok = tiny
    ref = "The cat sat on the mat."
    fam = Overlap(ref, kind=kind)
    eos_ids = (tok.eos_token_id,) if eos is None else tuple(tok.encode(eos, add_special_tokens=False))
    got, [ids] = summed(tok, fam, [text], eos=False, **({} if eos is None else {"eos_token_ids": eos_ids}))
    end = next(i + 1 for i, a in enumerate(ids) if a in eos_ids)  # the completion ends at its first EOS
    assert end < len(ids)  # something follows it that must not count
    want = (token_bleu if kind == "bleu" else token_rouge)(fam, tok, ids[:end], ref)
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_references_number_one_or_one_per_prompt(tiny):
    """With num_return_sequences = k the rows of prompt p share reference p; any other count
    is refused, naming the argument and the counts allowed."""
    _, tok = tiny
    refs = ["The cat sat on the mat.", "A dog ran in the park."]
    fam = Overlap(refs)
    rewards = pd.Rewards(tok, [fam])
    ids = tok.encode(refs[0], add_special_tokens=False)  # every row writes reference 0
    run = rewards.start(len(tok), 4, "cpu", prompts=2)  # 2 prompts x 2 return sequences
    total = sum(run.record(torch.tensor([a] * 4), torch.ones(4, dtype=torch.bool), torch.zeros(4, len(tok)))
                for a in ids) + run.terminal(4, "cpu")  # [1, 4]
    want = [token_bleu(fam, tok, ids, refs[p]) for p in (0, 0, 1, 1)]
    assert want[0] == pytest.approx(1.0) and want[2] < 0.5
    torch.testing.assert_close(total[0], torch.tensor(want), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"references holds 2 texts for 1 prompt\(s\); give 1$"):
        rewards.start(len(tok), 2, "cpu", prompts=1)  # 1 prompt x 2 return sequences
    with pytest.raises(ValueError, match=r"references holds 2 texts for 3 prompt\(s\); give 1 \(for every row\), "
                                         r"3 \(one per prompt.* or one per run of identical prompts"):
        rewards.start(len(tok), 6, "cpu", prompts=3)
    pd.Rewards(tok, [Overlap(refs[0])]).start(len(tok), 6, "cpu", prompts=3)  # one for all: fine
    # prompts the caller repeated (as trainers do): one reference per run of identical prompts
    same = tok(["Translate:", "Translate:", "Summarise it:", "Summarise it:"], return_tensors="pt", padding=True)
    run = rewards.start(len(tok), 4, "cpu", prompt_ids=same["input_ids"], prompt_mask=same["attention_mask"], prompts=4)
    total = sum(run.record(torch.tensor([a] * 4), torch.ones(4, dtype=torch.bool), torch.zeros(4, len(tok)))
                for a in ids) + run.terminal(4, "cpu")  # [1, 4]
    torch.testing.assert_close(total[0], torch.tensor(want), atol=1e-5, rtol=1e-5)
    mixed = same["input_ids"][[0, 2, 1, 3]]  # [4, P]
    with pytest.raises(ValueError, match="the prompts are not 2 runs of one repeated prompt each"):
        rewards.start(len(tok), 4, "cpu", prompt_ids=mixed, prompt_mask=same["attention_mask"][[0, 2, 1, 3]],
                      prompts=4)
    # a run is judged by its real tokens: whatever fills the padding, and where the padding is
    ids = torch.tensor([[9, 5, 6], [11, 5, 6], [9, 7, 8], [11, 7, 8]])
    rewards.start(len(tok), 4, "cpu", prompt_ids=ids, prompt_mask=torch.tensor([[0, 1, 1]] * 4), prompts=4)
    ids, mask = torch.tensor([[5, 5, 6]] * 2 + [[7, 7, 8]] * 2), torch.tensor([[0, 1, 1], [1, 1, 1]] * 2)
    with pytest.raises(ValueError, match="the prompts are not 2 runs"):  # "5 6" and "5 5 6"
        rewards.start(len(tok), 4, "cpu", prompt_ids=ids, prompt_mask=mask, prompts=4)
    with pytest.raises(ValueError, match="one per run of repeated prompts needs the prompts"):
        rewards.start(len(tok), 4, "cpu", prompts=4)


def _ranks_and_max(tok, kind, metric):
    fam = Overlap([r for _, r in PAIRS], kind=kind)
    got, _ = summed(tok, fam, [h for h, _ in PAIRS])
    want = [metric(h, r) for h, r in PAIRS]
    rho = spearmanr(got.tolist(), want).statistic
    for ref in (TRANSLATION, SUMMARY):
        rows = [i for i, (_, r) in enumerate(PAIRS) if r == ref]
        own = rows[0]  # the reference itself
        assert got[own] >= got[rows].max() - 1e-6, (kind, ref)
    return rho, got


def test_bleu_tracks_sacrebleu(tiny):
    _, tok = tiny
    rho, got = _ranks_and_max(tok, "bleu", lambda h, r: sacrebleu.sentence_bleu(h, [r]).score)
    print(f"Spearman(token BLEU rewards, sacrebleu sentence_bleu) over {len(PAIRS)} texts: {rho:.3f}")
    assert rho >= 0.8
    for ref in (TRANSLATION, SUMMARY):  # BLEU's precision and brevity: the reference is the strict max
        rows = [i for i, (_, r) in enumerate(PAIRS) if r == ref]
        assert got[rows[0]] == pytest.approx(1.0, abs=1e-5)
        assert (got[rows[1:]] < 1.0 - 1e-3).all()


def test_rouge_tracks_rouge_score(tiny):
    _, tok = tiny
    scorer = rouge_scorer.RougeScorer(["rouge2"])
    rho, _ = _ranks_and_max(tok, "rouge", lambda h, r: scorer.score(r, h)["rouge2"].recall)
    print(f"Spearman(token ROUGE-2 rewards, rouge-score rouge2 recall) over {len(PAIRS)} texts: {rho:.3f}")
    assert rho >= 0.8


def test_chinese_reference_split_characters(tiny):
    """The seed's own sentence: characters split over byte tokens keep their own classes."""
    _, tok = tiny
    ref = "即时奖励可以用于训练模型生成更准确、更流畅的译文。"
    hyps = [ref, "即时奖励可以用于训练模型。", "模型生成更流畅的译文。", "今天天气很好。"]
    fam = Overlap(ref)
    got, ids = summed(tok, fam, hyps)
    torch.testing.assert_close(got, torch.tensor([token_bleu(fam, tok, i, ref) for i in ids]))
    assert got[0] == pytest.approx(1.0) and (got[1:] < 0.9).all() and got[3] < got[1]


def test_score_is_a_batch_by_vocab_potential(tiny):
    """A step scores every candidate: reference continuations up, EOS pays the brevity cost."""
    _, tok = tiny
    fam = Overlap("The cat sat on the mat.", kind="bleu")
    rewards = pd.Rewards(tok, [fam])
    run = rewards.start(len(tok), 2, "cpu")
    first = run.score(torch.zeros(2, len(tok)))
    assert first.shape == (2, len(tok))
    the, cat, dog = (tok.encode(w, add_special_tokens=False)[0] for w in ("The", " cat", " dog"))
    assert first[0, the] == first[0, tok.encode(" The", add_special_tokens=False)[0]] > 0  # one class
    assert first[0, tok.eos_token_id] == 0 and first[0, dog] == 0  # no match at all: BLEU 0
    run.record(torch.tensor([the, the]), torch.tensor([True, True]))
    second = run.score(torch.zeros(2, len(tok)))
    assert second[0, cat] > second[0, dog] and second[0, tok.eos_token_id] < 0  # stopping short costs
    assert (second[0, pd.rewards.token_strings(tok)[1]] <= 0).all()
    # a model with padding rows beyond the tokenizer: they score 0 and may even be chosen
    wide = rewards.start(len(tok) + 64, 2, "cpu")
    assert wide.score(torch.zeros(2, len(tok) + 64))[:, len(tok):].abs().sum() == 0
    wide.record(torch.tensor([len(tok) + 3, the]), torch.tensor([True, True]))
    assert wide.score(torch.zeros(2, len(tok) + 64))[1, cat] > 0


def test_generate_rows_per_prompt_and_steering(tiny):
    """One reference per prompt with num_return_sequences; steering raises sacrebleu; the
    recorded rewards of each generated row sum to weight x its token BLEU."""
    model, tok = tiny
    refs = [TRANSLATION, SUMMARY]
    # a match earns ~1 / (n |reference|) ~ 1/80: the weight brings a step's signal to ~1 nat
    fam = Overlap(refs, weight=50.0)
    rewards = pd.Rewards(tok, [fam])
    enc = tok(["Translate:", "Summarise:"], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=24, do_sample=True, top_k=0, num_return_sequences=3, rewards=rewards, seed=[0, 1])
    bleu = {}
    for steer in (0.0, 16.0):
        out = pd.generate(model, **enc, steer=steer, **kw)
        texts = [tok.decode(out.tokens[b][out.mask[b]], skip_special_tokens=True) for b in range(6)]
        for b in range(6):
            want = token_bleu(fam, tok, out.tokens[b][out.mask[b]].tolist(), refs[b // 3])
            assert out.rewards[b].sum().item() == pytest.approx(50.0 * want, abs=1e-3)
        bleu[steer] = sum(sacrebleu.sentence_bleu(t, [refs[b // 3]]).score for b, t in enumerate(texts)) / 6
    print(f"mean sacrebleu of tiny-model rows: unsteered {bleu[0.0]:.1f}, steered {bleu[16.0]:.1f}")
    assert bleu[16.0] > bleu[0.0] + 20, bleu


def test_bad_input(tiny):
    model, tok = tiny
    for refs in ([], "", ["ok", "  "], None):
        with pytest.raises(ValueError, match="references"):
            Overlap(refs)
    with pytest.raises(ValueError, match="n must be"):
        Overlap("a b", n=0)
    with pytest.raises(ValueError, match="kind must be"):
        Overlap("a b", kind="meteor")
    with pytest.raises(ValueError, match=r"references\[0\].*ROUGE-3 needs at least 3"):
        pd.Rewards(tok, [Overlap("a b", n=3, kind="rouge")])
    enc = tok(["a", "b", "c", "d"], return_tensors="pt")
    rewards = pd.Rewards(tok, [Overlap(["x y", "y z", "z w"])])
    says = r"references holds 3 texts for 4 prompt\(s\); give 1 .*, 4 .*\(a count dividing 4\)"
    with pytest.raises(ValueError, match=says):
        pd.generate(model, **enc, rewards=rewards, max_new_tokens=2)
    rewards = pd.Rewards(tok, [Overlap(["x y", "y z"])])  # 2 references, 4 different prompts
    with pytest.raises(ValueError, match=r"2 references for 4 prompts, but the prompts are not 2 runs of one"):
        pd.generate(model, **enc, rewards=rewards, max_new_tokens=2)
    two = tok(["a", "b"], return_tensors="pt")  # 2 prompts x 2 return sequences: fine
    out = pd.generate(model, **two, rewards=rewards, max_new_tokens=2, num_return_sequences=2, do_sample=True)
    assert out.rewards.shape[0] == 4
