"""The decode step as one Triton kernel: logits in, one token per row out, no sort.

Why
---
The torch reference (``proxdecode.step.sample_step``, the spec) makes a dozen or so passes
over the ``[B, V]`` logits (``.float()``, ``amax``, ``isfinite``, ``where``,
``logsumexp``, the penalty, the division by T, ``topk`` or a full ``sort``, ``softmax``,
``cumsum``...), each a kernel launch that reads and writes fp32 ``[B, V]`` tensors. HF's
``TopPLogitsWarper`` sorts the whole row. The step is memory-bound: its floor is one read
of the logits. This kernel reads them twice in the common case (top-k <= 256) and writes
only ``[B]`` outputs.

Reference
---------
``proxdecode/step.py``. Per row: validity flag; repetition penalty; suppressed ids;
``s = z / T``; top-k -> top-p -> min-p on ``s``; ``s + beta * R`` inside the set;
Gumbel-max with ``u = philox(seed, step, token_id)`` (or argmax, lowest id on ties);
log-prob under the steered set, log-prob under ``log_softmax(z)`` at T = 1.

Kernel (one program per row, looping over V in ``BLOCK`` chunks)
-----------------------------------------------------------------
Pass 1 (read logits [+ seen]): flags NaN/+inf and "any finite"; the raw row's
  log-sum-exp (online, per lane); of ``s``: per-lane maxima (lane ``l`` holds ids
  ``l, l + BLOCK, ...``), per-lane finite minima, finite count.
Top-k <= 256 ("tile" path, the usual case, e.g. HF's default top_k=50):
  * a lower bound ``L`` on the k-th largest ``s``: the k-th largest *lane maximum* is
    one (k lanes each hold a value >= it), found to 1/1024 of its range by five rounds
    of four-way counting over the ``BLOCK`` lane maxima, in registers;
  * pass 2 (read logits [+ seen] again): compact every finite ``s >= L`` with its id
    into a per-row scratch of ``CAP = next_pow2(2k)`` slots (block prefix sums give the
    slots). Typically ~k values land there;
  * in registers on that tile: each candidate's rank under the order (value desc, id
    asc) and the mass ranked above it, by pairwise comparison (``CAP x 16`` at a time);
    keep values >= the k-th with rank < k + ``TIE_ROOM`` (top-k: HF's ties, up to the
    room), mass above < p * mass of the top-k (top-p), ``s >= max +
    log(min_p)`` (min-p); read ``R`` at the kept ids only; Gumbel-max over them.
  If more than ``CAP`` values pass ``L`` (heavy ties, adversarial layouts) the row
  falls back to the general path below, inside the same kernel.
General path (no top-k, top-k > 256, or the tile overflowed), sort-free threshold
searches, each pass counting against NT = 16 thresholds at once (a 17-way search; the
first pass spaces them geometrically below the max, where the boundary usually is):
  * top-k: find the exact k-th largest value ``thr`` (stop early when
    ``count(s >= t) == k``); the set is ``s > thr`` plus the ties at ``thr``, all of
    them up to ``k + TIE_ROOM`` members, the lowest ids past that (a running prefix count
    of ties in every later pass);
  * top-p: bisect on a value ``t`` for the rule "keep a token while the mass ranked
    strictly above it is < p": ``M(t) = sum(e^(s - max) for candidates s > t)``;
    converge until one candidate (or one tied value) is left in ``(lo, hi]``; keep
    ``s > lo``, and of a tied value the first ids its mass allows, in id order (a
    running prefix count, as top-k's);
  * final pass: the candidate mask, ``R`` read where the mask is set, an online
    log-sum-exp of the steered scores and a running Gumbel-max (lowest id on ties).

Memory traffic per step (e = 4 bytes fp32, 2 bf16; +1 byte per entry when a
repetition penalty reads ``seen``): tile path ``2 * B * V * e`` plus ``O(B * k)``
(scratch, reward gathers, outputs of 17 bytes per row); general path
``(2 + n_k + n_p) * B * V * e`` with ``n_k``/``n_p`` the search passes (typically
2-6 each in the interpreter tests) plus, with steering, the reward sectors that hold
candidates. The reference moves roughly a dozen fp32 ``[B, V]`` reads and writes, plus a
sort of every row when top-p runs without top-k.
``return_scores`` adds a ``B * V * 4`` fill and a scatter of the kept scores.

Exactness against the reference
-------------------------------
* Draws: ``tl.rand(seed, (step << 32) + id)`` is bit-exact with ``philox.uniform``;
  the scores the noise is added to are computed with the same fp32 operations
  (``div_rn`` for the divisions, no FMA contraction on GPU), so tokens are identical
  except when two perturbed scores lie within a few ulps of each other (``log`` is
  libdevice's on GPU, numpy's in the interpreter, torch's in the reference).
* Top-k keeps every value ``>=`` the k-th, as HF's ``TopKLogitsWarper`` does, up to
  ``k + TIE_ROOM`` tokens; past that, the lowest ids among the ties at the k-th value.
  That is what ``torch.topk`` on CUDA does as far as we know (its radix select fills the
  ties in index order; ``benchmarks/gpu.py`` checks it); on CPU ``torch.topk``'s choice
  among ties is unspecified, so there only the allowed set can be compared.
* A general-path search that has not converged after ``MAX_ITERS`` passes keeps all of
  its last bracket, a few tokens more than the rule. That takes values packed far more
  densely than the row's range (thousands of logits within ~1e-20 of each other).
* Top-p orders ties by id (the reference's order among ties is its sort's): the tile
  path ranks them so, the general path cuts a tied group at the boundary after the first
  ``ceil((p Z - M(tie)) / e^(tie - max))`` ids. Off ties, a token can differ only when its
  mass-above is within fp32 rounding of ``p``.
* A per-row ``top_p >= 1`` disables top-p for that row (the reference applies
  ``mass_above < 1``, which can drop tail tokens whose mass rounds to 0).
* Repetition penalty divides as torch does on the device (``z * fp32(1/rp)`` on CUDA,
  ``z / rp`` on CPU). Scalar ``min_p`` uses ``math.log`` rounded to fp32 (the
  reference's fp32 ``torch.log`` can be an ulp away: boundary cases only).
* Invalid rows (NaN/+inf, or no finite logit): ``valid`` is False and the token,
  in ``[0, V)``, and both log-probs are junk, as the reference says; they are not the
  reference's junk.
"""

