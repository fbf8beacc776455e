"""Model rewards: what a language model thinks of each candidate.

``Fluency`` is the policy's own log-probability of each candidate, ``log_softmax(z)``
at temperature 1: a reward for natural continuations that costs one log-softmax of the
logits the step already holds (the seed's "language model" reward, section 3.2).
"""

from __future__ import annotations

import torch

from .base import Reward


class Fluency(Reward):
    """Log-probability of each candidate under the policy (raw logits, temperature 1).

    Oracle: the chosen token's value equals ``Rollout.policy_logprobs``.
    """

    kind = "model"
    default_name = "fluency"

    def score(self, st, logits):
        return torch.log_softmax(logits.float(), dim=-1)  # [B, V]
