"""pd.generate against HF's model.generate, and the contract's promises."""

import os
import shutil

import pytest
import torch

from transformers import GenerationConfig

import proxdecode as pd
from conftest import assert_verbose_allclose
from proxdecode.config import PENALTY_SKIPS_LEFT_PADDING

PROMPTS = ["I like to eat", "Today is a", "The capital of France is",
           "Once upon a time, in a land far away, there lived a", "Hi", "Write a haiku about the sea:",
           "The quick brown fox jumps over the lazy dog. Then the dog", "1, 2, 3, 4,",
           "What is the meaning of life? The answer is", "My favourite fruit is the",
           "<|im_start|>user\nSay only: goodbye.<|im_end|>\n<|im_start|>assistant\n"]


class CollectStreamer:
    """A streamer that records what ``generate`` hands it, to compare two runs' streams."""

    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(value.tolist())

    def end(self):
        self.calls.append("end")


@pytest.mark.parametrize("rp,cache", [(1.0, None), (1.3, None), (1.0, "static"), (1.3, "static"), (1.0, "dynamic")])
def test_greedy_is_token_identical_to_hf(real, rp, cache):
    model, tok = real
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    P = enc.input_ids.shape[1]
    want = model.generate(**enc, max_new_tokens=32, do_sample=False, repetition_penalty=rp)
    got = pd.generate(model, **enc, max_new_tokens=32, do_sample=False, repetition_penalty=rp,
                      cache_implementation=cache)
    assert (enc.attention_mask == 0).any(), "the batch must be left-padded"
    if rp == 1.0 or PENALTY_SKIPS_LEFT_PADDING:  # transformers 5.17 penalises the pad (= EOS) ids
        assert (want[:, P:] == tok.eos_token_id).any(), "EOS must occur inside the window"
    assert got.shape == want.shape and torch.equal(got, want)


GREEDY_CASES = [
    dict(max_new_tokens=12, min_new_tokens=12),
    dict(max_new_tokens=10, min_new_tokens=8, eos_token_id=[2, 30]),
    dict(max_length=20),
    dict(max_new_tokens=6, use_cache=False),  # TRL's gradient checkpointing sets it: same output
    dict(max_new_tokens=9, repetition_penalty=0.7, pad_token_id=0),
    dict(generation_config=GenerationConfig(max_new_tokens=7, repetition_penalty=1.2, eos_token_id=2,
                                            pad_token_id=2)),
]


@pytest.mark.parametrize("kw", GREEDY_CASES)
def test_greedy_arguments_match_hf(tiny, kw):
    model, tok = tiny
    enc = tok(PROMPTS[:4], return_tensors="pt", padding=True)
    want = model.generate(**enc, do_sample=False, **kw)
    got = pd.generate(model, **enc, do_sample=False, **kw)
    assert torch.equal(got, want)


def test_greedy_bf16_matches_hf_in_bf16():
    model, tok = pd.random_model("tiny", seed=1, dtype=torch.bfloat16)
    enc = tok(PROMPTS[:6], return_tensors="pt", padding=True)
    want = model.generate(**enc, max_new_tokens=16, do_sample=False)
    assert torch.equal(pd.generate(model, **enc, max_new_tokens=16, do_sample=False), want)


