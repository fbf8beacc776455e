"""HF's extension points through ``pd.generate``: the config fields HF turns into logits
processors, a caller's ``logits_processor`` and ``prefix_allowed_tokens_fn``, and
``stopping_criteria`` / ``max_time``. Oracles: HF's own ``generate`` (greedy tokens and
scores), HF's processors applied by hand to the model's logits (sampling, where the draws
differ), and plain Python rules on the output. Every case of the tables (GREEDY, WARPERS) and
the criteria's first checks that the argument changed the output, so a silently ignored one
fails."""

import os
import shutil

import numpy as np
import pytest
import torch
from transformers import (LogitsProcessor, LogitsProcessorList, MaxLengthCriteria, StoppingCriteria,
                          StoppingCriteriaList, WatermarkingConfig)
from transformers.generation.logits_process import (EpsilonLogitsWarper, EtaLogitsWarper, NoRepeatNGramLogitsProcessor,
                                                    RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopHLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
                                                    TypicalLogitsWarper, WatermarkLogitsProcessor)

import proxdecode as pd
from conftest import assert_verbose_allclose

VOCAB = 49152  # the default tokenizer's, which the tiny model shares (test_vocab_is_the_tokenizers)


@pytest.fixture(scope="module")
def enc(tiny):
    _, tok = tiny
    return tok(["I like to eat", "Today is a very nice day and"], return_tensors="pt", padding=True)


class BanEvenIdsAfter(LogitsProcessor):
    """A caller's processor, HF style: writes into the scores it is given, reads the length."""

    def __init__(self, start):
        self.start = start

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] >= self.start:
            scores[:, ::2] = float("-inf")
        return scores


def _prefix_fn(batch_id, input_ids):  # row 0 may only say ids 300..399, row 1 ids 1000..1099
    return list(range(300, 400)) if batch_id == 0 else list(range(1000, 1100))


# the tiny model's greedy rows say 3134 (row 0) and 284, then 3937 (row 1) over and over
GREEDY = {
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
    "bad_words_ids": dict(bad_words_ids=[[3134], [284, 284]]),
    "sequence_bias": dict(sequence_bias={(3134,): -20.0, (284, 284): -5.0}),
    "suppress_tokens": dict(suppress_tokens=[3134, 3937]),
    "begin_suppress_tokens": dict(begin_suppress_tokens=[3134, 284]),
    "min_length": dict(min_length=16, eos_token_id=3134),  # row 0 would end at once
    "min_new_tokens_over_min_length": dict(min_length=17, min_new_tokens=2, eos_token_id=3937),  # HF: the latter wins
    "forced_eos_token_id": dict(forced_eos_token_id=7),
    "exponential_decay_length_penalty": dict(exponential_decay_length_penalty=(2, 3.0), eos_token_id=500),
    "logits_processor": dict(logits_processor=LogitsProcessorList([BanEvenIdsAfter(10)])),
    "prefix_allowed_tokens_fn": dict(prefix_allowed_tokens_fn=_prefix_fn),
    "watermarking_config": dict(watermarking_config=WatermarkingConfig(bias=5.0)),  # HF's, greedy too
    "guidance_scale": dict(guidance_scale=3.0),  # HF's processor runs the model on the unconditional prompt
    "penalty_ngram_min_new": dict(repetition_penalty=1.5, no_repeat_ngram_size=3, min_new_tokens=4,
                                  eos_token_id=3134),
}

# what a case must change HF's output against (default: plain greedy with the case's EOS)
BASELINE = {"min_new_tokens_over_min_length": dict(min_length=17, eos_token_id=3937)}


def _logits(model, out, enc):
    """``[B, P+T, V]`` float32 logits of the model teacher-forced on a rollout's sequences."""
    with torch.inference_mode():
        mask = torch.cat([enc["attention_mask"], out.mask.long()], 1)
        return model(out.sequences, attention_mask=mask).logits.float()


def test_vocab_is_the_tokenizers(tiny):
    model, tok = tiny
    assert pd.config.model_vocab(model) == len(tok) == VOCAB


