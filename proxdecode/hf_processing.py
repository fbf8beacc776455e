"""HF's own logits processors and stopping criteria, for what the fused step does not fuse.

Why: HF's ``generate`` is extended through a ``logits_processor`` list, ``stopping_criteria``
and ``prefix_allowed_tokens_fn``, and a handful of generation-config fields turn into
processors inside it (``no_repeat_ngram_size``, ``bad_words_ids``, ``sequence_bias``,
``suppress_tokens``, ``guidance_scale`` with its own forward of the unconditional prompt,
...). A drop-in has to take them all. Writing each again would be writing HF by hand, and a
caller's processor is arbitrary Python anyway, so they run as HF builds them:

- ``logits_processors`` asks the model for HF's list with sampling switched off, which is
  HF's processors *without* its warpers, in HF's order: the config's processors (the
  repetition penalty and ``min_new_tokens`` among them), then the caller's. The fused step
  then does what HF runs after them (temperature, top-k, top-p, min-p), plus the steering
  and the draw; ``DecodeConfig.resolve`` turns the step's own penalty and EOS suppression
  off, so nothing is applied twice (mode ``"processors"``).
- A sampling or steered call with a warper the step does not fuse (``typical_p``,
  ``epsilon_cutoff``, ``eta_cutoff``, ``top_h``) or a watermark (HF's comes after the
  warpers) takes HF's whole list, warpers included; the step then only steers inside the
  tokens left finite and draws, its temperature and filters off too (mode ``"warpers"``).
- ``stopping_criteria`` holds ``stop_strings``, ``max_time`` and the caller's criteria, and
  the loop ANDs them into its rows' alive flags after each step, as HF does. EOS and the
  length the loop checks itself.
- The ``check_*`` functions, called by ``DecodeConfig.resolve`` before any model work,
  refuse what HF would trip over only inside the loop (an id past the vocabulary, a
  negative prompt of the wrong batch) or skip without a word (``typical_p=1.5``, a negative
  ``no_repeat_ngram_size``), naming the argument.

This is the slow path: eager Python between the forward and the step (a compiled step still
runs compiled after it), with whatever host syncs the processors make. Calls that use none
of it never build it, and their steps are the fused ones alone.
"""

from __future__ import annotations

import copy
import math
import numbers
import operator
from typing import Literal

import torch
from transformers.generation.logits_process import InfNanRemoveLogitsProcessor
from transformers.generation.stopping_criteria import (EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria,
                                                       StoppingCriteriaList, StopStringCriteria)

Mode = Literal["processors", "warpers"]

# GenerationConfig fields that HF turns into logits processors, with their inert values
PROCESSOR_FIELDS = {
    "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "sequence_bias": (None,),
    "suppress_tokens": (None, []), "begin_suppress_tokens": (None, []), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "min_length": (None, 0), "exponential_decay_length_penalty": (None,),
    "remove_invalid_values": (None, False), "watermarking_config": (None,), "guidance_scale": (None, 1.0),
}
# GenerationConfig fields of HF's warpers that the fused step does not fuse, and their inert values
WARPER_FIELDS = {"typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0), "top_h": (None,)}
# generate's own parameters (not GenerationConfig fields) that this module serves
CALL_ARGS = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "negative_prompt_ids",
             "negative_prompt_attention_mask")


def processing_mode(gc, kwargs: dict, sampling: bool, is_inert) -> Mode | None:
    """Which of HF's lists has to run: ``"warpers"`` (all of it) when a sampling call (or a
    steered one: the warpers choose the candidates) sets a warper the step does not fuse or
    a watermark; ``"processors"`` (without the warpers) when a processor field of ``gc`` is
    set or the caller gave processors or a ``prefix_allowed_tokens_fn``; None otherwise. A
    greedy call's warpers do nothing, as in HF. ``is_inert(value, inert_values)``: config's
    test of a field's value against its inert ones."""
    def active(fields):
        return any(not is_inert(getattr(gc, f, None), inert) for f, inert in fields.items())

    if sampling and (active(WARPER_FIELDS) or gc.watermarking_config is not None):
        return "warpers"
    callers = bool(kwargs.get("logits_processor")) or kwargs.get("prefix_allowed_tokens_fn") is not None
    return "processors" if active(PROCESSOR_FIELDS) or callers else None