def test_load_model_from_a_local_folder(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, ltok = pd.load_model(str(tmp_path))
    assert ltok.padding_side == "left" and len(ltok) == len(tok)
    enc = tok(PROMPTS[:3], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=6, do_sample=True, seed=11)
    assert torch.equal(pd.generate(loaded, **enc, **kw), pd.generate(model, **enc, **kw))
    with pytest.raises(ValueError, match="dtype"):
        pd.load_model(str(tmp_path), dtype="int8")


def test_num_return_sequences_layout(tiny):
    model, tok = tiny
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    out = pd.generate(model, **enc, max_new_tokens=8, do_sample=True, num_return_sequences=3, seed=[4, 9])
    P = enc.input_ids.shape[1]
    assert out.shape == (6, P + 8)
    assert torch.equal(out[:, :P], enc.input_ids.repeat_interleave(3, 0))
    assert len({tuple(r) for r in out[:, P:].tolist()}) > 1  # each copy draws its own tokens
    single = pd.generate(model, **tok(PROMPTS[1:2], return_tensors="pt"), max_new_tokens=8,
                         do_sample=True, num_return_sequences=3, seed=[9])
    assert torch.equal(single[:, -8:], out[3:, -8:])


def test_stop_strings_and_streamer_match_hf(real):
    model, tok = real
    enc = tok(["The capital of France is"], return_tensors="pt")

    a, b = CollectStreamer(), CollectStreamer()
    kw = dict(max_new_tokens=30, do_sample=False, stop_strings=["."], tokenizer=tok)
    want = model.generate(**enc, streamer=a, **kw)
    got = pd.generate(model, **enc, streamer=b, **kw)
    assert torch.equal(got, want) and got.shape[1] < enc.input_ids.shape[1] + 30
    assert a.calls == b.calls


def test_rollout_fields_against_a_teacher_forced_forward(tiny):
    model, tok = tiny
    enc = tok(PROMPTS[:5], return_tensors="pt", padding=True)
    out = pd.generate(model, **enc, max_new_tokens=16, do_sample=True, temperature=1.0, top_k=0,
                      return_dict_in_generate=True, output_scores=True, seed=3, gamma=0.9)
    assert isinstance(out, pd.Rollout) and out.sequences.shape == (5, enc.input_ids.shape[1] + 16)
    assert torch.equal(out.tokens, out.sequences[:, enc.input_ids.shape[1]:])
    # oracle: one forward over prompt + completion gives the policy's log-probs
    P = enc.input_ids.shape[1]
    mask = torch.cat([enc.attention_mask, out.mask.long()], 1)
    with torch.no_grad():
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(out.sequences, attention_mask=mask, position_ids=pos).logits
    ref = torch.log_softmax(logits[:, P - 1:-1], -1).gather(2, out.tokens[..., None])[..., 0]
    m = out.mask
    torch.testing.assert_close(out.policy_logprobs[m], ref[m], atol=1e-4, rtol=1e-4)
    # T = 1, no filters, no steering: the sampling distribution is the policy
    torch.testing.assert_close(out.logprobs[m], out.policy_logprobs[m], atol=1e-5, rtol=1e-5)
    assert len(out.scores) == out.tokens.shape[1]
    chosen = torch.stack([torch.log_softmax(s, -1).gather(1, out.tokens[:, t:t + 1])[:, 0]
                          for t, s in enumerate(out.scores)], 1)
    torch.testing.assert_close(chosen[m], out.logprobs[m], atol=1e-5, rtol=1e-5)
    assert (out.returns[~m] == 0).all() and (out.rewards == 0).all()
    assert (out.logprobs[~m] == 0).all() and (out.policy_logprobs[~m] == 0).all()


def test_a_row_depends_only_on_its_seed_and_prompt(tiny):
    model, tok = tiny
    kw = dict(max_new_tokens=16, do_sample=True, top_k=50, top_p=0.9, temperature=0.9)
    alone = pd.generate(model, **tok(["Today is a"], return_tensors="pt"), seed=[1234], **kw)
    others = ["I like to eat", "Once upon a time, in a land far away", "Today is a", "Hi"]
    batch = pd.generate(model, **tok(others, return_tensors="pt", padding=True), seed=[5, 6, 1234, 7], **kw)
    assert torch.equal(batch[2, -alone.shape[1]:][-16:], alone[0, -16:])
    again = pd.generate(model, **tok(others, return_tensors="pt", padding=True), seed=[5, 6, 1234, 7], **kw)
    assert torch.equal(batch, again)
    other_seed = pd.generate(model, **tok(["Today is a"], return_tensors="pt"), seed=[99], **kw)
    assert not torch.equal(other_seed, alone)


def _boom(*args, **kwargs):
    raise AssertionError("the model ran before the arguments were checked")


BAD = [
    (dict(do_sample=True, temperature=0.0), ValueError, "temperature"),
    (dict(do_sample=True, temperature=float("nan")), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(min_p=1.5), ValueError, "min_p"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(num_beams=2), ValueError, "num_beams"),
    (dict(num_return_sequences=0), ValueError, "num_return_sequences"),  # HF makes it 1
    (dict(logits_processor=[object()]), TypeError, "logits_processor"),
    (dict(synced_gpus=True), ValueError, "synced_gpus"),
    (dict(generation_config=GenerationConfig(token_healing=True)), ValueError, "token_healing"),
    (dict(generation_config=GenerationConfig(force_words_ids=[[5]])), ValueError, "force_words_ids"),
    (dict(generation_config=GenerationConfig(num_beams=2)), ValueError, "num_beams"),
    (dict(no_such_argument=1), TypeError, "no_such_argument"),
    (dict(steer=float("inf")), ValueError, "steer"),
    (dict(steer=1.0), ValueError, "steer"),
    (dict(gamma=1.5), ValueError, "gamma"),
    (dict(gamma=True), ValueError, "gamma must be a number"),
    (dict(seed=[1, 2, 3]), ValueError, "seed"),
    (dict(linear="fast"), ValueError, "linear"),
    (dict(compile="yes"), TypeError, "compile"),
    (dict(compile_config="max-autotune"), ValueError, "compile_config"),
    (dict(compile=True, cache_implementation="dynamic"), ValueError, "static KV cache"),
    (dict(compile=True, disable_compile=True), ValueError, "disable_compile"),
    (dict(compile=True, linear="onednn"), ValueError, "onednn"),
]


@pytest.mark.parametrize("kw,exc,word", BAD)
def test_bad_input_is_named_before_model_work(tiny, monkeypatch, kw, exc, word):
    model, tok = tiny
    monkeypatch.setattr(type(model), "forward", _boom)
    enc = tok(["a b", "c"], return_tensors="pt", padding=True)
    with pytest.raises(exc, match=word):
        pd.generate(model, **enc, **{"max_new_tokens": 4, **kw})


def test_bad_shapes(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(type(model), "forward", _boom)
    with pytest.raises(ValueError, match="empty"):
        pd.generate(model, torch.zeros(0, 3, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask"):
        pd.generate(model, torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4), max_new_tokens=2)


def test_reward_for_another_tokenizer_or_vocabulary(tiny, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    model, tok = tiny
    rewards = pd.Rewards(tok, [pd.rewards.EndsWith(".")])
    big = LlamaForCausalLM(LlamaConfig(vocab_size=60000, hidden_size=16, intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=2))
    monkeypatch.setattr(LlamaForCausalLM, "forward", _boom)
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="49152 tokens.*60000 logits"):
        pd.generate(big, ids, max_new_tokens=2, rewards=rewards, pad_token_id=0)
    other = pd.models.load_tokenizer()
    other.add_tokens(["<brand-new-token>"])
    with pytest.raises(ValueError, match="another tokenizer"):
        pd.generate(model, ids, max_new_tokens=2, rewards=rewards, tokenizer=other)


def test_non_finite_logits_are_reported(tiny, monkeypatch):
    model, tok = tiny
    forward = type(model).forward
    calls = []

    def poisoned(self, input_ids=None, cache=None, **kwargs):
        out = forward(self, input_ids=input_ids, cache=cache, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            out.logits[1, -1, 17] = float("nan")
        return out

    monkeypatch.setattr(type(model), "forward", poisoned)
    enc = tok(["a b", "c d"], return_tensors="pt", padding=True)
    with pytest.raises(pd.NonFiniteLogitsError, match=r"rows \[1\].*step 2"):
        pd.generate(model, **enc, max_new_tokens=12, do_sample=True)


def test_compile_is_decided_as_hf_decides(tiny):
    """compile=None follows HF's _valid_auto_compile_criteria: a static cache asked for by name
    on an accelerator, or a compile_config that opts in on every device."""
    from transformers import CompileConfig

    from proxdecode.config import DecodeConfig

    model, tok = tiny
    ids = tok(["a b"], return_tensors="pt").input_ids

    def resolved(compile=None, **kw):
        cfg = DecodeConfig.resolve(model, ids, None, steer=0.0, gamma=1.0, seed=0, rewards=None,
                                   kwargs=dict(max_new_tokens=2, **kw), compile=compile)
        return cfg.compile, cfg.compile_required

    everywhere = CompileConfig(dynamic=False)
    everywhere._compile_all_devices = True
    assert resolved() == resolved(cache_implementation="static") == (False, False)  # CPU: HF stays eager
    assert resolved(cache_implementation="static", compile_config=everywhere) == (True, False)
    assert resolved(cache_implementation="static", compile_config=everywhere, disable_compile=True) == (False, False)
    assert resolved(compile_config=everywhere) == (False, False)  # the cache was not asked for by name
    assert resolved(compile=True) == (True, True)
    assert resolved(compile=False, cache_implementation="static", compile_config=everywhere) == (False, False)


def test_cache_is_static_where_a_step_may_be_captured(tiny):
    """HF's DynamicCache for an eager step on the CPU (the static cache's full-length
    attention was the slower there; README); static when asked for by name, compiled, or on
    an accelerator, where CUDA graphs need fixed shapes."""
    import copy

    from proxdecode.config import DecodeConfig

    model, tok = tiny
    ids = tok(["a b"], return_tensors="pt").input_ids

    def static(compile=None, on=model, **kw):
        return DecodeConfig.resolve(on, ids, None, steer=0.0, gamma=1.0, seed=0, rewards=None,
                                    kwargs=dict(max_new_tokens=2, **kw), compile=compile).static_cache

    assert (static(), static(cache_implementation="dynamic"), static(compile=False)) == (False, False, False)
    assert static(cache_implementation="static") and static(compile=True)
    assert static(compile=False, cache_implementation="static")
    accelerator = copy.deepcopy(model).to("meta")  # what resolve reads of the device: model.device
    assert static(on=accelerator) and not static(on=accelerator, cache_implementation="dynamic")


def test_automatic_compile_runs_eager_where_the_cache_cannot_be_static(tiny, monkeypatch):
    """HF compiles only with a compileable cache; compile=True insists and says why."""
    from transformers import CompileConfig, DynamicCache

    model, tok = tiny
    monkeypatch.setattr("proxdecode.decoder._make_cache", lambda *a: DynamicCache())
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    everywhere = CompileConfig()
    everywhere._compile_all_devices = True
    want = model.generate(**enc, max_new_tokens=5, do_sample=False)
    rewards = pd.Rewards(tok, [pd.rewards.EndsWith(".")])
    torch._dynamo.utils.counters.clear()
    got = pd.generate(model, **enc, max_new_tokens=5, do_sample=False, cache_implementation="static",
                      compile_config=everywhere, rewards=rewards, steer=0.5)
    assert not torch._dynamo.utils.counters["stats"]["unique_graphs"], "neither forward nor step compiled"
    assert torch.equal(got.sequences, pd.generate(model, **enc, max_new_tokens=5, do_sample=False, rewards=rewards,
                                                  steer=0.5).sequences)
    assert torch.equal(pd.generate(model, **enc, max_new_tokens=5, do_sample=False, cache_implementation="static",
                                   compile_config=everywhere), want)
    with pytest.raises(ValueError, match="compile=True needs the static KV cache"):
        pd.generate(model, **enc, max_new_tokens=5, compile=True)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor needs a C++ compiler")
def test_compiled_decode_step_matches_eager_and_hf(tiny):
    """The compiled decode forward (fixed shapes: full-length mask, static cache; no rewards,
    so the step stays the backend's) gives HF's greedy tokens and logits, and the eager
    path's sampled tokens; a second call with the same shapes compiles nothing."""
    from transformers import CompileConfig

    model, tok = tiny
    enc = tok(PROMPTS[:4], return_tensors="pt", padding=True)
    cc = CompileConfig(dynamic=False, mode="default")
    greedy = dict(max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True)
    want = model.generate(**enc, **greedy)
    got = pd.generate(model, **enc, **greedy, compile=True, compile_config=cc)
    assert torch.equal(got.sequences, want.sequences)
    for t, (a, b) in enumerate(zip(got.scores, want.scores)):  # pd's scores: -inf outside the top-k set
        kept = torch.isfinite(a)  # [B, V]
        assert kept.any(1).all()
        assert_verbose_allclose(a[kept], b[kept], 1e-4, 1e-4, f"step {t} logits")
    kw = dict(max_new_tokens=12, do_sample=True, top_k=20, seed=5)
    sampled = pd.generate(model, **enc, **kw, compile=True, compile_config=cc)
    assert torch.equal(sampled, pd.generate(model, **enc, **kw))
    torch._dynamo.utils.counters.clear()
    assert torch.equal(pd.generate(model, **enc, **kw, compile=True, compile_config=cc), sampled)
    assert not torch._dynamo.utils.counters["stats"]["unique_graphs"], "the same shapes must not compile again"


def _step_cache_entries():
    """Graphs torch.compile holds for the engine's step function (all compile settings)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from proxdecode import engine
    return len(_debug_get_cache_entry_list(engine.sample_one.__code__))


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor needs a C++ compiler")
def test_compiled_step_with_rewards_matches_the_eager_step(tiny):
    """compile=True compiles the whole step beside the forward (the candidates' rewards, the
    torch step, the rollout's columns, the reward state) as one fullgraph graph: the eager
    torch step's tokens, mask and rewards, log-probs to fp32 rounding, through steering, the
    repetition penalty, min_new_tokens and rows that end early, in at most two graphs (EOS
    hidden or not); the same call again compiles nothing; a reward with a reference model
    keeps the step eager (and still agrees)."""
    from transformers import CompileConfig

    model, tok = tiny
    R = pd.rewards
    rewards = pd.Rewards(tok, [R.Sentiment(), R.EndsWith(".", weight=0.5), R.Keywords(["apple", "orange"]),
                               R.Repetition(weight=-0.5), R.Repetition(n=2, weight=-0.3, name="repeat2"),
                               R.Fluency(weight=0.1)])
    enc = tok(PROMPTS[:5], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=14, min_new_tokens=3, do_sample=True, top_k=40, top_p=0.9, temperature=0.8,
              repetition_penalty=1.3, eos_token_id=list(range(100, 1100)), seed=11, rewards=rewards, steer=2.0,
              output_scores=True)
    cc = CompileConfig(dynamic=False, mode="default")
    want = pd.generate(model, **enc, **kw, backend="torch")
    assert not want.mask.all() and want.mask[:, 3].all(), "rows must end early, none before min_new_tokens"
    before = _step_cache_entries()
    got = pd.generate(model, **enc, **kw, compile=True, compile_config=cc)
    assert 0 < _step_cache_entries() - before <= 2, "one graph while EOS is hidden, one after: not one a step"
    assert torch.equal(got.sequences, want.sequences) and torch.equal(got.mask, want.mask)
    assert_verbose_allclose(got.logprobs, want.logprobs, 1e-5, 1e-5, "logprobs")
    assert_verbose_allclose(got.policy_logprobs, want.policy_logprobs, 1e-5, 1e-5, "policy_logprobs")
    for name in rewards.names:
        assert_verbose_allclose(got.reward_components[name], want.reward_components[name], 1e-5, 1e-5, name)
    for t, (a, b) in enumerate(zip(got.scores, want.scores)):
        assert_verbose_allclose(a, b, 1e-5, 1e-5, f"scores at step {t}")

    compiled = _step_cache_entries()
    again = pd.generate(model, **enc, **kw, compile=True, compile_config=cc)
    assert torch.equal(again.sequences, want.sequences)
    assert _step_cache_entries() == compiled, "the same settings must not compile the step again"

    kl = pd.Rewards(tok, [R.Sentiment(), R.KLPenalty(model, coef=0.2)])
    ref_kw = dict(kw, rewards=kl)
    ref_got = pd.generate(model, **enc, **ref_kw, compile=True, compile_config=cc)
    assert _step_cache_entries() == compiled, "a reference-model reward keeps the step eager"
    ref_want = pd.generate(model, **enc, **ref_kw, backend="torch")
    assert torch.equal(ref_got.sequences, ref_want.sequences)
    assert_verbose_allclose(ref_got.rewards, ref_want.rewards, 1e-4, 1e-4, "rewards with a reference")


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor needs a C++ compiler")
def test_compiled_step_flags_unusable_rows_as_the_eager_step_does(tiny):
    """One step on crafted logits (a NaN row, an all -inf row, a dead row), compiled with a
    0-d tensor step index and eager with an int: every buffer the step writes is equal."""
    from transformers import CompileConfig

    from proxdecode import engine
    from proxdecode.config import DecodeConfig

    model, tok = tiny
    B, V, P, T = 4, model.config.vocab_size, 3, 5
    ids = torch.randint(0, 1000, (B, P), generator=torch.Generator().manual_seed(0))
    cfg = DecodeConfig.resolve(model, ids, torch.ones_like(ids), steer=0.0, gamma=1.0, seed=3, rewards=None,
                               kwargs=dict(max_new_tokens=T, do_sample=True, top_k=20, repetition_penalty=1.2),
                               backend="torch", compile=False, linear="torch")
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(1)) * 3
    logits[1, 7] = float("nan")
    logits[2] = float("-inf")

    def buffers():
        seen = torch.zeros(B, V, dtype=torch.bool).scatter_(1, ids, True)
        return engine._Buffers(
            torch.arange(B) * 977 + 5, torch.tensor([0, 2]), torch.tensor([0, 2]),  # seeds, EOS, end ids
            torch.cat([ids, ids.new_zeros(B, T)], 1),
            torch.tensor([True, True, True, False]), torch.zeros(B, T, dtype=torch.bool), torch.zeros(B, T),
            torch.zeros(B, T), torch.zeros(0, B, T), torch.full((B,), -1), seen, P)

    eager, comp = buffers(), buffers()
    fn = engine._compiled_sample_one(model, CompileConfig(dynamic=False, mode="default"), True)
    tok_e, _ = engine.sample_one(pd.sample_step, cfg, None, eager, logits, 2, True)
    tok_c, _ = fn(pd.sample_step, cfg, None, comp, logits, torch.tensor(2), True)
    assert torch.equal(tok_c, tok_e) and eager.first_bad.tolist() == [-1, 2, 2, -1]
    for field in ("seqs", "alive", "out_mask", "first_bad", "seen"):
        assert torch.equal(getattr(comp, field), getattr(eager, field)), field
    for field in ("logprobs", "policy_logprobs"):  # fused reductions: fp32 rounding
        assert_verbose_allclose(getattr(comp, field), getattr(eager, field), 1e-5, 1e-5, field)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor needs a C++ compiler")
def test_a_reward_that_cannot_be_traced_is_named_when_the_step_compiles(tiny):
    """A custom family that branches on a tensor value but claims to be traceable: compile=True
    refuses it with an error that says what to do; HF's automatic choice warns and runs the
    step eager; marked traceable=False it runs eager beside the compiled forward."""
    from transformers import CompileConfig

    from proxdecode.rewards.base import Reward

    class Branches(Reward):
        default_name = "branches"

        def score(self, st, logits):
            if logits.max() > 0:  # data-dependent control flow: a graph break
                return torch.zeros_like(logits)
            return torch.ones_like(logits)

    model, tok = tiny
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    rewards = pd.Rewards(tok, [Branches()])
    kw = dict(max_new_tokens=3, do_sample=True, rewards=rewards, steer=1.0, seed=1)
    want = pd.generate(model, **enc, **kw).sequences
    with pytest.raises(ValueError, match=r"rewards: branches.*traceable = False"):
        pd.generate(model, **enc, **kw, compile=True)
    everywhere = CompileConfig()
    everywhere._compile_all_devices = True
    with pytest.warns(UserWarning, match=r"rewards: branches.*runs eager"):
        auto = pd.generate(model, **enc, **kw, cache_implementation="static", compile_config=everywhere)
    assert torch.equal(auto.sequences, want)
    Branches.traceable = False
    before = _step_cache_entries()
    assert torch.equal(pd.generate(model, **enc, **kw, compile=True).sequences, want)
    assert _step_cache_entries() == before


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor needs a C++ compiler")
def test_the_step_runs_eager_when_the_recompile_limit_is_reached(tiny):
    """fullgraph turns torch.compile's recompile limit into an error; generate warns and runs
    that call's step eager instead, with the same tokens."""
    model, tok = tiny
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=4, do_sample=True, top_k=7, temperature=0.55, seed=2,  # settings no other test uses
              rewards=pd.Rewards(tok, [pd.rewards.EndsWith(".")]), steer=1.5)
    with torch._dynamo.config.patch(recompile_limit=_step_cache_entries()):  # no new graph allowed
        with pytest.warns(UserWarning, match="recompile limit"):
            got = pd.generate(model, **enc, **kw, compile=True)
    assert torch.equal(got.sequences, pd.generate(model, **enc, **kw, backend="torch").sequences)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor needs a C++ compiler")
def test_compiled_step_with_the_other_families_and_loop_features(tiny):
    """HF's default compile settings (dynamic shapes) over the other families (Overlap,
    Length, WordList, Capitalization, a TextReward) and the loop's host-side features
    (num_return_sequences, a stop string that fires; a streamer at batch one): what the eager
    step gives."""
    model, tok = tiny
    R = pd.rewards
    rewards = pd.Rewards(tok, [
        R.Overlap("the cat sat on the mat", n=2, weight=2.0), R.Length(max_tokens=8, weight=0.5),
        R.WordList(["the", "cat"], weight=0.7), R.Capitalization(weight=0.3),
        R.TextReward(lambda text: float(len(text) % 7), name="length_mod_7")])
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=10, do_sample=True, top_k=30, num_return_sequences=2, seed=4, rewards=rewards,
              steer=1.5)
    plain = pd.generate(model, **enc, **kw, backend="torch")
    stop = tok.decode(plain.tokens[1, 4:5])  # the text of one row's fifth token: it will fire there
    kw.update(stop_strings=[stop], tokenizer=tok)

    want = pd.generate(model, **enc, **kw, backend="torch")
    before = _step_cache_entries()
    got = pd.generate(model, **enc, **kw, compile=True)
    assert _step_cache_entries() > before, "the step must have been compiled"
    assert not want.mask[1].all(), "the stop string must end a row early"
    assert torch.equal(got.sequences, want.sequences) and torch.equal(got.mask, want.mask)
    for name in rewards.names:
        assert_verbose_allclose(got.reward_components[name], want.reward_components[name], 1e-5, 1e-5, name)
    assert_verbose_allclose(got.logprobs, want.logprobs, 1e-5, 1e-5, "logprobs")

    one = tok(PROMPTS[:1], return_tensors="pt")  # a streamer takes one row, as in HF
    kw1 = dict(kw, num_return_sequences=1)
    a, b = CollectStreamer(), CollectStreamer()
    assert torch.equal(pd.generate(model, **one, **kw1, compile=True, streamer=b).sequences,
                       pd.generate(model, **one, **kw1, backend="torch", streamer=a).sequences)
    assert a.calls == b.calls and len(a.calls) > 2


@pytest.mark.parametrize("backend,steer,cache", [("torch", 1.5, None), ("cpp", 1.5, None), ("cpp", 0.0, None),
                                                 ("cpp", 1.5, "static")])  # static: an accelerator's default
def test_a_decode_step_makes_no_host_sync(tiny, monkeypatch, host_syncs, backend, steer, cache):
    """Between the loop's every-SYNC_EVERY check, a step reads nothing back and builds no
    tensor from host data: the forward (``Decoder.step``, a reference model's too) and
    everything after it (``sample_one``: every vectorised family scoring and recording, the
    repetition penalty, EOS hidden under min_new_tokens, top-k/top-p/min-p; steering, or
    not: then each family's ``chosen`` path). On a GPU each such op would stall the queue;
    here they are caught at dispatch."""
    from proxdecode import decoder, engine

    model, tok = tiny
    R = pd.rewards
    rewards = pd.Rewards(tok, [
        R.Sentiment(), R.EndsWith(".", weight=0.5), R.Keywords(["apple", "orange"]), R.Repetition(weight=-0.5),
        R.Repetition(n=2, weight=-0.3, name="repeat2"), R.Fluency(weight=0.1), R.Length(max_tokens=6),
        R.WordList(["the", "cat"], weight=0.7), R.Capitalization(weight=0.3), R.Topic(["food"], model=model),
        R.Overlap("the cat sat on the mat", n=2), R.KLPenalty(model, coef=0.2),
        R.TextReward(lambda text: float(len(text)), every=2, name="chars")])  # runs after the loop
    monkeypatch.setattr(engine, "sample_one", host_syncs(engine.sample_one))
    monkeypatch.setattr(decoder.Decoder, "step", host_syncs(decoder.Decoder.step))
    enc = tok(PROMPTS[:3], return_tensors="pt", padding=True)
    out = pd.generate(model, **enc, max_new_tokens=6, min_new_tokens=2, do_sample=True, top_k=30, top_p=0.9,
                      min_p=0.02, repetition_penalty=1.2, rewards=rewards, steer=steer, seed=3, backend=backend,
                      cache_implementation=cache)
    assert out.mask.all() and host_syncs.calls() >= 6 + 5 + 5, "steps, and the policy's and reference's forwards"
    assert not host_syncs.found(), "host syncs inside a step:\n" + "\n".join(sorted(set(host_syncs.found())))


def test_an_argument_this_transformers_would_not_read_is_refused(tiny, monkeypatch):
    """A supported argument that the installed transformers leaves out of its config (an
    older version without ``min_p``, say) would do nothing: refused, naming it."""
    model, tok = tiny
    real = model._prepare_generation_config

    def without_min_p(gc, **kw):
        value = kw.pop("min_p", None)
        config, left = real(gc, **kw)
        return config, dict(left, **({"min_p": value} if value is not None else {}))
    monkeypatch.setattr(model, "_prepare_generation_config", without_min_p)
    ids = tok(["a b"], return_tensors="pt").input_ids
    with pytest.raises(TypeError, match=r"\['min_p'\] are not generation arguments of transformers"):
        pd.generate(model, ids, max_new_tokens=2, do_sample=True, min_p=0.1)
    pd.generate(model, ids, max_new_tokens=2)  # without it: runs
