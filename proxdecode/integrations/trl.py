"""TRL: proxdecode rewards as a GRPO reward function, and rollouts in PPO's per-token layout.

TRL's ``GRPOTrainer`` calls each reward function with ``prompts``, ``completions`` and
``completion_ids`` (plus dataset columns) and wants one float per completion.
``reward_function(rewards)`` scores the completion tokens with a ``pd.Rewards`` set by
teacher forcing: the same table/state/text families that steer ``pd.generate``, run over
tokens TRL already sampled after their prompts (which families such as ``Capitalization``
and ``Repetition(include_prompt=True)`` read), summed (terminal values included) to each
completion's score.
Families of the "model" kind need the policy's logits at every step, which a reward
function does not see; they are refused (use ``pd.generate`` rollouts for them).

TRL's PPO (``PPOTrainer``, gone from TRL 1.x) adds a per-token KL penalty and puts the
sequence score at the end of the completion; ``ppo_token_rewards`` lays a ``Rollout`` out
that way, with the score on the last valid token (the EOS when there is one) and the KL
term on every valid token, that EOS included (TRL's own code skips it when pad equals EOS
and moves the score one past EOS when they differ). TRL itself is an optional extra
(``pip install -e .[trl]``); nothing here imports it.
"""

from __future__ import annotations

import torch

from ..rewards.base import finite_number


def score_completions(rewards, completion_ids: list[list[int]], prompts=None) -> torch.Tensor:
    """``[N]`` summed reward of each completion (token ids), by teacher forcing after its
    prompt: ``prompts`` as TRL passes them (strings, or chat messages, templated with the
    generation prompt as TRL templates them), or None for families that need none. An
    empty completion still gets the families' terminal values (``EndsWith``'s -1, a
    ``TextReward``'s ``fn("")``)."""
    tok = rewards.tokenizer
    N, T = len(completion_ids), max((len(c) for c in completion_ids), default=0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tokens = torch.full((N, max(T, 1)), pad, dtype=torch.long)
    mask = torch.zeros(N, max(T, 1), dtype=torch.bool)
    for i, c in enumerate(completion_ids):
        tokens[i, : len(c)] = torch.as_tensor(c, dtype=torch.long)
        mask[i, : len(c)] = True
    vocab = len(tok)
    prompt_ids = prompt_mask = None
    if prompts is not None:
        if len(prompts) != N:
            raise ValueError(f"{len(prompts)} prompts for {N} completions")
        texts = [p if isinstance(p, str) else tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts]
        enc = tok(texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
        prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]  # [N, P]
    run = rewards.start(vocab, N, "cpu", None, prompt_ids, prompt_mask, T)
    comps = torch.zeros(len(rewards.names), N, max(T, 1))
    zeros = torch.zeros(N, vocab)
    for t in range(T):  # nothing steers: each family's chosen-token path
        comps[:, :, t] = run.record(tokens[:, t], mask[:, t], zeros)
    last = (mask.sum(1) - 1).clamp(min=0)  # [N] an empty completion's terminal goes at position 0
    comps.scatter_add_(2, last[None, :, None].expand(len(rewards.names), N, 1), run.terminal(N, "cpu")[:, :, None])
    run.finish(comps, tokens, mask)
    return comps.sum(0).sum(1)  # [N]


def reward_function(rewards, name: str | None = None):
    """A GRPO reward function ``(prompts, completions, completion_ids=None, **kw) -> list[float]``.

    Args:
        rewards: a ``pd.Rewards`` set (table, state and text kinds).
        name: the function's ``__name__`` (TRL logs rewards under it); default "proxdecode".
    """
    model_kinds = [f.name for f in rewards.families if f.kind == "model"]
    if model_kinds:
        raise ValueError(f"reward_function: {model_kinds} need the policy's logits each step, which TRL's "
                         "reward functions do not receive; drop them or score pd.generate rollouts")
    tok = rewards.tokenizer

    def proxdecode_reward(prompts=None, completions=None, completion_ids=None, **kwargs) -> list[float]:
        if completion_ids is None:
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
            completion_ids = [tok.encode(t, add_special_tokens=False) for t in texts]
        with torch.inference_mode():
            return score_completions(rewards, [list(c) for c in completion_ids], prompts).tolist()

    proxdecode_reward.__name__ = name or "proxdecode"
    return proxdecode_reward


def ppo_token_rewards(rollout, ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0) -> torch.Tensor:
    """``[B, T]`` per-token rewards in TRL PPO's layout: ``-kl_coef * (log pi - log pi_ref)`` on
    every valid token, plus the row's summed proximal reward on its last valid token; 0 off
    the mask, whatever lies there. ``log pi`` is the rollout's ``policy_logprobs``, at
    temperature 1 (TRL's PPO took the log-probs at the sampling temperature: the KL terms
    differ where that is not 1). ``kl_coef`` > 0 needs ``ref_logprobs``."""
    mask = rollout.mask
    coef = finite_number(kl_coef)
    if coef is None or coef < 0:
        raise ValueError(f"kl_coef must be a finite number >= 0, got {kl_coef!r}")
    if coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs= (the reference model's log-probs of the tokens)")
    out = torch.zeros_like(rollout.rewards)
    if ref_logprobs is not None:
        if ref_logprobs.shape != mask.shape:
            raise ValueError(f"ref_logprobs must be {tuple(mask.shape)}, got {tuple(ref_logprobs.shape)}")
        out = torch.where(mask, -coef * (rollout.policy_logprobs - ref_logprobs), 0.0)  # [B, T]
    score = torch.where(mask, rollout.rewards, 0.0).sum(1)  # [B]
    last = (mask.sum(1) - 1).clamp(min=0)
    out = out.scatter_add(1, last[:, None], score[:, None])
    return torch.where(mask, out, 0.0)
