"""The decode loop: prefill, then one model forward and one fused step per token.

Written as gpt-fast writes its loop: the whole of generation readable in one sitting. The
loop owns its KV cache (HF's ``StaticCache`` where the model supports it, sized once for
prompt + new tokens, so no tensor grows per step; HF's default ``DynamicCache`` for eager
steps on the CPU, where it measured faster and nothing is captured). Finished rows keep
running, masked, and "are all rows done?" is asked every ``SYNC_EVERY`` steps, not every
step: that is the only host sync of the loop. (A streamer, and HF's own processors or
stopping criteria when a call asks for them, ``hf_processing.py``, run Python on the
values every step; the question is then asked every step too, so the loop stops where HF
would.) Extra steps run after the last row finished are cut at the end, so ``sequences``
is exactly what HF's ``generate`` returns.

A step is two calls: the model forward (``Decoder``) and ``sample_one``, everything after
it (rewards, the step, the rollout's columns, the reward state). With ``compile`` and
rewards each is one compiled graph, as gpt-fast compiles its ``decode_one_token``: the
forward through HF's ``get_compiled_call``, ``sample_one`` with ``fullgraph``, so a branch
on a tensor value in it cannot quietly split it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .config import PENALTY_SKIPS_LEFT_PADDING, DecodeConfig
from .decoder import Decoder, model_vocab
from .hf_processing import invalid_values_repair, logits_processors, stopping_criteria
from .returns import discounted_returns
from .rewards.text import RewardError
from .rollout import Rollout
from .step import sample_step, select_step

SYNC_EVERY = 8


class NonFiniteLogitsError(FloatingPointError):
    """The model produced logits with NaN or +inf (or no finite value) for some rows."""


@dataclass
class _Buffers:
    """The call's per-row state; each step writes its column ``t`` in place (the logits' device)."""

    seeds: torch.Tensor  # [B] int64 Philox keys
    eos: torch.Tensor  # [E] int64: the config's EOS, hidden until min_new_tokens
    end_ids: torch.Tensor  # [S] int64: what ends a row (the config's EOS, or a caller's EosTokenCriteria's)
    seqs: torch.Tensor  # [B, P+T] int64, pad after the prompt until written
    alive: torch.Tensor  # [B] bool: no EOS / stop string yet
    out_mask: torch.Tensor  # [B, T] bool: the row was alive at step t
    logprobs: torch.Tensor  # [B, T] under the distribution sampled from
    policy_logprobs: torch.Tensor  # [B, T] under the raw model
    comps: torch.Tensor  # [F, B, T] weighted reward of each family
    first_bad: torch.Tensor  # [B] int64: first step with unusable logits, -1 while none
    seen: torch.Tensor | None  # [B, V] bool: tokens so far, for the repetition penalty
    P: int  # prompt length

    @classmethod
    def start(cls, cfg: DecodeConfig, ids: torch.Tensor, mask: torch.Tensor, prompts: int, T: int,
              components: int, vocab: int) -> "_Buffers":
        """Fresh buffers for the ``[B, P]`` rows ``ids`` (``mask`` 0 on left padding), made of
        ``prompts`` prompts, ``T`` steps and ``components`` reward families."""
        (B, P), device = ids.shape, ids.device
        seen = None
        if cfg.repetition_penalty != 1.0:  # the prompt counts; left padding as the installed HF does
            seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
            skip = (mask.cumsum(1) == 0) if PENALTY_SKIPS_LEFT_PADDING else torch.zeros_like(mask, dtype=torch.bool)
            seen.scatter_(1, torch.where(skip, ids[:, -1:], ids), True)
        return cls(
            seeds=torch.tensor(cfg.row_seeds(prompts), dtype=torch.long, device=device),
            eos=torch.tensor(cfg.eos_token_ids, dtype=torch.long, device=device),
            end_ids=torch.tensor(cfg.stop_token_ids, dtype=torch.long, device=device),
            seqs=torch.cat([ids, ids.new_full((B, T), cfg.pad_token_id or 0)], 1),
            alive=torch.ones(B, dtype=torch.bool, device=device),
            out_mask=torch.zeros(B, T, dtype=torch.bool, device=device),
            logprobs=torch.zeros(B, T, device=device), policy_logprobs=torch.zeros(B, T, device=device),
            comps=torch.zeros(components, B, T, device=device),
            first_bad=torch.full((B,), -1, dtype=torch.long, device=device), seen=seen, P=P)


def _put(buf: torch.Tensor, dim: int, t, value: torch.Tensor) -> None:
    """``buf``'s slice ``t`` along ``dim`` = ``value``: ``t`` an int (eager) or a 0-d tensor
    (compiled: a tensor index keeps one graph for every step, where an int would recompile)."""
    if isinstance(t, int):
        buf.select(dim, t).copy_(value)
    else:
        buf.index_copy_(dim, t.reshape(1), value.unsqueeze(dim))


def sample_one(step_fn, cfg: DecodeConfig, run, buf: _Buffers, logits: torch.Tensor, t, suppress: bool,
               processed: torch.Tensor | None = None):
    """Everything of step ``t`` after the forward: score the candidates (when steering), pick
    each row's token, write the rollout's column ``t``, advance the reward state and the
    rows' EOS flags. Returns the ``[B]`` tokens and the ``[B, V]`` scores (or None).

    ``processed``: the ``[B, V]`` logits after HF's processors (``hf_processing``), which the
    step samples from; the rewards and ``policy_logprobs`` still read the model's ``logits``.

    Tensor ops only, no host sync and no branch on tensor values: with ``compile`` and
    rewards this is one ``fullgraph`` compiled function (``t`` a 0-d tensor), so the step's
    many small ops become a few fused kernels; eager, it is the same code.
    """
    reward = run.score(logits) if run is not None and cfg.steer != 0.0 else None  # [B, V]
    so = step_fn(
        logits if processed is None else processed, seeds=buf.seeds, step=t, do_sample=cfg.do_sample,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, min_p=cfg.min_p,
        repetition_penalty=cfg.repetition_penalty, seen=buf.seen,
        suppress=buf.eos if suppress else None, reward=reward, steer=cfg.steer,
        return_scores=cfg.output_scores)
    policy = so.policy_logprobs  # [B]
    if processed is not None:  # the model's own log-prob, before HF's processors
        policy = torch.log_softmax(logits.float(), -1).gather(1, so.tokens[:, None])[:, 0]
    scores = so.scores
    if scores is not None and cfg.renormalize_logits:  # HF's LogitNormalization, its last processor
        scores = torch.log_softmax(scores, dim=-1)
    buf.first_bad.copy_(torch.where(buf.alive & ~so.valid & (buf.first_bad < 0), t, buf.first_bad))
    # [B]; HF pads a finished row only when EOS can end one; else it keeps its tokens
    tok = torch.where(buf.alive, so.tokens, cfg.pad_token_id) if cfg.pads else so.tokens
    _put(buf.seqs, 1, buf.P + t, tok)
    _put(buf.out_mask, 1, t, buf.alive)
    _put(buf.logprobs, 1, t, torch.where(buf.alive, so.logprobs, 0.0))
    _put(buf.policy_logprobs, 1, t, torch.where(buf.alive, policy, 0.0))
    if run is not None:
        _put(buf.comps, 2, t, run.record(tok, buf.alive, logits))  # [F, B]
    if buf.seen is not None:
        buf.seen.scatter_(1, tok[:, None], True)
    buf.alive &= ~(tok[:, None] == buf.end_ids).any(1)  # [B, S]; torch.isin sorts (and syncs) for many ids
    return tok, scores


# compile_config (as a tuple of its settings) -> sample_one compiled with them
_COMPILED_STEPS: dict[tuple, object] = {}


def _compiled_sample_one(model, compile_config, required: bool):
    """``sample_one`` under ``torch.compile`` with the model's compile settings, ``fullgraph``
    forced, so what would break the graph (a branch on a tensor value, Python that needs one)
    fails instead of splitting the step. A failure to compile is raised on the step that
    needed the graph as a ``ValueError`` naming the rewards when the caller asked
    (``compile=True``); HF's automatic choice warns and runs the step eager. So does
    dynamo's recompile limit, which ``fullgraph`` also makes an error."""
    cc = compile_config or model._default_compile_config()
    kw = dict(cc.to_dict(), fullgraph=True)
    key = tuple(sorted((k, repr(v)) for k, v in kw.items()))
    if key not in _COMPILED_STEPS:
        _COMPILED_STEPS[key] = torch.compile(sample_one, **kw)
    compiled, eager = _COMPILED_STEPS[key], []

    def sample(step_fn, cfg, run, *args):
        if not eager:
            try:
                return compiled(step_fn, cfg, run, *args)
            except torch._dynamo.exc.FailOnRecompileLimitHit:  # raised before the graph runs
                warnings.warn("compile: torch.compile's recompile limit (torch._dynamo.config.recompile_limit) "
                              "is reached for the decode step, which compiles once per distinct setting and "
                              "shape; the step of this call runs eager", stacklevel=3)
                eager.append(True)
            except torch._dynamo.exc.TorchDynamoException as e:  # a graph break, or a compile that failed
                names = ", ".join(run.names) if run is not None else "none"
                msg = (f"compile: the decode step could not be compiled whole (rewards: {names}); a reward "
                       "family that branches on tensor values, reads them on the host or runs a model must "
                       f"set traceable = False. Cause: {str(e).splitlines()[0]}")
                if required:
                    raise ValueError(msg + "; or pass compile=False") from e
                warnings.warn(msg + "; the step of this call runs eager", stacklevel=3)
                eager.append(True)
        return sample_one(step_fn, cfg, run, *args)
    return sample


