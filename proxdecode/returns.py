"""Returns and advantages: pure functions over ``[B, T]`` rewards and masks.

A trainer turns per-step rewards into learning signals: REINFORCE wants discounted returns,
PPO wants GAE advantages (Schulman et al., 2016), GRPO wants each completion's score
normalised within its group of completions of the same prompt (Shao et al., 2024).
Returns and GAE run as one reverse scan over ``T`` (``T`` small ops, no host sync);
positions where ``mask`` is False contribute nothing and get 0. Group advantages work on
one score per completion.
"""

from __future__ import annotations

import torch

from .rewards.base import finite_number


def _check(rewards: torch.Tensor, mask: torch.Tensor, gamma: float, name: str = "gamma",
           what: str = "rewards") -> float:
    """The shapes, a bool mask, and ``gamma`` (or ``lam``) as a float in [0, 1]."""
    if rewards.ndim != 2 or mask.shape != rewards.shape:
        raise ValueError(f"{what} and mask must both be [B, T]; got {tuple(rewards.shape)} "
                         f"and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True on generated tokens), got {mask.dtype}")
    g = finite_number(gamma)
    if g is None or not 0.0 <= g <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {gamma!r}")
    return g


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = sum_k gamma^k r_{t+k}`` over the valid steps of each row.

    Args:
        rewards: ``[B, T]`` float.
        mask: ``[B, T]`` bool, True on generated tokens (a prefix of each row).
        gamma: discount in [0, 1].

    Returns:
        ``[B, T]`` float32, 0 where ``mask`` is False. New tensor.
    """
    gamma = _check(rewards, mask, gamma)
    r = torch.where(mask, rewards.float(), 0.0)
    if gamma == 0.0:  # each step's own reward (0 * an inf later return would be NaN)
        return r
    out = torch.zeros_like(r)
    running = r.new_zeros(r.shape[0])  # [B]; T may be 0
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running * mask[:, t]
        out[:, t] = running
    return torch.where(mask, out, 0.0)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; the value after a row's last valid step is 0.

    Args:
        rewards, values: ``[B, T]`` float; ``values[b, t]`` estimates the return from step t.
        mask: ``[B, T]`` bool, True on generated tokens.
        gamma, lam: discount and GAE lambda, each in [0, 1].

    Returns:
        ``(advantages, returns)``, each ``[B, T]`` float32, 0 where ``mask`` is False;
        ``returns = advantages + values`` on valid steps (the value-function target).
    """
    gamma = _check(rewards, mask, gamma)
    lam = _check(values, mask, lam, "lam", "values")
    m = mask.float()
    r, v = torch.where(mask, rewards.float(), 0.0), torch.where(mask, values.float(), 0.0)  # NaN off the mask too
    adv = torch.zeros_like(r)
    running = r.new_zeros(r.shape[0])  # [B]; T may be 0
    for t in range(r.shape[1] - 1, -1, -1):
        next_v = v[:, t + 1] * m[:, t + 1] if t + 1 < r.shape[1] else torch.zeros_like(running)
        delta = r[:, t] + gamma * next_v - v[:, t]
        carry = running * m[:, t + 1] if gamma * lam > 0 and t + 1 < r.shape[1] else 0.0  # not 0 * inf
        running = (delta + gamma * lam * carry) * m[:, t]
        adv[:, t] = running
    return adv, (adv + v) * m


def group_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-4,
                     scale: bool | str = True) -> torch.Tensor:
    """GRPO advantages as TRL's ``GRPOTrainer`` computes them: each score minus its group's
    mean, over the group's std plus ``eps`` when scaled.

    Args:
        scores: ``[N]`` float, one per completion; groups are consecutive runs of
            ``group_size`` (the order ``num_return_sequences`` produces). NaN marks a
            completion nothing could score: it is left out of its group's mean and std and
            gets advantage 0 (TRL's rule for unscorable completions); +-inf raises.
        group_size: completions per prompt, >= 1, dividing ``N``.
        eps: added to the std (TRL: 1e-4); the std is Bessel-corrected, as TRL's ``nanstd``.
        scale: ``True``/``"group"`` divides by the group's std (GRPO), ``"batch"`` by the
            std of all ``N`` scores, ``False``/``"none"`` only centres (Dr. GRPO).

    Returns:
        ``[N]`` float32.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be [N], got shape {tuple(scores.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
            or scores.numel() % group_size:
        raise ValueError(f"group_size must be an integer >= 1 dividing {scores.numel()}, got {group_size!r}")
    if not (scale is True or scale is False or scale in ("group", "batch", "none")):
        raise ValueError(f"scale must be True, False, 'group', 'batch' or 'none', got {scale!r}")
    eps_ = finite_number(eps)
    if eps_ is None or eps_ < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    eps = eps_
    if bool(torch.isinf(scores).any()):
        raise ValueError("scores has +-inf (NaN marks an unscorable completion; inf is not a score)")
    g = scores.float().view(-1, group_size)  # [G, n]
    centred = g - g.nanmean(-1, keepdim=True)
    if scale in (True, "group"):
        std = _nanstd(g, -1) if group_size > 1 else torch.zeros_like(g[:, :1])  # [G, 1]
        centred = centred / (std + eps)
    elif scale == "batch":
        std = _nanstd(g.reshape(1, -1), -1) if g.numel() > 1 else g.new_zeros(1, 1)  # [1, 1]
        centred = centred / (std + eps)
    return centred.reshape(-1).nan_to_num(nan=0.0)


def _nanstd(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Bessel-corrected std over ``dim`` ignoring NaN (NaN with fewer than two values), kept dim."""
    mean = x.nanmean(dim, keepdim=True)
    count = (~x.isnan()).sum(dim, keepdim=True)
    var = ((x - mean) ** 2).nanmean(dim, keepdim=True) * count / (count - 1)
    return torch.where(count > 1, var, float("nan")).sqrt()