@pytest.mark.parametrize("case", GREEDY)
def test_greedy_is_hfs_with_its_processors(tiny, enc, case):
    model, _ = tiny
    kw = GREEDY[case]
    args = dict(max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_scores=True)
    hf, ours = model.generate(**enc, **args, **kw), pd.generate(model, **enc, **args, **kw)
    base = BASELINE.get(case, {k: v for k, v in kw.items() if k == "eos_token_id"})
    plain = model.generate(**enc, max_new_tokens=12, do_sample=False, **base)
    assert not torch.equal(hf.sequences, plain), f"{case} must change HF's output, or it is not tested"
    assert torch.equal(ours.sequences, hf.sequences), (case, ours.sequences, hf.sequences)
    for t, (a, b) in enumerate(zip(ours.scores, hf.scores)):
        assert_verbose_allclose(a, b, atol=1e-5, rtol=1e-5, name=f"{case} scores, step {t}")
    # the policy's log-probs stay the model's own, before any processor
    P = enc["input_ids"].shape[1]
    raw = _logits(model, ours, enc)[:, P - 1:-1].log_softmax(-1).gather(2, ours.tokens[..., None])[..., 0]
    assert_verbose_allclose(ours.policy_logprobs[ours.mask], raw[ours.mask], atol=1e-4, rtol=1e-4,
                            name=f"{case} policy_logprobs")


def test_forced_eos_reads_the_configs_length_under_a_callers_max_length(tiny, enc):
    """HF's ForcedEOS forces EOS one token before the config's length, even where a caller's
    MaxLengthCriteria sets another: shorter (never forced) or longer (forced, then on)."""
    model, _ = tiny
    P = enc["input_ids"].shape[1]
    for length in (P + 5, P + 16):
        kw = dict(max_new_tokens=12, do_sample=False, forced_eos_token_id=7,
                  stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(max_length=length)]))
        hf = model.generate(**enc, **kw)
        assert torch.equal(pd.generate(model, **enc, **kw), hf), length


def test_ids_as_hf_takes_them(tiny, enc):
    """numpy and torch integers, and the empty suppress lists HF reads as "nothing" (a model
    config may carry one: it must not make every call fail)."""
    model, _ = tiny
    for kw in (dict(bad_words_ids=[[np.int64(3134)]]), dict(forced_eos_token_id=torch.tensor(7)),
               dict(suppress_tokens=torch.tensor([3134])), dict(suppress_tokens=[], begin_suppress_tokens=[]),
               dict(exponential_decay_length_penalty=(2.0, 3.0), eos_token_id=500)):
        args = dict(max_new_tokens=12, do_sample=False, **kw)
        assert torch.equal(pd.generate(model, **enc, **args), model.generate(**enc, **args)), kw
    gc = model.generation_config
    try:
        gc.suppress_tokens = []
        assert torch.equal(pd.generate(model, **enc, max_new_tokens=4), model.generate(**enc, max_new_tokens=4))
    finally:
        gc.suppress_tokens = None


def test_guidance_with_a_negative_prompt(tiny, enc):
    model, tok = tiny
    neg = tok(["I hate", "Terrible"], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=8, do_sample=False, guidance_scale=3.0, negative_prompt_ids=neg["input_ids"],
              negative_prompt_attention_mask=neg["attention_mask"])
    hf = model.generate(**enc, **kw)
    assert not torch.equal(hf, model.generate(**enc, max_new_tokens=8, do_sample=False, guidance_scale=3.0))
    assert torch.equal(pd.generate(model, **enc, **kw), hf)


