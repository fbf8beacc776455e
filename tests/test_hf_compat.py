"""The drop-in contract at its edges, HF's own ``generate`` the oracle: the ways HF takes a
prompt and a config, its default length, greedy scores, stop strings set in a config, and
the inert values of arguments this engine does not implement."""

import numpy as np
import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.generation.stopping_criteria import EosTokenCriteria

import proxdecode as pd


@pytest.fixture(scope="module")
def enc(tiny):
    _, tok = tiny
    return tok(["I like to eat", "Today is a very nice day and"], return_tensors="pt", padding=True)


def _same(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(a, b), (a, b)


def test_no_length_given_means_20_new_tokens_as_in_hf(tiny, enc):
    model, tok = tiny
    _same(pd.generate(model, **enc), model.generate(**enc))
    long = tok(["word " * 30], return_tensors="pt")  # a prompt longer than 20 tokens
    _same(pd.generate(model, **long), model.generate(**long))


def test_a_max_length_somebody_set_counts_the_prompt(tiny, enc):
    model, _ = tiny
    gc = GenerationConfig(max_length=12)
    _same(pd.generate(model, **enc, generation_config=gc), model.generate(**enc, generation_config=gc))


def test_hf_ways_to_pass_prompt_and_config(tiny, enc):
    model, _ = tiny
    ids = enc["input_ids"][1:]
    gc = GenerationConfig(max_new_tokens=6)
    _same(pd.generate(model, ids, gc), model.generate(ids, gc))  # generate(inputs, generation_config)
    _same(pd.generate(model, inputs=ids, max_new_tokens=6), model.generate(inputs=ids, max_new_tokens=6))
    _same(pd.generate(model, max_new_tokens=6), model.generate(max_new_tokens=6))  # from BOS
    _same(pd.generate(model, input_ids=ids, inputs=None, max_new_tokens=6), model.generate(ids, max_new_tokens=6))
    with pytest.raises(TypeError, match=r"input_ids given twice, by position and as inputs= \(inputs= is HF's"):
        pd.generate(model, ids, inputs=ids, max_new_tokens=2)
    with pytest.raises(TypeError, match="input_ids given twice, as inputs= and as input_ids= .inputs= is HF's"):
        pd.generate(model, inputs=ids, input_ids=ids, max_new_tokens=2)


def test_config_by_position_with_the_mask_by_keyword(tiny, enc):
    """HF's ``generate(ids, gc, attention_mask=m)``: the second place holds the config, the
    mask comes by keyword; and every prompt argument by keyword, as ``**enc`` passes them."""
    model, _ = tiny
    ids, mask = enc["input_ids"], enc["attention_mask"].clone()
    mask[1, :4] = 0  # masks the unpadded row's first words: a mask no inference from ids gives
    gc = GenerationConfig(max_new_tokens=6)
    hf = model.generate(ids, gc, attention_mask=mask)
    assert not torch.equal(model.generate(ids, gc), hf), "the mask must change the output, or it is not tested"
    _same(pd.generate(model, ids, gc, attention_mask=mask), hf)
    _same(pd.generate(model, ids, mask, generation_config=gc), hf)  # the mask by position: pd's signature
    _same(pd.generate(model, input_ids=ids, attention_mask=mask, generation_config=gc), hf)
    with pytest.raises(TypeError, match="attention_mask given twice, by position and as attention_mask=; pass"):
        pd.generate(model, ids, mask, attention_mask=mask, max_new_tokens=2)
    with pytest.raises(TypeError, match="input_ids given twice, by position and as input_ids=; pass one"):
        pd.generate(model, ids, input_ids=ids, max_new_tokens=2)


def test_inert_values_of_unimplemented_arguments_are_accepted(tiny, enc):
    model, _ = tiny
    inert = dict(num_beams=1, logits_processor=LogitsProcessorList(), stopping_criteria=None,
                 output_logits=False, synced_gpus=False, assistant_model=None, custom_generate=None,
                 prefix_allowed_tokens_fn=None, min_length=0)
    _same(pd.generate(model, **enc, max_new_tokens=6, **inert), model.generate(**enc, max_new_tokens=6, **inert))
    # beam search's own fields: HF ignores them at any value without beams
    beams_only = dict(length_penalty=0.5, early_stopping=True, low_memory=True)
    _same(pd.generate(model, **enc, max_new_tokens=6, **beams_only),
          model.generate(**enc, max_new_tokens=6, **beams_only))


@pytest.mark.parametrize("kw", [dict(temperature=0.5, top_k=10, top_p=0.8), dict(temperature=0.0),
                                dict(repetition_penalty=1.3, min_p=0.2)])
def test_greedy_scores_are_hfs_processed_logits_without_warpers(tiny, enc, kw):
    """HF applies no temperature, top-k, top-p or min-p in greedy mode: neither do the
    tokens, the scores or the log-probs here."""
    model, _ = tiny
    args = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_scores=True, **kw)
    ours, hf = pd.generate(model, **enc, **args), model.generate(**enc, **args)
    _same(ours.sequences, hf.sequences)
    for t, (a, b) in enumerate(zip(ours.scores, hf.scores)):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-5, msg=f"step {t}")
    want = torch.stack([torch.log_softmax(s.float(), -1) for s in hf.scores], 1)  # [B, T, V]
    want = want.gather(2, ours.tokens[..., None])[..., 0]
    torch.testing.assert_close(ours.logprobs, want, rtol=1e-5, atol=1e-5)


