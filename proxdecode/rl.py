"""On-policy updates from proximal rewards: REINFORCE and PPO-clip over a ``Rollout``.

A ``Rollout`` already holds what a policy-gradient step needs per generated token: the
reward of each step, discounted returns, the log-prob under the unmodified policy
(``policy_logprobs``, PPO's "old" log-prob) and the log-prob under the distribution the
token was actually drawn from (``logprobs``: temperature, top-k/top-p and steering
applied). The losses here are pure functions of ``[B, T]`` tensors; ``update`` does the one
forward over prompt + completion that recomputes log-probs under the current weights.

Steered or filtered rollouts are off-policy: the behaviour distribution ``mu`` is not the
policy ``pi``. Each token's loss is weighted by the truncated importance ratio
``min(cap, pi_old(a) / mu(a))`` (detached; Espeholt et al., 2018, IMPALA's truncation),
which is 1 where the two agree (``steer = 0``, temperature 1, no filter). A filter such
as HF's default ``top_k=50`` makes ``mu`` the renormalised top of ``pi``, so a token's
weight is the mass its step's filter kept: below 1, and lower at the steps where the
filter cut more.

Losses (``B`` rows, ``T`` steps; each a masked mean over valid tokens):
- REINFORCE with a baseline: ``-w * (G_t - b_t) * log pi(a_t)`` (Williams, 1992), ``b_t``
  the batch mean of the returns at step ``t``;
- PPO-clip: ``-w * min(r A, clip(r, 1 - eps, 1 + eps) A)``, ``r = pi / pi_old``
  (Schulman et al., 2017);
- KL to a reference: the k3 estimator ``exp(d) - d - 1``, ``d = log pi_ref - log pi``
  (Schulman, 2020; what TRL's GRPO uses), times ``kl_coef``;
- entropy bonus: ``-entropy_coef * H(pi(. | s_t))``.
"""

from __future__ import annotations

import torch

from .rewards.base import finite_number


def _plain(t):
    """A normal tensor from one made under ``torch.inference_mode`` (as ``pd.generate``'s are),
    which autograd may not save for backward."""
    return t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens; whatever lies off the mask (NaN included) counts for nothing."""
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1).to(x.dtype)


def _on_mask(mask: torch.Tensor, *tensors):
    """Each tensor with 0 off the mask, before any arithmetic: NaN or -inf there (which the
    checks allow) would otherwise reach the loss, or its gradient, as NaN."""
    return [None if t is None else torch.where(mask, t, 0.0) for t in tensors]


def _check_bt(mask: torch.Tensor, **tensors) -> None:
    if mask.ndim != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    if mask.shape[0] == 0 or not bool(mask.any()):
        raise ValueError("the rollout is empty: no valid token to learn from")
    for name, t in tensors.items():
        if t is not None and t.shape != mask.shape:
            raise ValueError(f"{name} must match mask {tuple(mask.shape)}, got {tuple(t.shape)}")
        if t is not None and not bool(torch.isfinite(torch.where(mask, t, 0.0)).all()):
            raise ValueError(f"{name} has NaN or inf on valid tokens")


def baseline_advantages(returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``G_t - b_t`` with ``b_t`` the mean return at step ``t`` over the rows still running
    (whatever lies off the mask, NaN included, counts for nothing)."""
    returns = torch.where(mask, returns, 0.0)  # [B, T]
    b = returns.sum(0) / mask.sum(0).clamp(min=1).to(returns.dtype)  # [T]
    return torch.where(mask, returns - b, 0.0)


def importance_weights(rollout, cap: float = 1.0) -> torch.Tensor:
    """``min(cap, pi_old / mu)`` per token, ``[B, T]``, detached; 0 where mask is False."""
    w = torch.exp(rollout.policy_logprobs - rollout.logprobs).clamp(max=cap)
    return torch.where(rollout.mask, w, 0.0).detach()