def _hf_inputs(model, input_ids, attention_mask, kwargs: dict):
    """HF's ways to give the prompt: ``inputs=``, ``input_ids=`` / ``attention_mask=`` as
    keywords, ``generate(ids, generation_config)`` (with or without ``attention_mask=``), and
    none at all (one row of ``bos_token_id``). Moves ``generation_config`` into ``kwargs``."""
    from transformers import GenerationConfig

    if isinstance(attention_mask, GenerationConfig):
        if kwargs.get("generation_config") is not None:
            raise TypeError("pd.generate: generation_config given twice (positionally and by keyword)")
        kwargs["generation_config"], attention_mask = attention_mask, None
    given = {"input_ids": input_ids, "attention_mask": attention_mask}  # slot -> value
    how = {slot: "by position" for slot, v in given.items() if v is not None}  # slot -> how it came
    for name, slot in (("inputs", "input_ids"), ("input_ids", "input_ids"), ("attention_mask", "attention_mask")):
        value = kwargs.pop(name, None)
        if value is None:
            continue
        if given[slot] is not None:
            alias = " (inputs= is HF's name for input_ids)" if "as inputs=" in (how[slot], f"as {name}=") else ""
            raise TypeError(f"pd.generate: {slot} given twice, {how[slot]} and as {name}={alias}; pass one")
        given[slot], how[slot] = value, f"as {name}="
    input_ids, attention_mask = given["input_ids"], given["attention_mask"]
    if input_ids is None:
        gc = kwargs.get("generation_config")
        choices = (kwargs.get("bos_token_id"), getattr(gc, "bos_token_id", None), model.generation_config.bos_token_id)
        bos = next((b for b in choices if b is not None), None)
        if bos is None:
            raise ValueError("pd.generate: no input_ids and no bos_token_id to start from")
        input_ids = torch.full((1, 1), int(bos), dtype=torch.long, device=model.device)
    return input_ids, attention_mask