def test_return_dict_is_hfs_output_type(tiny, enc):
    model, _ = tiny
    out = pd.generate(model, **enc, max_new_tokens=3, return_dict_in_generate=True)
    assert isinstance(out, GenerateDecoderOnlyOutput) and isinstance(out, pd.Rollout)
    assert out.logits is None and out.attentions is None and out.hidden_states is None
    _same(out[0], out.sequences)


def test_stop_strings_set_in_a_generation_config_stop_as_in_hf(tiny, enc):
    model, tok = tiny
    free = model.generate(**enc, max_new_tokens=12)
    P = enc["input_ids"].shape[1]
    stop = tok.decode(free[1, P + 4: P + 5]).strip()  # a string row 1 reaches at its 5th token
    assert stop
    gc = GenerationConfig(max_new_tokens=12, stop_strings=[stop])
    hf = model.generate(**enc, generation_config=gc, tokenizer=tok)
    assert hf.shape[1] < free.shape[1] or (hf != free).any()  # the oracle did stop somewhere
    _same(pd.generate(model, **enc, generation_config=gc, tokenizer=tok), hf)


def test_output_logits_and_renormalize_logits_as_in_hf(tiny, enc):
    """``output_logits``: the raw logits of every step, HF's. ``renormalize_logits``: the scores
    become log-probs (HF's ``LogitNormalization``, its last processor) and nothing else changes:
    greedy against HF, sampled against the same seed's run without it."""
    model, _ = tiny
    args = dict(max_new_tokens=5, return_dict_in_generate=True, output_scores=True, output_logits=True)
    hf = model.generate(**enc, **args, do_sample=False, renormalize_logits=True, repetition_penalty=1.3)
    ours = pd.generate(model, **enc, **args, do_sample=False, renormalize_logits=True, repetition_penalty=1.3)
    _same(ours.sequences, hf.sequences)
    assert len(ours.logits) == len(hf.logits) == 5
    for t in range(5):
        torch.testing.assert_close(ours.logits[t], hf.logits[t].float(), rtol=1e-5, atol=1e-5, msg=f"logits {t}")
        torch.testing.assert_close(ours.scores[t], hf.scores[t].float(), rtol=1e-5, atol=1e-5, msg=f"scores {t}")
    assert not torch.allclose(ours.scores[0], ours.logits[0]), "renormalising must change the scores"
    sampled = dict(max_new_tokens=6, do_sample=True, top_k=30, temperature=0.8, seed=4, return_dict_in_generate=True,
                   output_scores=True)
    plain, renorm = pd.generate(model, **enc, **sampled), pd.generate(model, **enc, **sampled, renormalize_logits=True)
    _same(renorm.sequences, plain.sequences)
    for t, (a, b) in enumerate(zip(renorm.scores, plain.scores)):
        torch.testing.assert_close(a, torch.log_softmax(b, -1), rtol=1e-5, atol=1e-5, msg=f"step {t}")
    assert plain.logits is None


def test_output_hidden_states_as_in_hf(tiny, enc):
    """Per step, HF's tuple of every layer's hidden states (and the embeddings') of the forward
    that gave that step's logits: the prompt's [B, P, H] first, then [B, 1, H]; with rewards
    too, where a value head would read them."""
    model, tok = tiny
    args = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_hidden_states=True)
    hf, ours = model.generate(**enc, **args), pd.generate(model, **enc, **args)
    _same(ours.sequences, hf.sequences)
    assert len(ours.hidden_states) == len(hf.hidden_states) == 5
    B, P = enc["input_ids"].shape
    for t, (a, b) in enumerate(zip(ours.hidden_states, hf.hidden_states)):
        assert len(a) == len(b) == model.config.num_hidden_layers + 1
        assert a[0].shape == (B, P if t == 0 else 1, model.config.hidden_size)
        for layer, (x, y) in enumerate(zip(a, b)):
            # left-padded positions of the prompt carry no meaning: compared where the mask is 1
            keep = enc["attention_mask"].bool() if t == 0 else torch.ones(B, 1, dtype=torch.bool)
            torch.testing.assert_close(x[keep], y[keep], rtol=1e-4, atol=1e-4, msg=f"step {t}, layer {layer}")
    steered = pd.generate(model, **enc, **args, rewards=pd.Rewards(tok, [pd.rewards.Sentiment()]), steer=1.0)
    assert len(steered.hidden_states) == steered.tokens.shape[1]
    assert pd.generate(model, **enc, max_new_tokens=2, return_dict_in_generate=True).hidden_states is None