def test_processors_run_before_the_warpers_when_sampling(tiny, enc):
    """Sampling draws differ from HF's, so the oracle is HF's processors applied by hand, in
    HF's order, to the model's logits of pd's own rows (``output_logits``, HF's in
    ``test_hf_compat``; logits recomputed by another forward could differ in the last bit
    and flip a token at a cutoff): repetition penalty, no-repeat n-gram, the caller's
    processor, then temperature and top-k. pd's scores must be exactly those."""
    model, _ = tiny
    ids, mask = enc["input_ids"], enc["attention_mask"]
    kw = dict(repetition_penalty=1.3, no_repeat_ngram_size=2, temperature=0.7, top_k=20,
              logits_processor=LogitsProcessorList([BanEvenIdsAfter(9)]))
    out = pd.generate(model, **enc, max_new_tokens=10, do_sample=True, seed=3, return_dict_in_generate=True,
                      output_scores=True, output_logits=True, **kw)
    padding = (mask == 0).sum(1)  # [B] left padding, which the installed HF's penalty skips
    oracle = LogitsProcessorList([
        RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=padding), NoRepeatNGramLogitsProcessor(2),
        BanEvenIdsAfter(9), TemperatureLogitsWarper(0.7), TopKLogitsWarper(20)])
    P = ids.shape[1]
    for t, got in enumerate(out.scores):
        want = oracle(out.sequences[:, : P + t], out.logits[t].clone())
        assert_verbose_allclose(got, want, atol=1e-4, rtol=1e-4, name=f"scores, step {t}")
    seqs = out.sequences[:, P:].tolist()
    for row, keep in zip(seqs, out.mask.tolist()):  # no 2-gram twice (prompt included), a plain loop
        row = [a for a, k in zip(row, keep) if k]
        pairs = list(zip(row, row[1:]))
        assert len(pairs) == len(set(pairs)), row


# warpers the step does not fuse: HF's whole list runs, then the step only draws. Oracle: the
# whole list built by hand in HF's order (temperature, top-h, top-k, top-p, min-p, typical,
# epsilon, eta; the watermark last), around the warpers the fused step alone would apply
TEMPERATURE, TOP_K, TOP_P = TemperatureLogitsWarper(0.8), TopKLogitsWarper(200), TopPLogitsWarper(0.95)
WARPERS = {
    "typical_p": (dict(typical_p=0.9), [TEMPERATURE, TOP_K, TOP_P, TypicalLogitsWarper(0.9)]),
    "epsilon_cutoff": (dict(epsilon_cutoff=0.005),  # cuts inside the top 200 of the tiny model
                       [TEMPERATURE, TOP_K, TOP_P, EpsilonLogitsWarper(0.005)]),
    "eta_cutoff": (dict(eta_cutoff=0.9), [TEMPERATURE, TOP_K, TOP_P, EtaLogitsWarper(0.9)]),
    "top_h": (dict(top_h=0.5), [TEMPERATURE, TopHLogitsWarper(top_h=0.5), TOP_K, TOP_P]),
    "watermarking_config": (dict(watermarking_config=WatermarkingConfig(bias=2.0)),
                            [TEMPERATURE, TOP_K, TOP_P, WatermarkLogitsProcessor(VOCAB, "cpu", bias=2.0)]),
}


@pytest.mark.parametrize("case", WARPERS)
def test_sampling_with_warpers_the_step_does_not_fuse(tiny, enc, case):
    model, _ = tiny
    kw, hf_order = WARPERS[case]
    out = pd.generate(model, **enc, max_new_tokens=8, do_sample=True, temperature=0.8, top_k=200, top_p=0.95,
                      seed=2, return_dict_in_generate=True, output_scores=True, output_logits=True, **kw)
    oracle = LogitsProcessorList(hf_order)
    unfused = LogitsProcessorList([TEMPERATURE, TOP_K, TOP_P])  # what the fused step alone would keep
    P = enc["input_ids"].shape[1]
    changed = False
    for t, got in enumerate(out.scores):  # on pd's own logits, as in the test above
        ids, z = out.sequences[:, : P + t], out.logits[t]
        want = oracle(ids, z.clone())
        assert_verbose_allclose(got, want, atol=1e-4, rtol=1e-4, name=f"{case} scores, step {t}")
        changed |= not torch.equal(want, unfused(ids, z.clone()))
    assert changed, f"{case} must change the scores, or it is not tested"
    # greedy: HF's warpers do nothing (the watermark is a processor and stays)
    if case != "watermarking_config":
        greedy = dict(max_new_tokens=8, do_sample=False, **kw)
        assert torch.equal(pd.generate(model, **enc, **greedy), model.generate(**enc, **greedy))


