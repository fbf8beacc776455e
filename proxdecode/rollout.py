"""``Rollout``: what ``pd.generate`` returns when asked for more than token ids.

It subclasses HF's ``GenerateDecoderOnlyOutput``, what ``model.generate`` returns with
``return_dict_in_generate=True``, so code written for that keeps working (``isinstance``,
``out.sequences``, ``out.scores``, ``out.logits``, ``out.hidden_states``, ``out.attentions``,
``out["sequences"]``). Its cache stays None: the engine keeps its cache. It also carries
what an on-policy trainer needs per generated token, aligned on ``[B, T]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation import GenerateDecoderOnlyOutput


@dataclass
class Rollout(GenerateDecoderOnlyOutput):
    """Per-token results of one ``generate`` call (``B`` rows, ``T`` new tokens).

    Attributes:
        sequences: ``[B, P+T]`` int64, prompt then new tokens, pad after EOS: what HF returns.
        tokens: ``[B, T]`` int64, the new tokens.
        mask: ``[B, T]`` bool, True up to and including each row's EOS.
        logprobs: ``[B, T]`` float32, log-prob of each token under the distribution it was
            drawn from (filtered, steered); the behaviour policy. Greedy without steering:
            under the softmax of the processed logits (HF's scores; no warper applies).
        policy_logprobs: ``[B, T]`` float32, log-prob under the unmodified model at temperature 1.
        rewards: ``[B, T]`` float32, proximal reward of each chosen token, terminal rewards
            on each row's last valid step; 0 where ``mask`` is False.
        reward_components: ``{name: [B, T]}``, one per family; they sum to ``rewards``.
        returns: ``[B, T]`` float32, discounted returns with the call's ``gamma``.
        scores: with ``output_scores=True``, HF's tuple of ``T`` processed ``[B, V]`` scores
            (log-probs with ``renormalize_logits=True``).
        logits: with ``output_logits=True``, HF's tuple of ``T`` raw ``[B, V]`` float32 logits.
        hidden_states: with ``output_hidden_states=True``, HF's tuple of one tuple per step,
            one ``[B, n, H]`` per layer and the embeddings, of the forward that gave step
            ``t``'s logits (``n = P`` for the prefill, then 1): a value head reads them, no
            second forward.
        attentions: with ``output_attentions=True``, HF's tuple of one tuple per step of one
            ``[B, heads, n, keys]`` per layer (empty where the attention computes none: sdpa).
            ``keys`` is ``P + t`` with HF's default dynamic cache; with pd's static cache (an
            accelerator, ``compile``, ``cache_implementation="static"``) all ``P + T`` slots,
            zero past ``P + t``.
        prompt_mask: ``[B, P]`` the prompts' attention mask (0 on left padding), so a trainer
            can re-run prompt + completion in one forward.
        vocab_size: logits per position of the model that made the rollout.
    """

    sequences: torch.LongTensor | None = None
    tokens: torch.LongTensor | None = None
    mask: torch.BoolTensor | None = None
    logprobs: torch.FloatTensor | None = None
    policy_logprobs: torch.FloatTensor | None = None
    rewards: torch.FloatTensor | None = None
    reward_components: dict | None = None
    returns: torch.FloatTensor | None = None
    scores: tuple | None = None
    prompt_mask: torch.LongTensor | None = None
    vocab_size: int | None = None