def test_output_attentions_as_in_hf(enc):
    """Per step, every layer's attention weights, as HF returns them: with eager attention the
    [B, heads, n, keys] weights (n = P for the prompt, then 1); with sdpa, which computes
    none, HF's empty tuples."""
    model, _ = pd.random_model("tiny", seed=0)  # its own copy: the attention implementation changes
    args = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_attentions=True)
    sdpa_hf, sdpa_pd = model.generate(**enc, **args), pd.generate(model, **enc, **args)
    assert sdpa_pd.attentions == sdpa_hf.attentions == ((),) * 4
    model.set_attn_implementation("eager")
    hf, ours = model.generate(**enc, **args), pd.generate(model, **enc, **args)
    _same(ours.sequences, hf.sequences)
    B, P = enc["input_ids"].shape
    for t, (a, b) in enumerate(zip(ours.attentions, hf.attentions)):
        assert len(a) == len(b) == model.config.num_hidden_layers
        assert a[0].shape == (B, model.config.num_attention_heads, P if t == 0 else 1, P + t)
        for layer, (x, y) in enumerate(zip(a, b)):
            rows = enc["attention_mask"].bool() if t == 0 else torch.ones(B, 1, dtype=torch.bool)
            torch.testing.assert_close(x.transpose(1, 2)[rows], y.transpose(1, 2)[rows], rtol=1e-4, atol=1e-4,
                                       msg=f"step {t}, layer {layer}")


def test_attentions_with_the_static_cache_and_without_a_cache(enc):
    """pd's static cache: each step's keys span all P + T slots, HF's values on the first
    P + t and zero after; use_cache=False, where HF's span the whole sequence, is refused."""
    model, _ = pd.random_model("tiny", seed=0)
    model.set_attn_implementation("eager")
    args = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_attentions=True)
    hf = model.generate(**enc, **args)
    ours = pd.generate(model, **enc, **args, cache_implementation="static")
    _same(ours.sequences, hf.sequences)
    B, P = enc["input_ids"].shape
    for t in range(1, 4):
        for x, y in zip(ours.attentions[t], hf.attentions[t]):
            assert x.shape[-1] == P + 4 and y.shape[-1] == P + t
            torch.testing.assert_close(x[..., : P + t], y, rtol=1e-4, atol=1e-4, msg=f"step {t}")
            assert not x[..., P + t:].any()
    with pytest.raises(ValueError, match="use_cache=False: HF then returns every position"):
        pd.generate(model, **enc, **args, use_cache=False)


def _free_run(model, enc, n=10):
    """HF's greedy tokens without any EOS: the ids a test can make stop a row where it wants."""
    P = enc["input_ids"].shape[1]
    return model.generate(**enc, max_new_tokens=n, eos_token_id=None, pad_token_id=0)[:, P:]


def _first_new(free, row, at):
    """An id that row ``row`` first says at step ``at`` or later, and the other row never."""
    for j in range(at, free.shape[1]):
        t = int(free[row, j])
        if t not in free[row, :j].tolist() and t not in free[1 - row].tolist():
            return t
    raise AssertionError(f"no new id in row {row} from step {at}: {free.tolist()}")


@pytest.fixture(scope="module")
def chat(real):
    """Two prompts whose greedy continuations differ token by token (the tiny random model
    repeats one token a row): where a row stops is then a real choice."""
    _, tok = real
    return tok(["The capital of France is", "Once upon a time, in a land far away,"], return_tensors="pt",
               padding=True)


@pytest.mark.parametrize("form", [int, np.int64, torch.tensor, lambda i: torch.tensor([i, 0])],
                         ids=["int", "numpy", "0-d tensor", "1-d tensor"])
def test_eos_token_id_in_hfs_forms(real, chat, form):
    model, _ = real
    eos = _first_new(_free_run(model, chat), 1, 3)  # row 1 ends at its 4th token or later
    hf = model.generate(**chat, max_new_tokens=10, eos_token_id=form(eos), pad_token_id=0)
    assert (hf[1, -1] == 0) and (hf[0, -1] != 0)  # row 1 padded after its EOS, row 0 went on
    _same(pd.generate(model, **chat, max_new_tokens=10, eos_token_id=form(eos), pad_token_id=0), hf)