def test_steering_inside_the_set_hfs_warpers_leave(tiny, enc):
    """Steered, greedy or not: the warpers choose the candidates (as the fused ones do), the
    steering reweights inside them. Every token is in HF's set; steering moves the choice."""
    model, tok = tiny
    rewards = pd.Rewards(tok, [pd.rewards.WordList(["the"], whole_words=False)])
    P = enc["input_ids"].shape[1]
    for do_sample in (True, False):
        kw = dict(max_new_tokens=8, do_sample=do_sample, top_k=200, typical_p=0.5, seed=1, rewards=rewards,
                  output_logits=True)
        out, free = pd.generate(model, **enc, **kw, steer=20.0), pd.generate(model, **enc, **kw, steer=0.0)
        assert not torch.equal(out.tokens, free.tokens), "steering must move the choice, or it is not tested"
        oracle = LogitsProcessorList([TopKLogitsWarper(200), TypicalLogitsWarper(0.5)])
        for t in range(8):
            allowed = torch.isfinite(oracle(out.sequences[:, : P + t], out.logits[t].clone()))  # [B, V]
            picked = allowed.gather(1, out.tokens[:, t : t + 1])[:, 0]
            assert (picked | ~out.mask[:, t]).all(), (do_sample, t)


def test_processors_with_rewards_and_steering(tiny, enc):
    """Steering works on what HF's processors leave: the tokens steering picked are banned, and
    steering then finds other tokens with the word, never those; the rewards still sum."""
    model, tok = tiny
    rewards = pd.Rewards(tok, [pd.rewards.WordList(["the"], whole_words=False), pd.rewards.Fluency(weight=0.1)])
    kw = dict(max_new_tokens=10, do_sample=True, top_k=0, seed=0, rewards=rewards, steer=50.0)
    free = pd.generate(model, **enc, **kw)
    banned = sorted(set(free.tokens[free.mask].tolist()))
    assert free.reward_components["words"].sum() > 0, "steering must find the word, or nothing is tested"
    out = pd.generate(model, **enc, **kw, bad_words_ids=[[t] for t in banned])
    assert not torch.isin(out.tokens[out.mask], torch.tensor(banned)).any()
    assert out.reward_components["words"].sum() > 0
    assert_verbose_allclose(out.rewards, sum(out.reward_components.values()), atol=1e-6, rtol=1e-6, name="rewards")


class StopAfterToken(StoppingCriteria):
    """A caller's criterion that also records the scores HF passes it."""

    def __init__(self, token):
        self.token, self.scores_seen = token, []

    def __call__(self, input_ids, scores, **kwargs):
        self.scores_seen.append(None if scores is None else [s.clone() for s in scores])
        return input_ids[:, -1] == self.token


def _forwards(model, monkeypatch):
    """Counts the model's forwards (prefill and steps)."""
    calls, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **kw: calls.append(1) or forward(*a, **kw))
    return calls


@pytest.mark.parametrize("keep", [False, True])
def test_callers_stopping_criteria_as_hfs(tiny, enc, keep):
    """A criterion stops its row where HF's does, sees what HF shows it (None, or the tuple of
    scores so far when return_dict_in_generate and output_scores keep them), and the loop
    stops once every row has: no more forwards than HF's."""
    model, _ = tiny
    plain = model.generate(**enc, max_new_tokens=12, do_sample=False)
    P = enc["input_ids"].shape[1]
    token = int(plain[1, P + 9])  # row 1 says 3937 first at step 9: it stops there, row 0 runs on
    args = dict(max_new_tokens=12, do_sample=False, return_dict_in_generate=keep, output_scores=keep)
    hf_crit, pd_crit = StopAfterToken(token), StopAfterToken(token)
    hf = model.generate(**enc, **args, stopping_criteria=StoppingCriteriaList([hf_crit]))
    ours = pd.generate(model, **enc, **args, stopping_criteria=[pd_crit])
    hf_seqs, pd_seqs = (hf.sequences, ours.sequences) if keep else (hf, ours)
    assert not torch.equal(hf_seqs, plain), "the criterion must stop a row early, or it is not tested"
    assert torch.equal(pd_seqs, hf_seqs), (pd_seqs, hf_seqs)
    assert len(pd_crit.scores_seen) == len(hf_crit.scores_seen)
    for t, (a, b) in enumerate(zip(pd_crit.scores_seen, hf_crit.scores_seen)):
        assert (a is None) == (b is None) == (not keep)
        if keep:
            assert len(a) == len(b) == t + 1
            assert_verbose_allclose(a[-1], b[-1], atol=1e-5, rtol=1e-5, name=f"criterion's scores, step {t}")


