"""Model rewards: what a language model thinks of each candidate.

``Fluency`` is a log-probability of each candidate at temperature 1: under the policy's
own logits (free: one log-softmax of logits the step already holds; the seed's "language
model" reward, section 3.2) or under a reference model. ``KLPenalty`` is TRL's per-token
KL reward, ``-coef * (log pi(a) - log pi_ref(a))``, for every candidate ``a``; on the
chosen token it is exactly the term TRL's PPO trainer adds to each step's reward.

A reference model runs beside the policy in the same step: it gets its own KV cache,
prefilled with the same prompts when the call starts and fed the same chosen token each
step (``decoder.Decoder``, with the policy's ``linear=`` choice), so one extra forward per
step is all it costs. Its vocabulary
must be the policy's: a log-prob difference between two vocabularies means nothing.
"""

from __future__ import annotations

import torch

from ..decoder import model_vocab
from .base import Reward, finite_number


class _ReferenceModelReward(Reward):
    """Shared plumbing: an optional reference model stepped beside the policy."""

    kind = "model"

    def __init__(self, reference=None, weight: float = 1.0, name: str | None = None):
        super().__init__(weight, name)
        if reference is not None and not isinstance(reference, torch.nn.Module):
            raise TypeError(f"{type(self).__name__}: reference must be a HF causal LM (torch.nn.Module), "
                            f"got {type(reference).__name__}")
        self.reference = reference

    @property
    def traceable(self) -> bool:  # a reference model steps its own decoder, with host-side bookkeeping
        return self.reference is None

    def bind(self, tokenizer) -> None:
        if self.reference is not None:
            ref_vocab, n = model_vocab(self.reference), len(tokenizer)
            if not (n <= ref_vocab <= n + 256):
                raise ValueError(f"{type(self).__name__}: the reference model has {ref_vocab} logits per "
                                 f"position but the tokenizer has {n} tokens; the reference must share "
                                 f"the policy's vocabulary")

    def init(self, ctx):
        if self.reference is None:
            return {}
        from ..decoder import Decoder, builds_own_masks, check_model

        ref_vocab = model_vocab(self.reference)
        if ref_vocab != ctx.vocab:
            raise ValueError(f"{type(self).__name__}: the reference model has {ref_vocab} logits per "
                             f"position, the policy {ctx.vocab}; they must share one vocabulary")
        if ctx.prompt_ids is None:
            raise ValueError(f"{type(self).__name__}: a reference model needs the prompts (RewardContext.prompt_ids)")
        dev = next(self.reference.parameters()).device
        from ..linear import check_linear
        check_linear(ctx.linear, self.reference)  # linear="onednn" packs the reference too
        # always eager: the static cache on an accelerator, HF's dynamic one on the CPU, as the
        # policy's default (config._static_cache)
        static = dev.type != "cpu" and not builds_own_masks(self.reference)
        check_model(self.reference, ctx.prompt_ids.shape[1] + ctx.max_new_tokens, static)
        decoder = Decoder(self.reference, ctx.max_new_tokens, static_cache=static, linear=ctx.linear)
        with torch.inference_mode():
            logits = decoder.prefill(ctx.prompt_ids.to(dev), ctx.prompt_mask.to(dev))
        return {"decoder": decoder, "ref_logits": logits, "device": ctx.device}

    def _ref_logprobs(self, st) -> torch.Tensor:
        return torch.log_softmax(st["ref_logits"].float(), dim=-1).to(st["device"])  # [B, V]

    def update(self, st, tokens, alive):
        if self.reference is not None:
            dev = st["ref_logits"].device
            with torch.inference_mode():
                st["ref_logits"] = st["decoder"].step(tokens.to(dev))


class Fluency(_ReferenceModelReward):
    """Log-probability of each candidate (temperature 1) under the policy or a reference LM.

    Args:
        reference: a HF causal LM sharing the policy's vocabulary, or None for the policy.
    Oracle: with no reference, the chosen token's value equals ``Rollout.policy_logprobs``;
    with one, the reference's teacher-forced log-prob of the completion.
    """

    default_name = "fluency"

    def score(self, st, logits):
        if self.reference is None:
            return torch.log_softmax(logits.float(), dim=-1)  # [B, V]
        return self._ref_logprobs(st)  # [B, V]


class KLPenalty(_ReferenceModelReward):
    """TRL's per-token KL reward: ``-coef * (log pi(a) - log pi_ref(a))`` for each candidate.

    ``pi`` is the policy's raw distribution (temperature 1, before any filter: what TRL's
    trainers compute), ``pi_ref`` the reference's. Summed over a completion it is
    ``-coef`` times the sampled estimate of KL(pi || pi_ref) that PPO penalises.

    Args:
        reference: a HF causal LM sharing the policy's vocabulary (typically the policy's
            frozen initial weights).
        coef: kappa >= 0.
    Oracle: teacher-forced forwards of both models over the final sequences.
    """

    default_name = "kl"

    def __init__(self, reference, coef: float = 0.1, weight: float = 1.0, name: str | None = None):
        if reference is None:
            raise ValueError("KLPenalty: reference must be a model (the frozen reference policy)")
        number = finite_number(coef)
        if number is None or number < 0:
            raise ValueError(f"KLPenalty: coef must be a finite number >= 0, got {coef!r}")
        super().__init__(reference, weight, name)
        self.coef = number

    def score(self, st, logits):
        policy = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
        return -self.coef * (policy - self._ref_logprobs(st))  # [B, V]