def reinforce_loss(logp, advantages, mask, weights=None) -> torch.Tensor:
    """REINFORCE: ``-mean(w * A * logp)`` over valid tokens. All ``[B, T]``; returns a scalar."""
    _check_bt(mask, logp=logp, advantages=advantages, weights=weights)
    logp, advantages, weights = _on_mask(mask, logp, advantages, weights)
    w = 1.0 if weights is None else weights
    return _masked_mean(-w * advantages.detach() * logp, mask)


def ppo_loss(logp, old_logp, advantages, mask, clip: float = 0.2, weights=None) -> torch.Tensor:
    """PPO-clip: ``-mean(w * min(r A, clip(r) A))``, ``r = exp(logp - old_logp)``; a scalar."""
    _check_bt(mask, logp=logp, old_logp=old_logp, advantages=advantages, weights=weights)
    if not (0.0 < clip < 1.0):
        raise ValueError(f"clip must be in (0, 1), got {clip!r}")
    logp, old_logp, advantages, weights = _on_mask(mask, logp, old_logp, advantages, weights)
    ratio = torch.exp(logp - old_logp.detach())
    a = advantages.detach()
    surrogate = torch.minimum(ratio * a, ratio.clamp(1.0 - clip, 1.0 + clip) * a)
    w = 1.0 if weights is None else weights
    return _masked_mean(-w * surrogate, mask)


def kl_k3(logp, ref_logp, mask) -> torch.Tensor:
    """Mean k3 estimate of KL(pi || pi_ref) over valid tokens: ``exp(d) - d - 1``, ``d = ref - logp``."""
    _check_bt(mask, logp=logp, ref_logp=ref_logp)
    logp, ref_logp = _on_mask(mask, logp, ref_logp)
    d = ref_logp.detach() - logp
    return _masked_mean(torch.exp(d) - d - 1.0, mask)


def completion_logprobs(model, rollout, entropy: str | None = None):
    """Log-probs ``[B, T]`` of the rollout's tokens under ``model`` (one forward over prompt +
    completion, gradients on), and the per-step entropy ``[B, T]``: None with ``entropy=None``,
    differentiable with ``"loss"``, without gradients (a metric) with ``"metric"``."""
    if entropy not in (None, "loss", "metric"):
        raise ValueError(f"entropy must be None, 'loss' or 'metric', got {entropy!r}")
    seqs, T = _plain(rollout.sequences), rollout.tokens.shape[1]
    P = seqs.shape[1] - T
    vocab = model.get_output_embeddings().weight.shape[0]
    if rollout.vocab_size is not None and rollout.vocab_size != vocab:
        raise ValueError(f"the rollout was made by a model with {rollout.vocab_size} logits; this one has "
                         f"{vocab}: a rollout from another model or tokenizer cannot be learned from")
    if int(seqs.max()) >= vocab:
        raise ValueError(f"the rollout holds token id {int(seqs.max())} >= the model's vocabulary {vocab}")
    attention = _plain(torch.cat([rollout.prompt_mask.long(), rollout.mask.long()], 1))  # [B, P+T]
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=seqs, attention_mask=attention, position_ids=positions).logits
    logits = logits[:, P - 1:-1].float()  # [B, T, V] predicting each completion token
    lsm = torch.log_softmax(logits, -1)
    logp = lsm.gather(2, _plain(rollout.tokens)[:, :, None])[:, :, 0]  # [B, T]
    if entropy is None:
        return logp, None
    with torch.set_grad_enabled(entropy == "loss" and torch.is_grad_enabled()):
        return logp, torch.special.entr(lsm.exp()).sum(-1)  # [B, T]; -p log p, 0 where p = 0


def _modes(model) -> list:
    """Every module's train/eval flag (a caller may hold some submodules in eval)."""
    return [(m, m.training) for m in model.modules()]


def _restore(modes: list) -> None:
    for m, training in modes:
        m.training = training


