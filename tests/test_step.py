"""The torch reference step against HF's own LogitsProcessors and against frequencies."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from conftest import assert_verbose_allclose
from proxdecode import sample_step


def hf_scores(logits, input_ids, rp, temperature, top_k, top_p, min_p):
    """HF's pipeline, in HF's order, as ``generate`` builds it for sampling."""
    procs = LogitsProcessorList()
    if rp != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(rp))
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    if min_p > 0:
        procs.append(MinPLogitsWarper(min_p))
    return procs(input_ids, logits.clone())


SETTINGS = [  # rp, temperature, top_k, top_p, min_p
    (1.0, 1.0, 0, 1.0, 0.0),
    (1.0, 0.7, 50, 1.0, 0.0),
    (1.0, 1.0, 0, 0.9, 0.0),
    (1.3, 0.8, 50, 0.9, 0.0),
    (1.0, 1.2, 0, 1.0, 0.05),
    (0.8, 0.5, 20, 0.95, 0.1),
    (1.2, 1.0, 999, 0.5, 0.0),  # top_k >= V
    (1.0, 1.0, 1, 1.0, 0.0),
    (1.0, 1.0, 0, 1.0, 1.0),  # min_p = 1: the argmax only
]


@pytest.mark.parametrize("B,V", [(1, 17), (3, 1000), (8, 4099)])
@pytest.mark.parametrize("rp,temperature,top_k,top_p,min_p", SETTINGS)
def test_distribution_matches_hf_processors(B, V, rp, temperature, top_k, top_p, min_p):
    g = torch.Generator().manual_seed(B * V)
    logits = torch.randn(B, V, generator=g) * 3
    input_ids = torch.randint(0, V, (B, 12), generator=g)
    seen = torch.zeros(B, V, dtype=torch.bool).scatter_(1, input_ids, True)
    want = torch.softmax(hf_scores(logits, input_ids, rp, temperature, top_k, top_p, min_p), -1)
    out = sample_step(logits, seeds=torch.arange(B), step=0, temperature=temperature, top_k=top_k,
                      top_p=top_p, min_p=min_p, repetition_penalty=rp, seen=seen, return_scores=True)
    got = torch.softmax(out.scores, -1)
    assert_verbose_allclose(got, want, atol=1e-6, rtol=0, name="probs")
    assert (want.gather(1, out.tokens[:, None]) > 0).all(), "sampled outside the allowed set"
    assert_verbose_allclose(out.logprobs, want.gather(1, out.tokens[:, None])[:, 0].log(), 1e-5, 1e-5)
    assert_verbose_allclose(out.policy_logprobs,
                            torch.log_softmax(logits, -1).gather(1, out.tokens[:, None])[:, 0], 1e-5, 1e-5)


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 1.0, 1.0), (4, 1.0, 0.7), (0, 0.8, 1.3)])
def test_frequencies_match_hf_probabilities(top_k, top_p, temperature):
    V, N = 8, 200_000
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]])
    want = torch.softmax(hf_scores(logits, torch.zeros(1, 1, dtype=torch.long), 1.0, temperature,
                                   top_k, top_p, 0.0), -1)[0]
    out = sample_step(logits.expand(N, V), seeds=torch.arange(N), step=3, temperature=temperature,
                      top_k=top_k, top_p=top_p)
    freq = torch.bincount(out.tokens, minlength=V).double() / N
    assert (want[out.tokens] > 0).all(), "sampled outside the allowed set"
    sigma = (want * (1 - want) / N).sqrt().double()
    assert ((freq - want.double()).abs() <= 5 * sigma + 1e-12).all(), (freq, want)


def test_steering_reweights_inside_the_candidate_set():
    g = torch.Generator().manual_seed(0)
    B, V, beta = 4, 500, 1.7
    logits, reward = torch.randn(B, V, generator=g), torch.randn(B, V, generator=g)
    base = hf_scores(logits, torch.zeros(B, 1, dtype=torch.long), 1.0, 0.8, 40, 0.9, 0.0)
    want = torch.softmax(torch.where(torch.isinf(base), base, base + beta * reward), -1)
    out = sample_step(logits, seeds=torch.arange(B), step=0, temperature=0.8, top_k=40, top_p=0.9,
                      reward=reward, steer=beta, return_scores=True)
    assert_verbose_allclose(torch.softmax(out.scores, -1), want, atol=1e-6, rtol=0)


def test_zero_steer_is_plain_sampling():
    g = torch.Generator().manual_seed(1)
    logits, reward = torch.randn(64, 300, generator=g), torch.randn(64, 300, generator=g) * 10
    kw = dict(seeds=torch.arange(64), step=5, top_k=30, top_p=0.9)
    a = sample_step(logits, **kw)
    b = sample_step(logits, reward=reward, steer=0.0, **kw)
    c = sample_step(logits, reward=reward, steer=3.0, **kw)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.tokens, c.tokens)


def test_one_hot_and_ties():
    V = 1000
    logits = torch.full((3, V), float("-inf"))
    logits[0, 123] = 0.0  # one finite logit: always that token, log-prob 0
    logits[1, [7, 500]] = 5.0  # a tie: greedy takes the lower id, sampling ~50/50
    logits[2, 999] = 1e4
    for step in range(20):
        out = sample_step(logits, seeds=torch.tensor([1, 2, 3]), step=step)
        assert out.tokens[0] == 123 and out.logprobs[0] == 0 and out.valid.all()
        assert out.tokens[1] in (7, 500) and out.tokens[2] == 999
    greedy = sample_step(logits, seeds=torch.tensor([1, 2, 3]), step=0, do_sample=False)
    assert greedy.tokens.tolist() == [123, 7, 999]
    assert math.isclose(greedy.logprobs[1].item(), math.log(0.5), rel_tol=1e-6)
    ties = sample_step(logits[1:2].expand(4000, V), seeds=torch.arange(4000), step=0)
    assert abs((ties.tokens == 7).float().mean().item() - 0.5) < 0.05


def test_non_finite_rows_are_flagged_not_sampled():
    logits = torch.randn(4, 50)
    logits[1, 3] = float("nan")
    logits[2] = float("-inf")
    logits[3, 10] = float("inf")
    out = sample_step(logits, seeds=torch.arange(4), step=0, top_k=10)
    assert out.valid.tolist() == [True, False, False, False]


def test_suppress_and_bf16_logits():
    logits = torch.randn(2, 64).to(torch.bfloat16)
    logits[:, 5] = 100
    out = sample_step(logits, seeds=torch.arange(2), step=0, suppress=torch.tensor([5]))
    assert (out.tokens != 5).all()
    assert out.logprobs.dtype == torch.float32


def test_per_row_parameters_equal_row_by_row_scalars():
    g = torch.Generator().manual_seed(7)
    B, V = 4, 700
    logits = torch.randn(B, V, generator=g) * 2
    temps, top_ps, min_ps = [0.5, 1.0, 1.5, 0.9], [0.3, 0.9, 1.0, 0.75], [0.0, 0.05, 0.2, 0.0]
    seeds = torch.arange(B) + 100
    batched = sample_step(logits, seeds=seeds, step=2, top_k=60, temperature=torch.tensor(temps),
                          top_p=torch.tensor(top_ps), min_p=torch.tensor(min_ps), return_scores=True)
    for b in range(B):
        one = sample_step(logits[b:b + 1], seeds=seeds[b:b + 1], step=2, top_k=60, temperature=temps[b],
                          top_p=top_ps[b], min_p=min_ps[b], return_scores=True)
        assert one.tokens.item() == batched.tokens[b].item()
        assert_verbose_allclose(torch.softmax(batched.scores[b], -1), torch.softmax(one.scores[0], -1),
                                1e-6, 0, name=f"row {b}")


def _step_impl(name):
    if name == "torch":
        return sample_step
    if name == "cpp":
        from proxdecode import cpp
        if not cpp.available():
            pytest.skip("the C++ step could not be built on this machine")
        return cpp.sample_step_cpp
    pytest.importorskip("triton")
    from proxdecode.kernels.sample_step import sample_step_triton
    return sample_step_triton


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's inf - inf inside Triton's interpreter
@pytest.mark.parametrize("impl", ["torch", "cpp", "triton"])
def test_a_step_makes_no_host_sync(host_syncs, impl):
    """Every step implementation, with every option on (scalar and per-row parameters, the
    repetition penalty, suppressed ids, steering, dense scores), reads nothing back from the
    device and builds no tensor from host data: Python numbers travel as kernel arguments or
    device fills. Checked at dispatch (see conftest.HOST_SYNC_OPS); the C++ and Triton
    launchers' own host work shows up there too."""
    step = host_syncs(_step_impl(impl))
    B, V = 3, 1000
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, V, generator=g) * 3
    kw = dict(seeds=torch.arange(B) * 7919 + 1, step=2, top_k=50, repetition_penalty=1.3,
              seen=torch.rand(B, V, generator=g) < 0.2, suppress=torch.tensor([0, 5]),
              reward=torch.randn(B, V, generator=g), steer=1.5, return_scores=True)
    step(z, **kw, temperature=0.8, top_p=0.9, min_p=0.02)
    step(z, **kw, temperature=torch.rand(B, generator=g) + 0.5, top_p=torch.full((B,), 0.9),
         min_p=torch.full((B,), 0.02))
    step(z.bfloat16(), seeds=kw["seeds"], step=3, do_sample=False, top_p=0.5)
    assert host_syncs.calls() == 3
    assert not host_syncs.found(), "host syncs in the step:\n" + "\n".join(sorted(set(host_syncs.found())))
