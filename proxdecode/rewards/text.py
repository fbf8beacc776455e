"""Text rewards: any Python function of the decoded completion.

Some rewards only exist as a function of text: the seed's ``get_reward(text)``, TextBlob's
exact polarity, sacrebleu, a HF sequence-classification reward model. They cannot score
every candidate token (that would be ``V`` calls a row a step, which is what the seed-style
baseline in ``benchmarks/`` does and why it is slow), so they do not steer; they are
*recorded*. ``TextReward`` runs them once generation is over, off the hot path:

- ``every=None``: ``fn(completion)`` is a terminal reward on the row's last valid step;
- ``every=k``: a potential difference ``Phi(prefix_t) - Phi(prefix_{t-k})`` on the token
  that completes each ``k``-token prefix (and on the last token), with ``Phi = fn`` and
  ``Phi(empty) = 0``, so a row's rewards still sum to ``fn(completion)`` while the
  trainer sees where along the text the value changed (Ng, Harada & Russell, 1999).

Because the values depend only on the chosen tokens, computing them after the loop gives
exactly what computing them during it would. The completion is decoded with special
tokens skipped, as TRL's reward functions receive it.
"""

from __future__ import annotations

import torch

from .base import Reward, RewardError, finite_number  # noqa: F401 (RewardError: re-exported)


class TextReward(Reward):
    """A Python ``fn(text) -> float`` as a terminal or potential-shaped reward.

    Args:
        fn: called with the decoded completion (or a prefix of it); must return a finite
            real number (a Python or numpy scalar, or a 0-d tensor). Runs on the host, once
            per row (``every=None``) or once per ``every`` tokens.
        every: None for a terminal reward, or a step count >= 1 for potential differences.
    Oracle: the rewards of a row sum to ``fn(completion)`` (an empty completion, as a TRL
    reward function may get, has ``fn("")`` at position 0). When ``fn`` fails, this family's
    rewards are NaN, the other text families still run, and ``RewardError`` is raised.
    """

    kind = "text"
    default_name = "text"

    def __init__(self, fn, every: int | None = None, weight: float = 1.0, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"TextReward: fn must be callable text -> float, got {type(fn).__name__}")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"TextReward: every must be None or an int >= 1, got {every!r}")
        super().__init__(weight, name or getattr(fn, "__name__", None) or self.default_name)
        self.fn, self.every = fn, every

    def _phi(self, text: str, row: int) -> float:
        try:
            value = self.fn(text)
        except Exception as e:  # the user's function: report which reward and which row
            raise RewardError(f"TextReward {self.name!r} raised {type(e).__name__}: {e} "
                              f"(row {row}, text {text[:60]!r})") from e
        number = finite_number(value)
        if number is None:
            raise RewardError(f"TextReward {self.name!r} returned {value!r} for row {row} "
                              f"(text {text[:60]!r}); it must return a finite real number (Python, numpy "
                              f"or a 0-d tensor)")
        return number

    def rewards(self, tokenizer, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` unweighted rewards for the completions ``tokens`` ``[B, T]`` under ``mask``."""
        out = torch.zeros(tokens.shape, dtype=torch.float32)
        if tokens.shape[1] == 0:  # no step to hold a value (the engine and TRL's scorer give one)
            return out.to(tokens.device)
        rows, lengths = tokens.cpu().tolist(), mask.sum(1).tolist()
        for b, (row, n) in enumerate(zip(rows, lengths)):
            marks = list(range(self.every, n, self.every)) if self.every else []
            prev = 0.0
            for k in marks + [n]:
                phi = self._phi(tokenizer.decode(row[:k], skip_special_tokens=True), b)
                out[b, max(k - 1, 0)] = phi - prev  # an empty completion's fn("") at position 0
                prev = phi
        return out.to(tokens.device)