def _check_update(algo, clip, kl_coef, ref_model, entropy_coef, is_cap, max_grad_norm) -> None:
    """``update``'s settings, checked before any forward (``train`` checks them before its
    first rollout); numbers as ``rewards.base.finite_number`` takes them."""
    if algo not in ("ppo", "reinforce"):
        raise ValueError(f"algo must be 'ppo' or 'reinforce', got {algo!r}")
    c = finite_number(clip)
    if c is None or not 0.0 < c < 1.0:
        raise ValueError(f"clip must be in (0, 1), got {clip!r}")
    for name, v, lo in (("kl_coef", kl_coef, 0.0), ("entropy_coef", entropy_coef, 0.0), ("is_cap", is_cap, 1e-9)):
        x = finite_number(v)
        if x is None or x < lo:
            raise ValueError(f"{name} must be a finite number >= {lo:g}, got {v!r}")
    g = None if max_grad_norm is None else finite_number(max_grad_norm)
    if max_grad_norm is not None and (g is None or g < 0):
        raise ValueError(f"max_grad_norm must be a finite number >= 0 (0 or None: no clipping), got {max_grad_norm!r}")
    if finite_number(kl_coef) > 0 and ref_model is None:
        raise ValueError("kl_coef > 0 needs ref_model=")


def update(model, optimizer, rollout, *, algo: str = "ppo", clip: float = 0.2, kl_coef: float = 0.0,
           ref_model=None, entropy_coef: float = 0.0, is_cap: float = 1.0, advantages=None,
           max_grad_norm: float | None = 1.0) -> dict:
    """One gradient step on ``rollout``; returns metrics. The weights are left untouched when
    the loss or a gradient is not finite (``FloatingPointError``). ``clip`` is PPO's (checked
    for REINFORCE too, so a typo never passes); ``max_grad_norm`` clips the gradients' total
    norm (0 or None: no clipping, as HF's ``Trainer`` reads 0). The model runs in train mode
    for the step, and every module is left in the mode it came in."""
    _check_update(algo, clip, kl_coef, ref_model, entropy_coef, is_cap, max_grad_norm)
    mask = _plain(rollout.mask)
    _check_bt(mask, rewards=rollout.rewards, returns=rollout.returns)
    adv = _plain(baseline_advantages(rollout.returns, mask) if advantages is None else advantages)
    weights = _plain(importance_weights(rollout, is_cap))

    modes = _modes(model)
    model.train()
    try:
        return _step(model, optimizer, rollout, mask, adv, weights, algo, clip, kl_coef, ref_model, entropy_coef,
                     max_grad_norm)
    finally:
        _restore(modes)  # also when the step is refused


def _step(model, optimizer, rollout, mask, adv, weights, algo, clip, kl_coef, ref_model, entropy_coef,
          max_grad_norm) -> dict:
    """``update``'s gradient step, the model in train mode."""
    logp, entropy = completion_logprobs(model, rollout, entropy="loss" if entropy_coef > 0 else "metric")
    if algo == "ppo":
        loss = ppo_loss(logp, _plain(rollout.policy_logprobs), adv, mask, clip, weights)
    else:
        loss = reinforce_loss(logp, adv, mask, weights)
    kl = torch.zeros(())
    if ref_model is not None:
        with torch.no_grad():
            ref_logp, _ = completion_logprobs(ref_model, rollout)
        kl = kl_k3(logp, ref_logp, mask)
        loss = loss + kl_coef * kl
    ent = _masked_mean(entropy, mask)
    if entropy_coef > 0:
        loss = loss - entropy_coef * ent
    if not torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"the loss is {loss.item()}; no step taken, the weights are unchanged")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    limit = float(max_grad_norm) if max_grad_norm else float("inf")  # 0 / None: measure only
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError("a gradient is NaN or inf; no step taken, the weights are unchanged")
    optimizer.step()
    return {"loss": float(loss.detach()), "kl": float(kl.detach()), "entropy": float(ent.detach()),
            "grad_norm": float(norm),
            "reward": float(torch.where(rollout.mask, rollout.rewards, 0.0).sum(1).mean()),
            "ratio_weight": float(_masked_mean(weights, mask))}