def prepare_lengths(gc, prompt_len: int, max_new_tokens: int) -> None:
    """Set ``gc``'s lengths in place as HF's ``_prepare_generated_length`` does before it builds
    its processors: ``max_length`` from the config's ``max_new_tokens`` (``forced_eos`` reads
    it, also where a caller's ``MaxLengthCriteria`` stops the loop elsewhere), and
    ``min_new_tokens`` replacing ``min_length``."""
    gc.max_length = prompt_len + max_new_tokens
    if gc.min_new_tokens is not None:
        gc.min_length = prompt_len + gc.min_new_tokens


def logits_processors(model, cfg, ids: torch.Tensor, mask: torch.Tensor, kwargs: dict):
    """HF's ``LogitsProcessorList`` for this call: without its warpers (mode ``"processors"``)
    or all of it (mode ``"warpers"``); None when not needed.

    Args:
        model: the HF model (its ``_get_logits_processor`` builds the list).
        cfg: the call's ``DecodeConfig``; ``cfg.hf_config`` is the merged GenerationConfig,
            its lengths set by ``prepare_lengths``.
        ids: ``[B, P]`` the rows as decoded (``num_return_sequences`` already expanded).
        mask: ``[B, P]`` their attention mask (the repetition penalty skips left padding
            where the installed HF does).
        kwargs: the call's generate arguments (the caller's processors, prefix function,
            negative prompt).

    Called once per call, before the prefill. Each step then calls the list on the ``[B, P+t]``
    sequences so far and a float32 copy of the ``[B, V]`` logits, as HF does.
    """
    if cfg.hf_processing is None:
        return None
    gc = copy.deepcopy(cfg.hf_config)
    gc.do_sample = cfg.hf_processing == "warpers"  # False: HF leaves its warpers to the fused step
    gc.renormalize_logits = False  # the engine normalises the scores it returns, after the step
    model._prepare_special_tokens(gc, kwargs_has_attention_mask=True, device=ids.device)  # the EOS tensor
    return model._get_logits_processor(
        generation_config=gc, input_ids_seq_length=ids.shape[1], encoder_input_ids=ids,
        prefix_allowed_tokens_fn=kwargs.get("prefix_allowed_tokens_fn"),
        logits_processor=list(kwargs.get("logits_processor") or ()), device=ids.device,
        model_kwargs={"attention_mask": mask}, negative_prompt_ids=kwargs.get("negative_prompt_ids"),
        negative_prompt_attention_mask=kwargs.get("negative_prompt_attention_mask"))


def invalid_values_repair(cfg):
    """HF's ``InfNanRemoveLogitsProcessor`` when ``remove_invalid_values`` asks for it (the
    rewards and ``policy_logprobs`` then read the repaired logits), else None."""
    if cfg.hf_processing is None or not cfg.hf_config.remove_invalid_values:
        return None
    return InfNanRemoveLogitsProcessor()


def stopping_criteria(model, cfg, kwargs: dict):
    """The ``StoppingCriteriaList`` of ``stop_strings``, ``max_time`` and the caller's criteria
    (merged as HF merges them: a caller's criterion replaces HF's of the same type); None when
    empty.

    Built before the prefill, so ``max_time`` counts from there, as in HF. The loop calls it
    after each step, as HF does, with the ``[B, P+t+1]`` sequences so far and the tuple of
    scores when ``return_dict_in_generate`` and ``output_scores`` keep them, else None; a
    criterion's Python (and its host syncs) then runs every step.
    """
    criteria = StoppingCriteriaList()
    if cfg.max_time is not None:
        criteria.append(MaxTimeCriteria(max_time=cfg.max_time))
    if cfg.stop_strings:
        criteria.append(StopStringCriteria(kwargs["tokenizer"], list(cfg.stop_strings)))
    criteria = model._merge_criteria_processor_list(criteria, list(kwargs.get("stopping_criteria") or ()))
    return criteria or None


# --- checks, before any model work --------------------------------------------------------

