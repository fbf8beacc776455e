"""The Triton decode step against the torch reference (``proxdecode.step.sample_step``).

On CPU this runs in Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1``),
which pays per operation, so shapes stay small (V <= 4099, B <= 8) and many settings share
one call. What is checked, on the same seeds:

* identical tokens and identical candidate sets (the dense scores: -inf in the same places);
* log-probs, policy log-probs and scores to fp32 rounding. bf16 logits are upcast exactly
  on both sides, so the arithmetic is fp32 there too; its looser bound is headroom for
  the wider logit range of the bf16 generator below, not a different algorithm;
* steering with a reward, per-row parameters, penalty and suppressed ids, greedy;
* odd rows: one finite logit, all -inf, NaN, +inf; ties (greedy takes the lowest id;
  top-k keeps the ties at the k-th value, as HF, up to ``TIE_ROOM`` past it, then the
  lowest ids; top-p's documented tie rules);
  disabled filters (top_k = V, top_p = 1) and min_p = 1;
* the multi-chunk loops (chunk carries, cross-chunk argmax), by shrinking the block.

The reference's torch.topk on CPU chooses arbitrarily among ties, so the generators avoid
ties wherever tokens are compared with it; tie behaviour is tested against the kernel's
documented rule instead.
"""

import pytest
import torch

from conftest import assert_verbose_allclose

triton = pytest.importorskip("triton")

from proxdecode.kernels import sample_step as kernel_module  # noqa: E402
from proxdecode.kernels.sample_step import sample_step_triton  # noqa: E402
from proxdecode.step import TIE_ROOM, sample_step  # noqa: E402

# numpy warns on inf - inf inside the interpreter; the kernel masks those lanes
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NEG_INF = float("-inf")

# (dtype, atol, rtol) for log-probs and scores
DTYPES = [
    pytest.param((torch.float32, 1e-5, 1e-5), id="fp32"),
    pytest.param((torch.bfloat16, 1e-4, 1e-4), id="bf16"),
]