@torch.inference_mode()
def generate(model, input_ids=None, attention_mask=None, /, *, rewards=None, steer: float = 0.0,
             gamma: float = 1.0, seed=None, backend: str = "auto", compile: bool | None = None,
             linear: str = "torch", **generate_kwargs):
    """A drop-in for ``model.generate`` that can steer with, and record, proximal rewards.

    Args:
        model: a HF causal LM, by position (``generate(model, ...)``).
        input_ids: ``[B, P]`` int64 prompts, left-padded; by position or keyword (HF's
            ``inputs=`` also works). None starts one row from ``bos_token_id``, as HF does.
        attention_mask: ``[B, P]``, 0 on padding, by position or keyword; inferred as HF
            does when None. A ``GenerationConfig`` in the second place is HF's second
            positional argument and is taken as ``generation_config``, so
            ``generate(model, ids, gc, attention_mask=m)`` reads as HF's would.
        rewards: a ``pd.Rewards`` set, or None.
        steer: beta; sampling is from ``softmax(z / T + beta * R)`` inside the LM's
            top-k / top-p / min-p candidate set. 0 is plain HF sampling.
        gamma: discount for ``Rollout.returns``, in [0, 1].
        seed: int (prompt ``p`` gets ``seed + p``), one int per prompt, or None (drawn from
            torch's global RNG). A row's tokens depend only on its seed, prompt and settings.
        backend: the decode step: ``"auto"`` (C++ on CPU, Triton on CUDA, when available),
            ``"torch"`` (the reference), ``"cpp"`` or ``"triton"``.
        compile: compile the decode step: the forward (``model.get_compiled_call`` with
            ``compile_config``; the prefill stays eager) and, when rewards are on, the rest
            of the step (``sample_one``: rewards, the torch step fused by the compiler, the
            reward state), unless ``backend`` names a kernel ("cpp", "triton": it runs eager)
            or a reward runs a reference model (``Reward.traceable``). None decides as HF does: only with
            ``cache_implementation="static"`` on an accelerator (or ``compile_config.
            _compile_all_devices``) unless ``disable_compile``, and eager where the model has
            no static cache. True compiles on any device; it needs the static cache.
            One compile per ``(batch, prompt length, max_new_tokens)`` and settings, then cached.
        linear: the model's linear layers: ``"torch"`` (``F.linear``, HF's exact logits) or
            ``"onednn"`` (CPU: weights packed for oneDNN at the start of the call, a
            second copy of them for its length; faster matmuls at a few rows, ``make
            bench-linear`` measures by how much; logits differ by fp32 rounding; see
            ``linear.py``). Reference models of rewards follow it; ``compile`` they do not.
        **generate_kwargs: HF's generate arguments (see ``config.SUPPORTED_ARGS``).

    Returns:
        ``[B * num_return_sequences, P + T]`` int64, as HF; or a ``Rollout`` when
        ``rewards`` is given or ``return_dict_in_generate=True``.
    """
    input_ids, attention_mask = _hf_inputs(model, input_ids, attention_mask, generate_kwargs)
    cfg = DecodeConfig.resolve(model, input_ids, attention_mask, steer=steer, gamma=gamma,
                               seed=seed, rewards=rewards, kwargs=generate_kwargs,
                               backend=backend, compile=compile, linear=linear)
    device = input_ids.device
    vocab = model_vocab(model)
    ids = input_ids.long()
    if attention_mask is None:  # HF: pad positions are masked only when pad differs from EOS
        infer = cfg.pad_token_id is not None and cfg.pad_token_id not in cfg.eos_token_ids
        attention_mask = (ids != cfg.pad_token_id).long() if infer else torch.ones_like(ids)
    ids = ids.repeat_interleave(cfg.num_return_sequences, 0)  # [B, P]
    mask = attention_mask.long().repeat_interleave(cfg.num_return_sequences, 0)  # [B, P]
    B, P = ids.shape
    T = cfg.max_new_tokens
    processors = logits_processors(model, cfg, ids, mask, generate_kwargs)  # None: the fused step alone
    repair = invalid_values_repair(cfg)  # remove_invalid_values: HF's repair of what the rewards read
    stop = stopping_criteria(model, cfg, generate_kwargs)  # None: EOS and the length alone
    run = rewards.start(vocab, B, device, generate_kwargs.get("tokenizer"), ids, mask, T, cfg.linear,
                        prompts=input_ids.shape[0], eos_token_ids=cfg.stop_token_ids) if rewards else None
    streamer = generate_kwargs.get("streamer")

    buf = _Buffers.start(cfg, ids, mask, input_ids.shape[0], T, len(run.names) if run else 0, vocab)
    scores, raw_logits = [], []
    if streamer is not None:
        streamer.put(ids.cpu())

    step_fn, sample, t_dev = select_step(cfg.backend, device), sample_one, None
    compiled = model.get_compiled_call(cfg.compile_config) if cfg.compile else None
    returns_rollout = run is not None or cfg.return_dict_in_generate  # else the flags below do nothing, as in HF
    outputs = tuple(name for name, on in (("hidden_states", cfg.output_hidden_states),
                                          ("attentions", cfg.output_attentions)) if on and returns_rollout)
    decoder = Decoder(model, T, cfg.static_cache, compiled, cfg.linear, cfg.compile_required, outputs)
    extra = {name: [] for name in outputs}  # per step, those of the forward that gave its logits
    if T > 0:
        logits = decoder.prefill(ids, mask)  # drops `compiled` where the cache cannot be static
    if decoder.compiled is not None and run is not None and run.traceable and cfg.backend in ("auto", "torch"):
        # with rewards, the step after the forward is compiled too: the torch step fused with
        # them (without rewards there is little to fuse, and the backend's kernel is faster)
        step_fn, sample = sample_step, _compiled_sample_one(model, cfg.compile_config, cfg.compile_required)
        t_dev = torch.zeros((), dtype=torch.long, device=device)
    keep_scores = cfg.output_scores and cfg.return_dict_in_generate  # HF's criteria see these, else None
    sync_each_step = streamer is not None or stop is not None or processors is not None  # Python that syncs anyway
    for t in range(T):
        model_logits, processed = logits, None  # what the rewards and policy_logprobs read; what the step samples
        if processors is not None:  # HF casts a copy to float32 for its processors, which may write to it
            processed = processors(buf.seqs[:, : P + t], logits.to(torch.float32, copy=True))  # [B, V]
            if repair is not None:
                model_logits = repair(None, logits.to(torch.float32, copy=True))  # [B, V]
        tok, step_scores = sample(step_fn, cfg, run, buf, model_logits, t if t_dev is None else t_dev.fill_(t),
                                  t < cfg.min_new_tokens, processed)
        if cfg.output_scores:
            scores.append(step_scores)
        if cfg.output_logits and returns_rollout:  # a copy: a compiled forward may write its next logits in place
            raw_logits.append(logits.to(torch.float32, copy=True))
        for name in outputs:
            extra[name].append(decoder.extra[name])
        if streamer is not None:
            streamer.put(tok.cpu())
        if stop is not None:  # as HF: a row stops when any criterion says so
            buf.alive &= ~stop(buf.seqs[:, : P + t + 1], tuple(scores) if keep_scores else None)
        if t + 1 == T:
            break
        if sync_each_step or (t + 1) % SYNC_EVERY == 0:  # stop as soon as HF would, where it costs nothing
            if bool((buf.first_bad >= 0).any()) or not bool(buf.alive.any()):
                break
        logits = decoder.step(tok)
    if streamer is not None:
        streamer.end()
    first_bad, out_mask, seqs, comps = buf.first_bad, buf.out_mask, buf.seqs, buf.comps
    if bool((first_bad >= 0).any()):
        rows = torch.nonzero(first_bad >= 0)[:, 0].tolist()
        where = "the model's logits" + (", after the logits processors," if processors is not None else "")
        raise NonFiniteLogitsError(f"{where} had NaN/+inf or no finite value in rows {rows} "
                                   f"(first at step {int(first_bad[rows[0]])}); nothing was sampled from them "
                                   "(remove_invalid_values=True replaces NaN and inf as HF does)")

    n = int(out_mask.any(0).sum())  # steps until the last row finished, as HF stops
    sequences = seqs[:, : P + n]
    if not (run or cfg.return_dict_in_generate):
        return sequences
    mask_n = out_mask[:, :n]
    comps = comps[:, :, :n]
    names = run.names if run else []
    if run and n > 0:
        last = (mask_n.sum(1) - 1).clamp(min=0)  # [B]
        comps.scatter_add_(2, last[None, :, None].expand(len(names), B, 1),
                           run.terminal(B, device)[:, :, None])
    failure = None
    if run and n > 0:
        try:
            run.finish(comps, sequences[:, P:], mask_n)
        except RewardError as e:  # keep the rollout: only the failing family's rewards are NaN
            failure = e
    total = comps.sum(0) if run else torch.zeros(B, n, device=device)
    rollout = Rollout(
        sequences=sequences, tokens=sequences[:, P:], mask=mask_n, logprobs=buf.logprobs[:, :n],
        policy_logprobs=buf.policy_logprobs[:, :n], rewards=total,
        reward_components={k: comps[i] for i, k in enumerate(names)},
        returns=discounted_returns(total, mask_n, cfg.gamma),
        scores=tuple(scores[:n]) if cfg.output_scores else None,
        logits=tuple(raw_logits[:n]) if cfg.output_logits else None,
        **{name: tuple(steps[:n]) for name, steps in extra.items()}, prompt_mask=mask, vocab_size=vocab)
    if failure is not None:
        failure.rollout = rollout
        raise failure
    return rollout