from __future__ import annotations

import math
import os
import struct

import torch
import triton
import triton.language as tl

from proxdecode.kernels.sample_step_paths import (
    _general_pick, _kth_lower_bound, _lse_add, _lse_finish, _scores, _tile_pick, libdevice)
from proxdecode.step import StepOutput

NEG_INF = float("-inf")
KMAX_TILE = 256  # largest top_k served by the tile path (CAP = next_pow2(2k) <= 512)
NT = 16  # thresholds tested per pass in the general searches
MAX_ITERS = 16  # passes per general search (17-way each: far past fp32 resolution)


# ----------------------------------------------------------------------------- the kernel
# (its per-row pieces, the tile and general paths, are in sample_step_paths.py)
@triton.jit(do_not_specialize=["step", "k", "S"])
def _sample_step_kernel(
    logits_ptr, stride_l, V, seeds_ptr, step,
    temp_ptr, temp_val, top_p_ptr, top_p_val, log_min_p_ptr, log_min_p_val, k,
    rp, inv_rp, seen_ptr, stride_seen, sup_ptr, S, reward_ptr, stride_r, steer,
    sv_ptr, si_ptr, tok_ptr, lp_ptr, plp_ptr, valid_ptr, dense_ptr,
    BLOCK: tl.constexpr, SUB: tl.constexpr, NT: tl.constexpr, MAX_ITERS: tl.constexpr,
    CAP: tl.constexpr,
    JB: tl.constexpr, TILE: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr,
    MINP: tl.constexpr, T_ROW: tl.constexpr, P_ROW: tl.constexpr, MINP_ROW: tl.constexpr,
    PENALTY: tl.constexpr, RP_RECIP: tl.constexpr, SUPPRESS: tl.constexpr,
    REWARD: tl.constexpr, DO_SAMPLE: tl.constexpr, DENSE: tl.constexpr,
    LIBDEVICE: tl.constexpr,
):
    row = tl.program_id(0)
    row64 = row.to(tl.int64)
    logits_row = logits_ptr + row64 * stride_l
    seen_row = seen_ptr + row64 * stride_seen
    reward_row = reward_ptr + row64 * stride_r
    dense_row = dense_ptr + row64 * V
    seed = tl.load(seeds_ptr + row)
    zero = tl.zeros([], dtype=tl.float32)  # makes scalar arguments fp32 tensors
    temp = tl.load(temp_ptr + row) if T_ROW else temp_val + zero
    top_p = tl.load(top_p_ptr + row) if P_ROW else top_p_val + zero
    log_min_p = tl.load(log_min_p_ptr + row) if MINP_ROW else log_min_p_val + zero

    # Pass 1: validity, the raw row's log-sum-exp, per-lane statistics of s.
    bad = tl.zeros([BLOCK], dtype=tl.int32)
    raw_finite = tl.zeros([BLOCK], dtype=tl.int32)
    pm = tl.full([BLOCK], float("-inf"), tl.float32)
    pacc = tl.zeros([BLOCK], dtype=tl.float32)
    lane_max = tl.full([BLOCK], float("-inf"), tl.float32)
    lane_min = tl.full([BLOCK], float("inf"), tl.float32)
    lane_fin = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z, zc, s = _scores(logits_row, seen_row, offs, V, rp, inv_rp, temp, sup_ptr, S,
                           PENALTY, RP_RECIP, SUPPRESS)
        bad = tl.maximum(bad, ((z != z) | (z == float("inf"))).to(tl.int32))
        raw_finite = tl.maximum(raw_finite, ((z > float("-inf")) & (z < float("inf"))).to(tl.int32))
        pm, pacc = _lse_add(pm, pacc, zc)
        finite = s > float("-inf")
        lane_max = tl.maximum(lane_max, s)
        lane_min = tl.minimum(lane_min, tl.where(finite, s, float("inf")))
        lane_fin += finite.to(tl.int32)
    valid = (tl.max(bad, 0) == 0) & (tl.max(raw_finite, 0) > 0)
    policy_lse = _lse_finish(pm, pacc)
    m_s = tl.max(lane_max, 0)
    s_min = tl.min(lane_min, 0)
    n_fin = tl.sum(lane_fin, 0)

    if TILE:
        # Pass 2: compact every finite s >= L (L <= the k-th largest s) into the scratch.
        bound = _kth_lower_bound(lane_max, k, m_s, 4, 5)
        sv_row = sv_ptr + row64 * CAP
        si_row = si_ptr + row64 * CAP
        c = tl.zeros([], dtype=tl.int32)
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            _z, _zc, s = _scores(logits_row, seen_row, offs, V, rp, inv_rp, temp, sup_ptr, S,
                                 PENALTY, RP_RECIP, SUPPRESS)
            take = ((s >= bound) & (s > float("-inf"))).to(tl.int32)
            slot = c + tl.cumsum(take, 0) - 1
            write = (take != 0) & (slot < CAP)
            tl.store(sv_row + slot, s, mask=write)
            tl.store(si_row + slot, offs, mask=write)
            c += tl.sum(take, 0)
        tl.debug_barrier()  # the scratch is written and read by different threads
        if c <= CAP:
            tok, score_tok, lse = _tile_pick(sv_row, si_row, c, k, m_s, top_p, log_min_p,
                                             reward_row, steer, seed, step, dense_row, V,
                                             CAP, JB, TOPP, MINP, REWARD, DO_SAMPLE, DENSE,
                                             LIBDEVICE)
        else:
            tok, score_tok, lse = _general_pick(logits_row, seen_row, V, rp, inv_rp, temp,
                                                sup_ptr, S, k, m_s, s_min, n_fin, top_p,
                                                log_min_p, reward_row, steer, seed, step,
                                                dense_row, BLOCK, SUB, NT, MAX_ITERS, TOPK, TOPP,
                                                MINP, PENALTY, RP_RECIP, SUPPRESS, REWARD,
                                                DO_SAMPLE, DENSE, LIBDEVICE)
    else:
        tok, score_tok, lse = _general_pick(logits_row, seen_row, V, rp, inv_rp, temp, sup_ptr,
                                            S, k, m_s, s_min, n_fin, top_p, log_min_p,
                                            reward_row, steer, seed, step, dense_row, BLOCK,
                                            SUB, NT, MAX_ITERS, TOPK, TOPP, MINP, PENALTY, RP_RECIP,
                                            SUPPRESS, REWARD, DO_SAMPLE, DENSE, LIBDEVICE)

    tok = tl.where(tok < V, tok, 0)  # nothing kept (invalid row): any in-range id
    logprob = score_tok - lse
    z_tok = tl.load(logits_row + tok).to(tl.float32)
    z_tok = tl.where((z_tok != z_tok) | (z_tok == float("inf")), 0.0, z_tok)
    valid = valid & (logprob == logprob) & (tl.abs(logprob) < float("inf"))
    tl.store(tok_ptr + row, tok.to(tl.int64))
    tl.store(lp_ptr + row, logprob)
    tl.store(plp_ptr + row, z_tok - policy_lse)
    tl.store(valid_ptr + row, valid.to(tl.int8))