def test_max_time_and_a_callers_max_length(tiny, enc, monkeypatch):
    model, _ = tiny
    P = enc["input_ids"].shape[1]
    calls = _forwards(model, monkeypatch)
    # max_time: HF checks it after each token; a budget of 0 s stops every row after the first
    hf = model.generate(**enc, max_new_tokens=12, do_sample=False, max_time=0.0)
    hf_calls = len(calls)
    ours = pd.generate(model, **enc, max_new_tokens=12, do_sample=False, max_time=0.0)
    assert hf.shape[1] == P + 1 and torch.equal(ours, hf)
    assert len(calls) - hf_calls == hf_calls, "pd must stop its loop when HF does, not run on masked"
    # a caller's MaxLengthCriteria replaces the length from the config in HF's merge: shorter or longer
    for length in (P + 5, P + 16):
        crit = StoppingCriteriaList([MaxLengthCriteria(max_length=length)])
        hf = model.generate(**enc, max_new_tokens=12, do_sample=False, stopping_criteria=crit)
        assert hf.shape[1] == length
        assert torch.equal(pd.generate(model, **enc, max_new_tokens=12, do_sample=False, stopping_criteria=crit), hf)


class BanAllOfRow0(LogitsProcessor):
    def __call__(self, input_ids, scores):
        scores[0] = float("-inf")
        return scores


def test_a_processor_that_leaves_no_token_is_reported(tiny, enc):
    model, _ = tiny
    match = "after the logits processors, had .* rows \\[0\\] .first at step 0"
    with pytest.raises(pd.NonFiniteLogitsError, match=match):
        pd.generate(model, **enc, max_new_tokens=4, logits_processor=[BanAllOfRow0()])


def test_remove_invalid_values_is_hfs_way_past_nan_logits(tiny, enc):
    """A NaN column in the model's logits: refused as always, unless the caller asks HF's
    ``remove_invalid_values``, whose processor zeroes it; then the output is HF's."""
    model, _ = tiny
    head = model.get_output_embeddings().weight
    keep = head[3134].clone()
    args = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_scores=True)
    try:
        with torch.no_grad():
            head[3134] = float("nan")
        with pytest.raises(pd.NonFiniteLogitsError, match="the model's logits had NaN"):
            pd.generate(model, **enc, **args)
        hf = model.generate(**enc, **args, remove_invalid_values=True)
        ours = pd.generate(model, **enc, **args, remove_invalid_values=True)
    finally:
        with torch.no_grad():
            head[3134] = keep
    assert torch.equal(ours.sequences, hf.sequences)
    for t, (a, b) in enumerate(zip(ours.scores, hf.scores)):
        assert_verbose_allclose(a, b, atol=1e-5, rtol=1e-5, name=f"scores, step {t}")
    assert torch.isfinite(ours.policy_logprobs).all(), "the policy reads the repaired logits, as the step does"