@pytest.mark.parametrize("kw, says", [
    (dict(eos_token_id=10**6), r"eos_token_id must be a token id or a list of them, each in \[0, 49152\)"),
    (dict(eos_token_id=-1), r"eos_token_id must be .* got -1"),  # HF would hide id V - 1 under min_new_tokens
    (dict(eos_token_id=[2, 2.5]), r"eos_token_id must be .* got \[2, 2.5\]"),
    (dict(pad_token_id=1.5), "pad_token_id must be an integer, got 1.5"),
    (dict(steer=1e39), r"steer must be a finite number within float32's range"),
    (dict(steer=float("nan")), r"steer must be a finite number"),
    (dict(steer="2"), r"steer must be a finite number"),
])
def test_bad_ids_and_steer_are_refused_before_any_forward(tiny, enc, kw, says, monkeypatch):
    model, tok = tiny
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    rewards = pd.Rewards(tok, [pd.rewards.EndsWith(".")]) if "steer" in kw else None
    with pytest.raises(ValueError, match=says):
        pd.generate(model, **enc, max_new_tokens=4, min_new_tokens=2, rewards=rewards, **kw)
    assert not calls


def test_numpy_and_tensor_steer_are_numbers(tiny, enc):
    model, tok = tiny
    rewards = pd.Rewards(tok, [pd.rewards.EndsWith(".")])
    ref = pd.generate(model, **enc, max_new_tokens=4, rewards=rewards, steer=2.0, seed=0)
    for steer in (np.float32(2.0), torch.tensor(2.0)):
        _same(pd.generate(model, **enc, max_new_tokens=4, rewards=rewards, steer=steer, seed=0).tokens, ref.tokens)


def test_a_callers_eos_criteria_replaces_the_configs_eos_as_in_hf(real, chat):
    """HF keeps a caller's EosTokenCriteria instead of its own: rows end at its ids, not the
    config's (which still hides EOS under min_new_tokens)."""
    model, _ = real
    free = _free_run(model, chat)
    config_eos, criteria_eos = _first_new(free, 0, 2), _first_new(free, 1, 4)
    kw = dict(max_new_tokens=10, eos_token_id=config_eos, pad_token_id=0,
              stopping_criteria=StoppingCriteriaList([EosTokenCriteria(criteria_eos)]))
    hf = model.generate(**chat, **kw)
    assert (hf != model.generate(**chat, max_new_tokens=10, eos_token_id=config_eos, pad_token_id=0)).any()
    _same(pd.generate(model, **chat, **kw), hf)
    _same(pd.generate(model, **chat, **kw, min_new_tokens=4), model.generate(**chat, **kw, min_new_tokens=4))


class _StopRowZero(StoppingCriteria):
    """Stops row 0 after ``n`` new tokens (HF's criteria see the whole sequence)."""

    def __init__(self, prompt_len, n):
        self.P, self.n = prompt_len, n

    def __call__(self, input_ids, scores, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[0] = input_ids.shape[1] - self.P >= self.n
        return done


@pytest.mark.parametrize("pad", [0, None])
def test_without_eos_a_stopped_row_keeps_its_tokens_as_in_hf(tiny, enc, pad):
    """HF pads a finished row only when EOS can end rows; without one it writes on, and needs
    no pad_token_id."""
    model, _ = tiny
    P = enc["input_ids"].shape[1]
    kw = dict(max_new_tokens=6, eos_token_id=None, pad_token_id=pad, stopping_criteria=[_StopRowZero(P, 2)])
    hf = model.generate(**enc, **kw)
    assert hf.shape[1] == P + 6 and (hf[0, P + 2:] != 0).any()  # row 0 stopped at 2, its tokens go on
    out = pd.generate(model, **enc, **kw, return_dict_in_generate=True)
    _same(out.sequences, hf)
    assert out.mask[0].tolist() == [True, True] + [False] * 4  # the rollout still knows where it stopped


class _EosSubclass(EosTokenCriteria):
    """Not HF's own type: added to HF's list, replacing nothing."""


@pytest.mark.parametrize("kw", [dict(eos_token_id=[]), dict(eos_token_id=None, extra=_EosSubclass([10**4]))],
                         ids=["empty eos list", "a criterion with eos_token_id"])
def test_a_stopped_row_is_padded_when_hf_has_an_eos_criterion(tiny, enc, kw):
    """HF pads once any criterion has an ``eos_token_id`` (its own, made even for an empty
    list, or a caller's), whether or not it is what stopped the row."""
    model, _ = tiny
    P = enc["input_ids"].shape[1]
    kw = dict(kw)
    criteria = [_StopRowZero(P, 2)] + ([kw.pop("extra")] if "extra" in kw else [])
    args = dict(max_new_tokens=6, pad_token_id=5, stopping_criteria=criteria, **kw)
    hf = model.generate(**enc, **args)
    assert (hf[0, P + 2:] == 5).all()
    _same(pd.generate(model, **enc, **args), hf)