def to_sparse(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same signal given only at the end: each row's reward sum on its last valid step."""
    total = torch.where(mask, rewards, 0.0).sum(1)  # [B]; NaN off the mask counts for nothing
    last = (mask.sum(1) - 1).clamp(min=0)  # [B]
    out = torch.zeros_like(rewards)
    return torch.where(mask, out.scatter(1, last[:, None], total[:, None]), 0.0)


def train(model, tokenizer, prompts, rewards, steps: int, *, group_size: int = 4, max_new_tokens: int = 32,
          lr: float = 1e-5, algo: str = "ppo", clip: float = 0.2, gamma: float = 1.0, steer: float = 0.0,
          sparse: bool = False, kl_coef: float = 0.0, ref_model=None, entropy_coef: float = 0.0,
          seed: int = 0, log_path=None, progress: bool = True, optimizer=None, **generate_kwargs) -> list[dict]:
    """A minimal on-policy loop: ``steps`` times, roll out every prompt ``group_size`` times with
    ``pd.generate`` and take one ``update``. Returns the per-step metrics (also appended to
    ``log_path`` as JSONL): reward, KL, entropy, loss, tokens/s and the time split.

    ``sparse=True`` moves each row's summed reward to its last token (the same signal, given
    only at the end), for comparing dense proximal rewards against a terminal one.
    ``progress`` shows a transient bar on stderr in a terminal or a notebook (nothing when
    stderr is a file or a pipe).
    On a non-finite loss or gradient it stops with the step number; the weights are those
    from before that step. Rollouts run in eval mode, updates in train mode; every module's
    mode is restored at the end.
    """
    import json
    import time

    from .engine import generate
    from .returns import discounted_returns

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if finite_number(lr) is None or not 0.0 < finite_number(lr) <= 1.0:
        raise ValueError(f"lr must be a number in (0, 1], got {lr!r}")
    _check_update(algo, clip, kl_coef, ref_model, entropy_coef, 1.0, 1.0)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    if len(prompts) * group_size == 1:
        raise ValueError("one prompt with group_size=1 gives one row a step: its baseline is its own return, "
                         "every advantage is 0 and nothing is learned; use group_size >= 2")
    optimizer = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    history = []
    modes = _modes(model)  # rollouts run in eval mode, updates in train mode; restored at the end
    log = open(log_path, "a") if log_path else None
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress
        console = Console(stderr=True)  # off a terminal a transient bar would leave an empty line
        bar = Progress(transient=True, console=console, disable=not (console.is_terminal or console.is_jupyter))
        bar.start()
        task = bar.add_task("training", total=steps)
    try:
        for step in range(steps):
            t0 = time.perf_counter()
            model.eval()
            out = generate(model, **enc, rewards=rewards, steer=steer, gamma=gamma, seed=seed + 1000 * step,
                           max_new_tokens=max_new_tokens, num_return_sequences=group_size,
                           do_sample=True, **generate_kwargs)
            t1 = time.perf_counter()
            dense_reward = float(torch.where(out.mask, out.rewards, 0.0).sum(1).mean())
            if sparse:
                out.rewards = to_sparse(out.rewards, out.mask)
                out.returns = discounted_returns(out.rewards, out.mask, gamma)
            try:
                metrics = update(model, optimizer, out, algo=algo, clip=clip, kl_coef=kl_coef,
                                 ref_model=ref_model, entropy_coef=entropy_coef)
            except FloatingPointError as e:
                raise FloatingPointError(f"training stopped at step {step}: {e}") from e
            t2 = time.perf_counter()
            n_tok = int(out.mask.sum())
            metrics.update(step=step, reward=dense_reward, rollout_s=t1 - t0, learn_s=t2 - t1,
                           tokens_per_s=n_tok / (t1 - t0), new_tokens=n_tok)
            history.append(metrics)
            if log:
                log.write(json.dumps(metrics) + "\n")
                log.flush()
            if bar:
                bar.update(task, advance=1, description=f"reward {dense_reward:+.3f}")
    finally:
        _restore(modes)
        if bar:
            bar.stop()
        if log:
            log.close()
    return history