@pytest.mark.parametrize("kw, err, match", [
    (dict(logits_processor=BanEvenIdsAfter(3)), TypeError, "logits_processor must be a list"),
    (dict(logits_processor=[object()]), TypeError, "logits_processor must hold callables"),
    (dict(stopping_criteria=[5]), TypeError, "stopping_criteria must hold callables"),
    (dict(prefix_allowed_tokens_fn=[1, 2]), TypeError, "prefix_allowed_tokens_fn must be callable"),
    (dict(no_repeat_ngram_size=-1), ValueError, "no_repeat_ngram_size must be an integer >= 0"),
    (dict(min_length=1.5), ValueError, "min_length must be an integer >= 0"),
    (dict(max_time=-1.0), ValueError, "max_time must be a finite number"),
    (dict(max_time=float("inf")), ValueError, "max_time must be a finite number"),
    (dict(bad_words_ids=[[-3]]), ValueError, "bad_words_ids must be a list of non-empty lists of token ids"),
    (dict(bad_words_ids=[[10**7]]), ValueError, rf"bad_words_ids must be .* \(ids in \[0, {VOCAB}\)\)"),
    (dict(begin_suppress_tokens=5), ValueError, "begin_suppress_tokens must be a list of token ids"),
    (dict(suppress_tokens="abc"), ValueError, "suppress_tokens must be a list of token ids"),
    (dict(forced_eos_token_id=10**7), ValueError, "forced_eos_token_id must be a token id or a list of them"),
    (dict(forced_bos_token_id=True), ValueError, "forced_bos_token_id must be a token id"),
    (dict(sequence_bias={(10**7,): 1.0}), ValueError, "sequence_bias keys must be non-empty sequences of token ids"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale must be a finite number"),
    (dict(negative_prompt_ids=[[1, 2]]), TypeError, "negative_prompt_ids must be an integer tensor"),
    (dict(guidance_scale=2.0, negative_prompt_ids=torch.ones(1, 3, dtype=torch.long)), ValueError,
     r"negative_prompt_ids must have one row per generated row \(2"),
    (dict(guidance_scale=2.0, negative_prompt_ids=torch.full((2, 3), 10**7)), ValueError,
     rf"negative_prompt_ids must be token ids in \[0, {VOCAB}\)"),
    (dict(guidance_scale=2.0, negative_prompt_ids=torch.ones(2, 3, dtype=torch.long),
          negative_prompt_attention_mask=torch.ones(2, 4, dtype=torch.long)), ValueError,
     "negative_prompt_attention_mask must have the shape of negative_prompt_ids"),
    (dict(negative_prompt_attention_mask=torch.ones(2, 4, dtype=torch.long)), ValueError,
     "negative_prompt_attention_mask without negative_prompt_ids"),
    (dict(negative_prompt_ids=torch.ones(2, 3, dtype=torch.long)), ValueError,
     "negative_prompt_ids is read only with guidance_scale != 1"),
    (dict(typical_p=1.5), ValueError, r"typical_p must be in \(0, 1\]"),  # HF skips it silently
    (dict(epsilon_cutoff=1.0, do_sample=False), ValueError, r"epsilon_cutoff must be in \[0, 1\)"),
    (dict(eta_cutoff=-0.1), ValueError, r"eta_cutoff must be in \[0, 1\)"),
    (dict(exponential_decay_length_penalty=(2,)), ValueError, r"exponential_decay_length_penalty must be \(start"),
    (dict(stopping_criteria=[MaxLengthCriteria(max_length=3)]), ValueError,
     "MaxLengthCriteria.max_length=3. must be an integer above the prompt length 7"),
])
def test_bad_processor_arguments_are_refused_before_the_model_runs(tiny, enc, monkeypatch, kw, err, match):
    model, _ = tiny

    def boom(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(model, "forward", boom)
    with pytest.raises(err, match=match):
        pd.generate(model, **enc, max_new_tokens=3, **kw)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor needs a C++ compiler")
def test_processors_before_a_compiled_step(tiny, enc):
    """With ``compile`` and rewards the step after the forward is one compiled graph; HF's
    processors run eager before it, and the rollout is the eager one's."""
    from transformers import CompileConfig

    model, tok = tiny
    rewards = pd.Rewards(tok, [pd.rewards.Sentiment(), pd.rewards.EndsWith(".", weight=0.5)])
    kw = dict(max_new_tokens=8, do_sample=True, top_k=40, seed=5, rewards=rewards, steer=1.0,
              no_repeat_ngram_size=2, repetition_penalty=1.2, min_new_tokens=2, suppress_tokens=[3134])
    want = pd.generate(model, **enc, **kw, backend="torch")
    got = pd.generate(model, **enc, **kw, compile=True, compile_config=CompileConfig(dynamic=False))
    assert torch.equal(got.sequences, want.sequences)
    assert_verbose_allclose(got.logprobs, want.logprobs, 1e-5, 1e-5, "logprobs")
    assert_verbose_allclose(got.policy_logprobs, want.policy_logprobs, 1e-5, 1e-5, "policy_logprobs")
    assert_verbose_allclose(got.rewards, want.rewards, 1e-5, 1e-5, "rewards")