# ----------------------------------------------------------------------------- launcher
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _autotune_wanted(device: torch.device) -> bool:
    return (device.type == "cuda" and not _interpreting()
            and os.environ.get("PROXDECODE_TRITON_AUTOTUNE", "1") != "0")


# Multi-config autotune only on a real GPU (it fails in the interpreter). Keyed on the
# vocabulary and the path; every config computes the same result (idempotent outputs).
_autotuned = triton.autotune(
    configs=[triton.Config({"BLOCK": b, "SUB": b // NT}, num_warps=w)
             for b, w in ((1024, 4), (2048, 8), (4096, 16))],
    key=["V", "TILE", "TOPP", "DO_SAMPLE"],
)(_sample_step_kernel)

GPU_BLOCK, GPU_WARPS = 2048, 8  # the fixed config when autotune is off
# The interpreter pays per operation, not per element: one wide chunk per pass is fastest
# there (tests lower this to exercise the multi-chunk loops).
INTERPRET_MAX_BLOCK = 8192


def _fp32(x: float) -> float:
    """``x`` rounded to the nearest float32, on the host (no tensor, so no device work)."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:  # beyond float32's range
        return math.copysign(math.inf, x)


def _fp32_reciprocal(x: float) -> float:
    """fp32(1 / fp32(x)), as torch's CUDA division by a scalar computes it. One float64
    division, then one rounding to float32, is the correctly rounded float32 quotient: double
    rounding is harmless when the wider format has >= 2p + 2 bits (53 >= 2 * 24 + 2)."""
    d = _fp32(x)
    return _fp32(1.0 / d) if d != 0.0 else math.copysign(math.inf, d)


def _row_param(x, batch: int, device) -> tuple[bool, torch.Tensor | None, float]:
    """A scalar or per-row parameter: (per_row, [B] fp32 tensor or None, scalar value)."""
    if isinstance(x, torch.Tensor):
        t = x.to(device=device, dtype=torch.float32)
        t = t.expand(batch) if t.ndim == 0 else t.reshape(batch)
        return True, t.contiguous(), 1.0
    return False, None, float(x)


def sample_step_triton(
    logits: torch.Tensor,
    *,
    seeds: torch.Tensor,
    step: int,
    do_sample: bool = True,
    temperature: float | torch.Tensor = 1.0,
    top_k: int = 0,
    top_p: float | torch.Tensor = 1.0,
    min_p: float | torch.Tensor = 0.0,
    repetition_penalty: float = 1.0,
    seen: torch.Tensor | None = None,
    suppress: torch.Tensor | None = None,
    reward: torch.Tensor | None = None,
    steer: float = 0.0,
    return_scores: bool = False,
) -> StepOutput:
    """Choose one token per row with one fused Triton kernel (same contract as ``sample_step``).

    Args:
        logits: ``[B, V]`` fp32/bf16/fp16 next-token logits (last dim contiguous, any row
            stride); read only, never modified.
        seeds: ``[B]`` int64 Philox keys, one per row, in [0, 2**63).
        step: decode step index, the Philox counter's second word, ``0 <= step < 2**32``.
        do_sample: Gumbel-max sampling if True, argmax (lowest id on ties) if False.
        temperature: Python number or ``[B]`` tensor, > 0.
        top_k: keep the scores ``>=`` the ``top_k``-th largest, ties included as in HF, up
            to ``top_k + TIE_ROOM`` (then the lowest ids among the ties); 0 or ``>= V``
            disables. ``top_k <= 256`` takes the two-pass tile path.
        top_p: number or ``[B]`` in (0, 1]; a number >= 1 disables; a row's value >= 1
            disables it for that row.
        min_p: number or ``[B]`` in [0, 1]; a number <= 0 disables.
        repetition_penalty: > 0, applied to the ids marked in ``seen``.
        seen: ``[B, V]`` bool, tokens present in each row so far.
        suppress: ``[S]`` int64 ids set to -inf this step (e.g. EOS before min_new_tokens).
        reward: ``[B, V]`` proximal rewards (fp32; other dtypes are converted, a copy);
            read only at candidate ids.
        steer: beta, the weight of ``reward`` inside the candidate set.
        return_scores: also return the dense ``[B, V]`` fp32 scores sampled from, -inf
            outside the candidate set (one extra fill and scatter).

    Returns:
        ``StepOutput`` on ``logits.device``: ``tokens`` int64 ``[B]``, ``logprobs`` fp32
        ``[B]`` under the steered filtered distribution, ``policy_logprobs`` fp32 ``[B]``
        (``log_softmax`` of the raw logits at T = 1), ``valid`` bool ``[B]``, ``scores``.

    Out of place; no host sync (scalars are kernel arguments, per-row parameters are read
    on the device; the only host work is shape checks and one launch). Under
    ``TRITON_INTERPRET=1`` it runs on CPU tensors, slowly.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    B, V = logits.shape
    device = logits.device
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    seeds = seeds.to(device=device, dtype=torch.int64).contiguous()

    tokens = torch.empty(B, dtype=torch.int64, device=device)
    logprobs = torch.empty(B, dtype=torch.float32, device=device)
    policy = torch.empty(B, dtype=torch.float32, device=device)
    valid = torch.empty(B, dtype=torch.uint8, device=device)
    dummy_f = logprobs  # a pointer for arguments a constexpr switches off
    if B == 0:
        return StepOutput(tokens, logprobs, policy, valid.bool(),
                          torch.empty(0, V, device=device) if return_scores else None)

    t_row, t_ptr, t_val = _row_param(temperature, B, device)
    topp = not (not isinstance(top_p, torch.Tensor) and top_p >= 1.0)
    p_row, p_ptr, p_val = _row_param(top_p, B, device)
    minp = not (not isinstance(min_p, torch.Tensor) and min_p <= 0.0)
    if isinstance(min_p, torch.Tensor):
        mp_row, mp_ptr, mp_val = True, torch.log(_row_param(min_p, B, device)[1]), 0.0
    else:
        mp_row, mp_ptr, mp_val = False, None, math.log(min_p) if min_p > 0 else NEG_INF

    topk = 0 < top_k < V
    penalty = repetition_penalty != 1.0 and seen is not None
    if penalty:
        if seen.stride(1) != 1:
            seen = seen.contiguous()
        seen_arg = seen.view(torch.uint8) if seen.dtype == torch.bool else seen
        stride_seen = seen_arg.stride(0)
    else:
        seen_arg, stride_seen = valid, 0
    rp = float(repetition_penalty)
    inv_rp = _fp32_reciprocal(rp) if penalty else 1.0
    has_sup = suppress is not None and suppress.numel() > 0
    sup = suppress.to(device=device, dtype=torch.int64).reshape(-1).contiguous() if has_sup else tokens
    use_reward = reward is not None and steer != 0.0
    if use_reward:
        reward = reward.float() if reward.dtype != torch.float32 else reward
        if reward.stride(1) != 1:
            reward = reward.contiguous()
        reward_arg, stride_r = reward, reward.stride(0)
    else:
        reward_arg, stride_r = dummy_f, 0
    dense = torch.full((B, V), NEG_INF, dtype=torch.float32, device=device) if return_scores else dummy_f

    autotune = _autotune_wanted(device)
    if _interpreting():
        fixed_block = min(INTERPRET_MAX_BLOCK, max(16, triton.next_power_of_2(V)))
        sub = fixed_block  # searches: [SUB, NT] tiles; width is free in numpy
    else:
        fixed_block, sub = GPU_BLOCK, GPU_BLOCK // NT  # [SUB, NT] = BLOCK values in registers
    tile = topk and top_k <= min(KMAX_TILE, 1024 if autotune else fixed_block)
    cap = max(16, triton.next_power_of_2(2 * top_k)) if tile else 16
    if tile:
        sv = torch.empty(B, cap, dtype=torch.float32, device=device)
        si = torch.empty(B, cap, dtype=torch.int32, device=device)
    else:
        sv, si = dummy_f, tokens

    args = (logits, logits.stride(0), V, seeds, int(step),
            t_ptr if t_row else dummy_f, t_val, p_ptr if p_row else dummy_f, p_val,
            mp_ptr if mp_row else dummy_f, mp_val, int(top_k),
            rp, inv_rp, seen_arg, stride_seen, sup, sup.numel() if has_sup else 0,
            reward_arg, stride_r, float(steer),
            sv, si, tokens, logprobs, policy, valid, dense)
    flags = dict(NT=NT, MAX_ITERS=MAX_ITERS, CAP=cap, JB=16, TILE=tile, TOPK=topk, TOPP=topp,
                 MINP=minp, T_ROW=t_row, P_ROW=p_row, MINP_ROW=mp_row, PENALTY=penalty,
                 RP_RECIP=device.type == "cuda", SUPPRESS=has_sup, REWARD=use_reward,
                 DO_SAMPLE=bool(do_sample), DENSE=bool(return_scores),
                 LIBDEVICE=device.type == "cuda" and not _interpreting() and libdevice is not None)
    if autotune:
        _autotuned[(B,)](*args, **flags, enable_fp_fusion=False)
    else:
        _sample_step_kernel[(B,)](*args, BLOCK=fixed_block, SUB=sub, **flags,
                                  num_warps=GPU_WARPS, enable_fp_fusion=False)
    return StepOutput(tokens, logprobs, policy, valid.view(torch.bool),
                      dense if return_scores else None)