def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _within(value, interval: str) -> bool:
    """``value`` is a number in ``interval``, written as in the messages: "(0, 1]", "[0, 1)"."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    if not _real(value):
        return False
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def as_int_ids(value) -> int | list | None:
    """A token id, or a (nested) list of them, as Python ints (numpy and torch integers too,
    as HF takes them); None if any leaf is not an integer."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):  # a tensor or an array
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        items = [as_int_ids(v) for v in value]
        return None if any(x is None for x in items) else items
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _is_id(x, vocab: int) -> bool:
    return isinstance(x, int) and 0 <= x < vocab


def _is_ids(x, vocab: int) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(_is_id(i, vocab) for i in x)


def check_call_args(kwargs: dict) -> None:
    """Refuse a ``logits_processor`` / ``stopping_criteria`` that is not a list of callables and
    a ``prefix_allowed_tokens_fn`` that is not callable."""
    for name in ("logits_processor", "stopping_criteria"):
        value = kwargs.get(name)
        if value is None:
            continue
        if not isinstance(value, (list, tuple)):  # HF's LogitsProcessorList / StoppingCriteriaList are lists
            kind = "LogitsProcessorList" if name == "logits_processor" else "StoppingCriteriaList"
            raise TypeError(f"{name} must be a list ({kind} or a plain list) of callables, got {type(value).__name__}")
        bad = [type(x).__name__ for x in value if not callable(x)]
        if bad:
            raise TypeError(f"{name} must hold callables (input_ids, scores) -> ..., got {', '.join(bad)}")
    fn = kwargs.get("prefix_allowed_tokens_fn")
    if fn is not None and not callable(fn):
        raise TypeError(f"prefix_allowed_tokens_fn must be callable (batch_id, input_ids) -> list of allowed ids, "
                        f"got {type(fn).__name__}")


def caller_max_length(kwargs: dict, prompt_len: int) -> int | None:
    """The length a caller's ``MaxLengthCriteria`` sets (the shortest, where several), which in
    HF replaces the config's (its merge keeps the caller's criterion of a type HF also
    makes); None without one. It must exceed the prompt."""
    lengths = [c.max_length for c in kwargs.get("stopping_criteria") or () if type(c) is MaxLengthCriteria]
    if not lengths:
        return None
    length = min(lengths)
    if not isinstance(length, int) or isinstance(length, bool) or length <= prompt_len:
        raise ValueError(f"stopping_criteria: MaxLengthCriteria(max_length={length!r}) must be an integer "
                         f"above the prompt length {prompt_len}")
    return length


def caller_eos(kwargs: dict, vocab: int) -> tuple[int, ...] | None:
    """The ids at which a caller's ``EosTokenCriteria`` stop a row (of all of them, where
    several), which in HF replace the config's EOS as what ends a row (the config's still
    hides EOS under ``min_new_tokens``); None without one."""
    found = [c for c in kwargs.get("stopping_criteria") or () if type(c) is EosTokenCriteria]
    if not found:
        return None
    return tuple(dict.fromkeys(i for c in found for i in token_ids("stopping_criteria: EosTokenCriteria.eos_token_id",
                                                                   c.eos_token_id, vocab)))


def token_ids(name: str, value, vocab: int) -> tuple[int, ...]:
    """An id field HF takes as an int, a list, or numpy / torch integers (``eos_token_id``), as
    Python ints, each checked to be in ``[0, vocab)``; None is none."""
    if value is None:
        return ()
    ids = as_int_ids(value)
    ids = [ids] if isinstance(ids, int) else ids
    if ids is None or not all(_is_id(i, vocab) for i in ids):
        raise ValueError(f"{name} must be a token id or a list of them, each in [0, {vocab}), got {value!r}")
    return tuple(ids)


def check_warpers(gc) -> None:
    """Refuse warper values HF would skip without a word (its list adds ``typical_p`` only
    below 1, the cutoffs only inside (0, 1); ``top_h`` it checks only when sampling), also
    in greedy calls, as ``top_p`` is refused."""
    ranges = {"typical_p": "(0, 1]", "epsilon_cutoff": "[0, 1)", "eta_cutoff": "[0, 1)", "top_h": "(0, 1]"}
    for name, interval in ranges.items():
        value = getattr(gc, name, None)
        if value is not None and not _within(value, interval):
            raise ValueError(f"{name} must be in {interval}, got {value!r}")


