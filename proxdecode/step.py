"""The decode step, torch reference: logits in, one token per row out.

This function is the specification. Triton (``kernels/``) and C++ (``csrc/``) versions
of the same step must reproduce it: the same candidate set, the same probabilities to fp32
rounding and, because the random draws are a pure function of (row seed, step, token id),
the same tokens.

Pipeline, per row of ``logits`` ``[B, V]`` (the README's "How it works"):

1. flag rows with a NaN or ``+inf`` logit, or no finite logit, as invalid (never sampled);
2. repetition penalty on tokens already seen (HF: divide positive, multiply negative);
3. suppressed ids (``min_new_tokens`` hides EOS) set to ``-inf``;
4. temperature: ``s = z / T``;
5. candidate set on ``s``: top-k, then top-p, then min-p, in HF's order. Top-k keeps
   every value ``>=`` the k-th largest, ties included, as HF's ``TopKLogitsWarper`` does,
   up to ``TIE_ROOM`` tokens past the k-th; it reads ``torch.topk(s, k + TIE_ROOM)`` (no
   sort of the vocabulary), and top-p then works on that sorted list only; only without
   top-k does top-p sort the row;
6. steer inside the candidate set: ``s_a + beta * R[b, a]``;
7. pick: Gumbel-max over the counter-based draws when sampling, argmax otherwise
   (the lowest id among the tied candidates wins, as ``torch.argmax`` picks; when top-p,
   or top-k past its room, cuts inside a tie group, which ids stay is
   ``torch.topk``/``torch.sort``'s choice here, the lowest ids in the C++ and Triton steps);
8. emit the token, its log-prob under step 6's distribution and under the raw model
   (``log_softmax(z)`` at temperature 1, before any processing).

Ties: HF's top-k keeps every token tied with the k-th value, and so does this step while
they number at most ``TIE_ROOM`` past the k-th (real bf16 logits tie there a few at a time;
a row of thousands of equal logits is where the bound bites: then the list's ``k +
TIE_ROOM`` slots go to tokens of the tie, ``torch.topk``'s choice here, the lowest ids in
the C++ and Triton steps). Without a bound, the list would have no fixed length: a full
sort, or a host sync, every step. Top-p keeps a token while the mass ranked strictly above
it is below ``p``, which is HF's rule written in descending order; of a tied group it
keeps as many as HF does (up to fp32 rounding where the group's mass lands on ``p``
itself), and which tied ids stay is each side's sort order's choice.
No ``.item()``, no host sync, no branch on tensor values.

``select_step`` picks the implementation once per (backend, device), as vLLM's sampler
does: ``"auto"`` takes the C++ step on CPU and the Triton step on CUDA when they are
there, and this torch function otherwise; it is always the fallback and the oracle.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from . import philox

# Tokens tied with the k-th largest value that top-k keeps past the k-th (HF keeps every
# tie). The C++, CUDA and Triton steps use the same number.
TIE_ROOM = 64


@dataclass
class StepOutput:
    """What one step emits, each ``[B]``."""

    tokens: torch.Tensor  # int64
    logprobs: torch.Tensor  # float32, under the steered, filtered distribution
    policy_logprobs: torch.Tensor  # float32, under softmax(raw logits)
    valid: torch.Tensor  # bool; False: the row had no usable logits and its token is junk
    scores: torch.Tensor | None = None  # [B, V] the scores sampled from, -inf outside the set


def _per_row(x, batch: int, device) -> torch.Tensor:
    """A scalar or ``[B]`` parameter as a float32 ``[B, 1]`` column (a Python number is a fill
    on the device, not a copy from the host)."""
    if isinstance(x, numbers.Real):
        return torch.full((batch, 1), float(x), dtype=torch.float32, device=device)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"temperature, top_p and min_p take a Python number or a [B] tensor, got {type(x).__name__}")
    t = x.to(device=device, dtype=torch.float32)
    return t.expand(batch).reshape(batch, 1) if t.ndim == 0 else t.reshape(batch, 1)


def sample_step(
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
    """Choose one token per row (torch reference; out of place, no host sync).

    Args:
        logits: ``[B, V]`` fp32/bf16/fp16 next-token logits; not modified.
        seeds: ``[B]`` int64 Philox keys, one per row, in [0, 2**63).
        step: decode step index, the Philox counter's second word: an int, or a 0-d int64
            tensor (a compiled loop's, so one graph serves every step).
        do_sample: Gumbel-max sampling if True, argmax if False.
        temperature: scalar or ``[B]``, > 0.
        top_k: keep the logits ``>=`` the ``top_k``-th largest (ties: up to ``TIE_ROOM``
            past it); 0 or ``>= V`` disables.
        top_p: scalar or ``[B]`` in (0, 1]; 1 disables.
        min_p: scalar or ``[B]`` in [0, 1]; 0 disables.
        repetition_penalty: > 0; applied to the ids marked in ``seen``.
        seen: ``[B, V]`` bool, tokens present in the row so far (prompt included).
        suppress: ``[S]`` int64 ids set to ``-inf`` this step.
        reward: ``[B, V]`` float32 proximal reward of every candidate, or None.
        steer: beta, the weight of ``reward`` inside the candidate set.
        return_scores: also return the dense ``[B, V]`` scores (HF's ``output_scores``).

    Returns:
        StepOutput with ``[B]`` tensors on ``logits.device``.
    """
    B, V = logits.shape
    z = logits.float()  # [B, V]; one read of the logits
    row_max = z.amax(dim=-1)  # [B]; NaN and +inf propagate, an all -inf row stays -inf
    valid = torch.isfinite(row_max)  # [B]
    z = raw = torch.where(valid[:, None], z, torch.zeros((), device=z.device))  # finite math
    policy_lse = torch.logsumexp(raw, dim=-1)  # [B]

    if repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(z < 0, z * repetition_penalty, z / repetition_penalty)
        z = torch.where(seen, penalised, z)  # [B, V]
    if suppress is not None and suppress.numel():
        z = z.index_fill(1, suppress, float("-inf"))
    s = z / _per_row(temperature, B, z.device)  # [B, V]

    # Candidate list [B, K]: sorted descending when a top-k or top-p needs the order.
    use_top_p = not (isinstance(top_p, (int, float)) and top_p >= 1.0)
    neg_inf = torch.full((), float("-inf"), device=s.device)
    if 0 < top_k < V:
        vals, idx = torch.topk(s, min(V, top_k + TIE_ROOM), dim=-1)  # [B, K], K = k + room
        keep = (vals > neg_inf) & (vals >= vals[:, top_k - 1 : top_k])  # HF: all ties at the k-th
    else:
        if use_top_p:
            vals, idx = torch.sort(s, dim=-1, descending=True)  # [B, V]
        else:
            vals, idx = s, torch.arange(V, device=s.device).expand(B, V)
        keep = vals > neg_inf  # [B, K]
    if use_top_p:
        probs = torch.softmax(torch.where(keep, vals, neg_inf), dim=-1)  # [B, K]
        mass_above = torch.cumsum(probs, dim=-1) - probs
        keep &= mass_above < _per_row(top_p, B, z.device)
    if not (isinstance(min_p, (int, float)) and min_p <= 0.0):
        vmax = vals.max(dim=-1, keepdim=True).values  # [B, 1]
        keep &= vals >= vmax + torch.log(_per_row(min_p, B, z.device))

    scores = vals if reward is None or steer == 0.0 else vals + steer * reward.float().gather(1, idx)
    scores = torch.where(keep, scores, neg_inf)  # [B, K]
    logp = torch.log_softmax(scores, dim=-1)  # [B, K]
    if do_sample:
        u = philox.uniform(seeds, step, idx)  # [B, K]
        pick = torch.argmax(scores - torch.log(-torch.log(u)), dim=-1)  # Gumbel-max
    else:
        best = scores.max(dim=-1, keepdim=True).values
        pick = torch.where(scores == best, idx, V).argmin(dim=-1)  # lowest id among ties
    pick = pick[:, None]  # [B, 1]
    tokens = idx.gather(1, pick)[:, 0]  # [B]
    logprobs = logp.gather(1, pick)[:, 0]
    valid &= torch.isfinite(logprobs)
    policy_logprobs = raw.gather(1, tokens[:, None])[:, 0] - policy_lse
    dense = None
    if return_scores:
        dense = torch.full_like(s, float("-inf")).scatter(1, idx, scores)  # [B, V]
    return StepOutput(tokens, logprobs, policy_logprobs, valid, dense)


BACKENDS = ("auto", "torch", "triton", "cpp")
_SELECTED: dict[tuple[str, str], object] = {}


def select_step(backend: str, device) -> object:
    """The step function for ``backend`` on ``device`` (same signature as ``sample_step``).

    ``"auto"``: ``"cpp"`` on CPU, ``"triton"`` on CUDA, when available (the C++ extension
    builds on first use; if it cannot, a one-time warning says so and torch is used).
    An explicitly requested backend that cannot run raises ``ValueError``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    dev = torch.device(device).type
    key = (backend, dev)
    if key not in _SELECTED:
        _SELECTED[key] = _resolve(backend, dev)
    return _SELECTED[key]


def _resolve(backend: str, dev: str):
    import os

    if backend == "torch":
        return sample_step
    interpreted = backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
    if backend in ("triton", "auto") and (dev == "cuda" or interpreted):
        try:
            from proxdecode.kernels.sample_step import sample_step_triton
            return sample_step_triton
        except ImportError as e:
            if backend == "triton":
                raise ValueError(f"backend='triton' needs triton installed: {e}") from None
            return sample_step
    if backend == "triton":
        raise ValueError(f"backend='triton' needs a CUDA device (or TRITON_INTERPRET=1), got {dev!r}")
    if backend in ("cpp", "auto") and dev == "cpu":
        try:
            from . import cpp
        except ImportError:
            cpp = None
        if cpp is not None and cpp.available():  # builds once per machine; warns once and says why if it cannot
            return cpp.sample_step_cpp
        if backend == "cpp":
            raise ValueError("backend='cpp': the C++ step could not be built here (see the warning above)")
        return sample_step
    if backend == "cpp":
        raise ValueError(f"backend='cpp' runs on CPU only here, got device {dev!r}")
    return sample_step