def _fp32_logits(B, V, seed):
    """Gaussian logits (std 3): no ties with probability ~1."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, V, generator=g) * 3


def _bf16_logits(B, V, seed):
    """bf16 logits whose top 512 are distinct: each row takes min(V, 512) different bf16
    values from [1, 16) (all of them: 4 octaves x 128) and fills the rest with small
    values below 1, which do tie but lie far under every top-k / top-p / min-p boundary
    the tests use (bf16 has 8 significant bits: a realistic bf16 row is full of ties)."""
    g = torch.Generator().manual_seed(seed)
    top = torch.arange(0x3F80, 0x4180, dtype=torch.int16).view(torch.bfloat16).float()  # [1, 16)
    rows = []
    for _ in range(B):
        n = min(V, top.numel())
        head = top[torch.randperm(top.numel(), generator=g)[:n]]
        tail = (torch.randn(V - n, generator=g) * 0.3).clamp(max=0.99)
        rows.append(torch.cat([head, tail])[torch.randperm(V, generator=g)])
    return torch.stack(rows).to(torch.bfloat16)


def _logits(dtype, B, V, seed=0):
    z = _fp32_logits(B, V, seed) if dtype == torch.float32 else _bf16_logits(B, V, seed)
    return z.to(device=DEVICE, dtype=dtype)


def _seeds(B, base=0):
    return torch.arange(B, dtype=torch.int64, device=DEVICE) * 7919 + base


def _compare(logits, atol, rtol, step=3, seeds=None, **kw):
    """Run both implementations with dense scores and check they agree."""
    seeds = _seeds(logits.shape[0]) if seeds is None else seeds
    want = sample_step(logits, seeds=seeds, step=step, return_scores=True, **kw)
    got = sample_step_triton(logits, seeds=seeds, step=step, return_scores=True, **kw)
    assert got.tokens.dtype == torch.int64 and got.valid.dtype == torch.bool
    assert got.logprobs.dtype == torch.float32 and got.scores.shape == logits.shape
    assert torch.equal(got.valid, want.valid), f"valid {got.valid.tolist()} != {want.valid.tolist()}"
    assert torch.equal(got.tokens, want.tokens), f"tokens {got.tokens.tolist()} != {want.tokens.tolist()}"
    assert_verbose_allclose(got.scores, want.scores, atol, rtol, "scores")  # same candidate set
    assert_verbose_allclose(got.logprobs, want.logprobs, atol, rtol, "logprobs")
    assert_verbose_allclose(got.policy_logprobs, want.policy_logprobs, atol, rtol, "policy_logprobs")
    return got, want


def _settings(name, B, V):
    """Named sampling settings; per-row ones are built for the batch."""
    g = torch.Generator().manual_seed(B * 1000 + V)
    row = lambda lo, hi: (lo + (hi - lo) * torch.rand(B, generator=g)).to(DEVICE)  # noqa: E731
    seen = (torch.rand(B, V, generator=g) < 0.2).to(DEVICE)
    return {
        # HF-style defaults: the tile path (top_k <= 256) with top-p on the top-k list
        "topk_topp": dict(top_k=50, top_p=0.9, temperature=0.8),
        # top-p alone: the general path's threshold search over the whole row
        "topp": dict(top_p=0.9),
        # top_k > 256: the general path's top-k search, then min-p
        "bigk_minp": dict(top_k=300, min_p=0.05, temperature=1.3),
        # one value per row for temperature, top_p, min_p (a top_p of 1 disables that row)
        "per_row": dict(top_k=20, temperature=row(0.5, 1.5),
                        top_p=torch.tensor([0.6, 1.0, 0.95] * 3, device=DEVICE)[:B],
                        min_p=row(0.0, 0.1)),
        # greedy with a repetition penalty and suppressed ids
        "greedy_penalty": dict(do_sample=False, top_k=10, repetition_penalty=1.3, seen=seen,
                               suppress=torch.tensor([0, V - 1], device=DEVICE)),
        # sampling with the penalty, suppression and top-p on the top-k list
        "penalty_suppress": dict(top_k=40, top_p=0.8, repetition_penalty=1.3, seen=seen,
                                 suppress=torch.tensor([1], device=DEVICE)),
    }[name]


# Each (dtype, V, B) runs two settings: every setting meets both dtypes and a few shapes.
CASES = [
    ((17, 1), ("topk_topp", "greedy_penalty")),
    ((1000, 3), ("topp", "per_row")),
    ((4099, 8), ("topk_topp", "bigk_minp")),
    ((1000, 1), ("penalty_suppress",)),
]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape,names", CASES, ids=[f"V{v}-B{b}" for (v, b), _ in CASES])
def test_matches_reference(dt, shape, names):
    dtype, atol, rtol = dt
    V, B = shape
    z = _logits(dtype, B, V, seed=V + B)
    for name in names:
        got, _ = _compare(z, atol, rtol, step=5, **_settings(name, B, V))
        assert got.valid.all(), name


@pytest.mark.parametrize("dt", DTYPES)
def test_steering_with_reward(dt):
    dtype, atol, rtol = dt
    B, V = 3, 1000
    z = _logits(dtype, B, V, seed=11)
    reward = torch.randn(B, V, generator=torch.Generator().manual_seed(12)).to(DEVICE)
    plain = sample_step_triton(z, seeds=_seeds(B), step=2, top_k=50, top_p=0.95, return_scores=True)
    got, _ = _compare(z, atol, rtol, step=2, top_k=50, top_p=0.95, reward=reward, steer=2.0)
    # steering reweights inside the same candidate set, never changes the set
    assert torch.equal(torch.isfinite(got.scores), torch.isfinite(plain.scores))
    inside = torch.isfinite(plain.scores)
    assert_verbose_allclose(got.scores[inside], (plain.scores + 2.0 * reward)[inside], atol, rtol, "steered")
    if dtype == torch.float32:  # the general path (no top-k), negative beta
        _compare(z, atol, rtol, step=4, top_p=0.8, reward=reward, steer=-1.5)


def test_multi_chunk_loops(monkeypatch):
    """Several chunks per pass: compaction and tie carries, the cross-chunk argmax."""
    monkeypatch.setattr(kernel_module, "INTERPRET_MAX_BLOCK", 256)
    B, V = 2, 1000
    z = _logits(torch.float32, B, V, seed=21)
    reward = torch.randn(B, V, generator=torch.Generator().manual_seed(22)).to(DEVICE)
    _compare(z, 1e-5, 1e-5, top_k=50, top_p=0.9, reward=reward, steer=1.0)  # tile path
    _compare(z, 1e-5, 1e-5, top_k=300, min_p=0.01)  # top-k search and its tie carry
    # greedy: the maximum tied across chunks at ids 700, 3 and 250 -> the lowest id
    z[0, [700, 3, 250]] = z[0].max() + 1
    got, _ = _compare(z, 1e-5, 1e-5, do_sample=False, top_p=0.9)
    assert got.tokens[0] == 3


@pytest.mark.parametrize("kw", [dict(top_k=50, top_p=0.9), dict(top_p=0.9)], ids=["tile", "general"])
def test_odd_rows(kw):
    """One finite logit; all -inf; NaN; +inf; a normal row. Invalid rows: valid False and
    a token inside the vocabulary (junk, never sampled from)."""
    V = 1000
    z = _logits(torch.float32, 5, V, seed=31)
    z[0] = NEG_INF
    z[0, 123] = 1.5
    z[1] = NEG_INF
    z[2, 17] = float("nan")
    z[3, 5] = float("inf")
    seeds = _seeds(5)
    want = sample_step(z, seeds=seeds, step=1, **kw)
    got = sample_step_triton(z, seeds=seeds, step=1, **kw)
    assert got.valid.tolist() == [True, False, False, False, True] == want.valid.tolist()
    assert ((got.tokens >= 0) & (got.tokens < V)).all()
    assert got.tokens[0] == 123 and got.logprobs[0] == 0.0
    assert got.tokens[4] == want.tokens[4]
    assert_verbose_allclose(got.logprobs[[0, 4]], want.logprobs[[0, 4]], 1e-5, 1e-5, "logprobs")
    assert_verbose_allclose(got.policy_logprobs[[0, 4]], want.policy_logprobs[[0, 4]], 1e-5, 1e-5,
                            "policy_logprobs")


def test_ties():
    V = 1000
    z = _logits(torch.float32, 4, V, seed=41)
    z[0] = 0.0  # all equal: top-k fills its room with the lowest ids (general path)
    top = z[1].topk(6).values
    z[1, [900, 400]] = (top[3] + top[4]) / 2  # a tie at the 5th value: both stay, as in HF
    z[2] = NEG_INF
    z[2, [30, 10, 20, 40]] = 3.0  # a tied top-p boundary group
    z[3, [700, 3, 250]] = z[3].max() + 1  # a tied maximum
    keep = lambda out, r: set(torch.nonzero(torch.isfinite(out.scores[r]))[:, 0].tolist())  # noqa: E731
    seeds = _seeds(4)

    out = sample_step_triton(z, seeds=seeds, step=0, top_k=5, return_scores=True)
    assert keep(out, 0) == set(range(5 + TIE_ROOM))  # what torch.topk keeps on CUDA
    top4 = set(z[1].topk(4).indices.tolist())
    assert keep(out, 1) == top4 | {400, 900}
    for step in (1, 2):  # samples stay inside the allowed set
        t = sample_step_triton(z[:2], seeds=seeds[:2], step=step, top_k=5).tokens
        assert int(t[0]) < 5 + TIE_ROOM and int(t[1]) in top4 | {400, 900}

    # top-p 0.5 over four equal tokens: both paths order ties by id and keep two, as the
    # reference keeps a prefix of its order (HF's count).
    tile = sample_step_triton(z[2:3], seeds=seeds[:1], step=0, top_k=10, top_p=0.5, return_scores=True)
    assert keep(tile, 0) == {10, 20}
    ref = sample_step(z[2:3], seeds=seeds[:1], step=0, top_k=10, top_p=0.5, return_scores=True)
    assert len(keep(ref, 0)) == 2
    general = sample_step_triton(z[2:3], seeds=seeds[:1], step=0, top_p=0.5, return_scores=True)
    assert keep(general, 0) == {10, 20}

    for kw in (dict(), dict(top_k=10)):  # greedy: the lowest id among tied maxima
        got = sample_step_triton(z[3:], seeds=seeds[:1], step=0, do_sample=False, **kw)
        assert got.tokens.tolist() == [3]


def test_top_k_ties_at_zero_fill_the_room():
    """The k-th value tied at 0.0 below other values: the bracket around 0 cannot close (the
    floats down to the denormals); the tie is kept whole when it fits top-k's room (HF's
    set), its lowest ids past the room."""
    z = torch.full((2, 1000), -1.0)
    z[0, :40] = 0.0  # 40 ties at 0 over -1: top_k=5 keeps all 40 (tile overflow: general path)
    z[1] = 0.0
    z[1, :10] = torch.arange(1, 11).float()  # 10 above, 980 tied at 0: k > 256, general path
    z[1, 10:20] = -1.0
    for row, k in ((0, 5), (1, 500)):
        kw = dict(seeds=_seeds(1), step=0, top_k=k, return_scores=True)
        tri = sample_step_triton(z[row:row + 1], **kw)
        ref = sample_step(z[row:row + 1], **kw)
        kept = torch.nonzero(torch.isfinite(tri.scores[0]))[:, 0]
        n = k + TIE_ROOM if row else 40
        assert kept.numel() == n == int(torch.isfinite(ref.scores).sum())
        assert kept.tolist() == (list(range(10)) + list(range(20, 20 + n - 10)) if row else list(range(40)))


def test_disabled_filters_and_min_p_one():
    B, V = 3, 1000
    z = _logits(torch.float32, B, V, seed=51)
    plain = sample_step_triton(z, seeds=_seeds(B), step=7, return_scores=True)
    off, _ = _compare(z, 1e-5, 1e-5, step=7, top_k=V, top_p=1.0, min_p=0.0)
    assert torch.equal(off.tokens, plain.tokens) and torch.isfinite(off.scores).all()
    one, _ = _compare(z, 1e-5, 1e-5, step=7, min_p=1.0)  # only the maximum survives
    assert torch.equal(one.tokens, z.argmax(-1)) and (one.logprobs == 0).all()


def test_row_independent_of_batch():
    """A row's token depends on its seed, logits and settings only, not on the batch."""
    z = _logits(torch.float32, 3, 1000, seed=61)
    seeds = _seeds(3, base=5)
    kw = dict(top_k=50, top_p=0.9, temperature=0.7)
    batch = sample_step_triton(z, seeds=seeds, step=9, **kw)
    alone = sample_step_triton(z[2:], seeds=seeds[2:], step=9, **kw)
    assert batch.tokens[2] == alone.tokens[0] and batch.logprobs[2] == alone.logprobs[0]


def test_compiles_for_sm90(tmp_path):
    """The interpreter runs what the GPU compiler may reject: take the kernel through Triton's
    own pipeline and ptxas for an H100/H200, in nine of the launcher's configurations (fixed
    and autotuned blocks, general and tile paths, fp32/bf16/fp16, V divisible by 16 or not),
    with no GPU here. Registers and spills are ptxas' report; a few bytes of spill are its
    choice at the register cap (up to 40 at the time of writing; bounded here at 64)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("compile_sample_step_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a fresh cache: ptxas runs, and ~/.triton stays clean
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    got = {r["name"]: r for r in map(json.loads, run.stdout.splitlines())}
    from compile_sample_step_sm90 import CONFIGS
    assert set(got) == set(CONFIGS)
    for name, r in got.items():
        assert r["cubin_bytes"] > 0 and r["registers"] is not None, (name, r)
        assert r["shared"] <= 227 * 1024, (name, r)  # sm_90's per-block maximum
        assert r["spill_store_bytes"] <= 64 and r["stack_frame_bytes"] <= 64, (name, r)