def check_fields(gc, vocab: int) -> None:
    """Refuse processor fields of ``gc`` (the merged GenerationConfig) that HF would skip
    without a word (a negative ``no_repeat_ngram_size``), trip over only inside the loop (an
    id past the ``vocab`` logits indexes out of range there) or refuse with a message that
    names nothing."""
    for name in ("no_repeat_ngram_size", "min_length"):
        value = getattr(gc, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    validators = {  # field -> (is it valid, as Python ints; what it must be)
        "bad_words_ids": (lambda v: isinstance(v, list) and len(v) > 0 and all(_is_ids(w, vocab) for w in v),
                          "a list of non-empty lists of token ids"),
        "suppress_tokens": (lambda v: _is_ids(v, vocab), "a list of token ids"),
        "begin_suppress_tokens": (lambda v: _is_ids(v, vocab), "a list of token ids"),
        "forced_bos_token_id": (lambda v: _is_id(v, vocab), "a token id"),
        "forced_eos_token_id": (lambda v: _is_id(v, vocab) or _is_ids(v, vocab), "a token id or a list of them"),
    }
    for name, (valid, what) in validators.items():
        value = getattr(gc, name, None)
        empty = isinstance(value, (list, tuple)) and not value  # [] suppresses nothing, as in HF
        if value is not None and not empty and not valid(as_int_ids(value)):
            raise ValueError(f"{name} must be {what} (ids in [0, {vocab})), got {value!r}")
    scale = gc.guidance_scale
    if scale is not None and not (_real(scale) and math.isfinite(scale)):
        raise ValueError(f"guidance_scale must be a finite number (1: no guidance), got {scale!r}")
    bias = gc.sequence_bias  # {(ids): bias} or [[ids, bias], ...]; HF checks the form, not the ids
    if bias is not None:
        seqs = list(bias) if isinstance(bias, dict) else [b[0] for b in bias if isinstance(b, (list, tuple)) and b]
        bad = [q for q in seqs if not _is_ids(as_int_ids(q), vocab)]
        if bad:
            raise ValueError(f"sequence_bias keys must be non-empty sequences of token ids in [0, {vocab}), "
                             f"got {bad[0]!r}")
    decay = gc.exponential_decay_length_penalty
    if decay is not None and not (isinstance(decay, (tuple, list)) and len(decay) == 2 and all(map(_real, decay))
                                  and decay[0] >= 0 and decay[1] > 0):
        raise ValueError("exponential_decay_length_penalty must be (start_index >= 0, decay_factor > 0), "
                         f"got {decay!r}")


def check_negative_prompt(kwargs: dict, guidance_scale, rows: int, vocab: int) -> None:
    """``guidance_scale``'s unconditional prompt: ``negative_prompt_ids`` an integer ``[rows, N]``
    tensor of ids in ``[0, vocab)`` (one row per generated row, ``num_return_sequences``
    counted; its min and max are read on the host, once), ``negative_prompt_attention_mask``
    of its shape; and a guidance scale to read them (HF ignores them without one)."""
    ids, mask = kwargs.get("negative_prompt_ids"), kwargs.get("negative_prompt_attention_mask")
    for name, value in (("negative_prompt_ids", ids), ("negative_prompt_attention_mask", mask)):
        if value is not None and not (isinstance(value, torch.Tensor) and value.ndim == 2
                                      and not value.is_floating_point() and not value.is_complex()):
            raise TypeError(f"{name} must be an integer tensor of shape [batch, length], got {value!r:.60}")
    if ids is None:
        if mask is not None:
            raise ValueError("negative_prompt_attention_mask without negative_prompt_ids: pass both or neither")
        return
    if guidance_scale is None or guidance_scale == 1:
        raise ValueError(f"negative_prompt_ids is read only with guidance_scale != 1, got guidance_scale="
                         f"{guidance_scale!r}")
    if ids.shape[0] != rows:
        raise ValueError(f"negative_prompt_ids must have one row per generated row ({rows}: the batch times "
                         f"num_return_sequences), got shape {tuple(ids.shape)}")
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < vocab):
        raise ValueError(f"negative_prompt_ids must be token ids in [0, {vocab})")
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(f"negative_prompt_attention_mask must have the shape of negative_prompt_ids "
                         f"{tuple(ids.shape)}, got {tuple(mask.shape)}")
