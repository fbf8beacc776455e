"""DecodeConfig: the checked, frozen view of one ``generate`` call.

Why one object: every argument is resolved the way HF resolves it (call arguments over
``generation_config`` over ``model.generation_config`` over HF's global defaults) and
checked once, before any model work. The engine then reads plain Python values and never
re-validates inside the loop. Anything HF's ``generate`` accepts that this engine does not
implement raises here, naming the argument: nothing is silently ignored.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import transformers

from .decoder import builds_own_masks, check_model, model_vocab
from .hf_processing import CALL_ARGS, PROCESSOR_FIELDS, WARPER_FIELDS, Mode, as_int_ids, caller_eos, \
    caller_max_length, check_call_args, check_fields, check_negative_prompt, check_warpers, prepare_lengths, \
    processing_mode, token_ids
from .rewards.base import finite_number

if TYPE_CHECKING:
    from transformers import GenerationConfig

# HF generate() arguments this engine implements.
SUPPORTED_ARGS = frozenset({
    "generation_config", "max_new_tokens", "max_length", "min_new_tokens", "do_sample",
    "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "eos_token_id",
    "pad_token_id", "bos_token_id", "num_return_sequences", "return_dict_in_generate",
    "output_scores", "streamer", "stop_strings", "tokenizer", "use_cache", "cache_implementation",
    "compile_config", "disable_compile", "max_time", "output_logits", "output_hidden_states",
    "output_attentions", "renormalize_logits",
    *CALL_ARGS, *PROCESSOR_FIELDS, *WARPER_FIELDS,
    # beam search's own fields, which HF reads only with num_beams > 1 (refused below) and
    # otherwise ignores at any value, logging that they "may be ignored": so does pd
    "length_penalty", "early_stopping", "low_memory",
})

# GenerationConfig fields whose non-default values select behaviour not implemented here.
_INACTIVE_WHEN = {
    "num_beams": (None, 1), "num_beam_groups": (None, 1), "penalty_alpha": (None,),
    "dola_layers": (None,), "prompt_lookup_num_tokens": (None,),
    "encoder_repetition_penalty": (None, 1.0), "encoder_no_repeat_ngram_size": (None, 0),
    "diversity_penalty": (None, 0.0), "constraints": (None,), "force_words_ids": (None,),
    "token_healing": (None, False), "use_mtp": (None, False), "prefill_chunk_size": (None,),
}
# ``generate``'s own parameters beside the GenerationConfig fields, accepted at their inert
# values (what HF's callers pass explicitly) and refused otherwise.
_INERT_CALL_ARGS = {
    "synced_gpus": (None, False), "assistant_model": (None,), "assistant_tokenizer": (None,),
    "custom_generate": (None,),
}
# ``use_cache`` is accepted either way: the engine always decodes with the cache it owns, and
# HF's tokens and scores do not depend on it (trainers such as TRL set it False for gradient
# checkpointing, which must not stop the same model from being a rollout policy). HF's hidden
# states and attentions do: without a cache each step's span the whole sequence, so that pair
# is refused (resolve).


def _hf_penalty_skips_left_padding() -> bool:
    """Whether the installed HF ``generate`` leaves left padding out of the repetition penalty.

    transformers 5.17 penalises every id in ``input_ids``, pad tokens included; 5.24 passes
    the padding lengths as ``prompt_ignore_length``. Following the installed version keeps
    greedy decoding token-identical on both.
    """
    try:
        from transformers.generation.utils import GenerationMixin

        return "prompt_ignore_length" in inspect.getsource(GenerationMixin._get_logits_processor)
    except (ImportError, OSError, TypeError, AttributeError):
        return True


PENALTY_SKIPS_LEFT_PADDING = _hf_penalty_skips_left_padding()
_FLOAT32_MAX = torch.finfo(torch.float32).max


@dataclass(frozen=True)
class DecodeConfig:
    """Everything the decode loop needs, resolved and validated."""

    max_new_tokens: int
    min_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    eos_token_ids: tuple[int, ...]  # the config's: hidden while min_new_tokens is not reached
    stop_token_ids: tuple[int, ...]  # the ids that end a row (HF's EosTokenCriteria: the config's or a caller's)
    pads: bool  # a stopped row gets pad_token_id (HF: when a criterion can stop at EOS); else it keeps its tokens
    pad_token_id: int | None  # written after a row's end, and what an inferred mask hides
    num_return_sequences: int
    return_dict_in_generate: bool
    output_scores: bool
    output_logits: bool  # HF's: the raw [B, V] logits of every step
    output_hidden_states: bool  # HF's: every step's forward's hidden states, per layer
    output_attentions: bool  # HF's: every step's forward's attention weights, per layer
    renormalize_logits: bool  # HF's: the scores (output, and the criteria's) are log-probs
    steer: float
    gamma: float
    prompt_seeds: tuple[int, ...] | None  # one per prompt, None: drawn from torch's RNG
    stop_strings: tuple[str, ...] = ()
    static_cache: bool = True  # HF's StaticCache; False: DynamicCache. resolve() decides (_static_cache)
    backend: str = "auto"  # the step implementation: auto | torch | triton | cpp
    compile: bool = False  # compile the decode step (the forward; the step after it with rewards)
    compile_required: bool = False  # the caller asked (compile=True): no eager fallback
    compile_config: Any = None  # the transformers CompileConfig to compile with; None: HF's default
    linear: str = "torch"  # the linear layers: torch (F.linear) | onednn (packed, CPU)
    max_time: float | None = None  # seconds from the start of the call, then every row stops (HF's)
    # HF's list runs before the step (hf_processing.py): "processors", and the step's penalty
    # and min_new_tokens above are off (the list applies them); "warpers", and its
    # temperature and filters are off too. hf_config: the merged config the list reads.
    hf_processing: Mode | None = None
    hf_config: GenerationConfig | None = None

    @staticmethod
    def resolve(model, input_ids, attention_mask, *, steer, gamma, seed, rewards,
                kwargs: dict[str, Any], backend: str = "auto", compile=None,
                linear: str = "torch") -> "DecodeConfig":
        """Check the inputs and merge the generation arguments as HF's ``generate`` does."""
        unknown = sorted(set(kwargs) - SUPPORTED_ARGS - set(_INACTIVE_WHEN) - set(_INERT_CALL_ARGS))
        if unknown:
            raise TypeError(f"pd.generate: unsupported generate argument(s) {unknown}; "
                            f"supported: {sorted(SUPPORTED_ARGS)}")
        for name, inert in _INERT_CALL_ARGS.items():
            if name in kwargs and not _is_inert(kwargs[name], inert):
                raise ValueError(f"pd.generate: {name}={kwargs[name]!r} is not supported "
                                 f"(allowed: {' or '.join(map(repr, inert))})")
        check_call_args(kwargs)
        _check_inputs(input_ids, attention_mask)
        steer_value = finite_number(steer)  # a Python, numpy or 0-d tensor number
        if steer_value is None or abs(steer_value) > _FLOAT32_MAX:
            raise ValueError(f"steer must be a finite number within float32's range (|steer| <= 3.4e38, the step "
                             f"computes in float32), got {steer!r}")
        steer = steer_value
        passed_gc = kwargs.get("generation_config")
        hf_kwargs = {k: v for k, v in kwargs.items() if k not in ("generation_config", "streamer", "tokenizer")
                     and k not in _INERT_CALL_ARGS and k not in CALL_ARGS}
        gc, left = model._prepare_generation_config(passed_gc, **hf_kwargs)
        left = {k: v for k, v in left.items() if k not in ("output_attentions", "output_hidden_states")}  # HF
        # copies these two fields into the model's kwargs; they are read from gc below
        if left:  # not GenerationConfig fields in this transformers version: they would do nothing
            raise TypeError(f"pd.generate: {sorted(left)} are not generation arguments of transformers "
                            f"{transformers.__version__}")
        for name, inactive in _INACTIVE_WHEN.items():
            value = getattr(gc, name, None)
            if not _is_inert(value, inactive):
                raise ValueError(f"pd.generate: {name}={value!r} is not supported "
                                 f"(allowed: {' or '.join(map(repr, inactive))})")

        prompt_len = input_ids.shape[1]
        max_new = gc.max_new_tokens
        # HF: a max_length nobody set (call, generation_config, the model's) means 20 *new*
        # tokens, capped at max_position_embeddings; one somebody set counts the prompt in
        default_length = kwargs.get("max_length") is None and getattr(passed_gc, "max_length", None) is None \
            and model.generation_config.max_length is None
        if max_new is None:
            max_length = gc.max_length
            if default_length and max_length is not None:
                max_length += prompt_len
                limit = getattr(model.config, "max_position_embeddings", None)
                max_length = max_length if limit is None else min(max_length, limit)
            if max_length is None or max_length <= prompt_len:
                raise ValueError(f"max_length={max_length} must exceed the prompt length "
                                 f"{prompt_len}; or pass max_new_tokens")
            max_new = max_length - prompt_len
        _check_int("max_new_tokens", max_new, 0)
        config_new = max_new  # HF's processors read the config's length (forced_eos)
        caller_len = caller_max_length(kwargs, prompt_len)
        if caller_len is not None:  # HF: the caller's MaxLengthCriteria replaces the config's length
            max_new = caller_len - prompt_len
        min_new = gc.min_new_tokens or 0
        _check_int("min_new_tokens", min_new, 0)
        do_sample = bool(gc.do_sample)
        temperature = 1.0 if gc.temperature is None else gc.temperature
        if do_sample or steer != 0.0:
            if not isinstance(temperature, (int, float)) or not (temperature > 0) \
                    or not math.isfinite(temperature):
                raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        top_k = 0 if gc.top_k is None else gc.top_k
        _check_int("top_k", top_k, 0)
        top_p = 1.0 if gc.top_p is None else gc.top_p
        if not isinstance(top_p, (int, float)) or not (0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        min_p = 0.0 if gc.min_p is None else gc.min_p
        if not isinstance(min_p, (int, float)) or not (0.0 <= min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
        rp = 1.0 if gc.repetition_penalty is None else gc.repetition_penalty
        if not isinstance(rp, (int, float)) or not (rp > 0) or not math.isfinite(rp):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {rp!r}")
        if not do_sample and steer == 0.0:
            # HF applies no warper in greedy mode (its config check logs that these flags "may
            # be ignored"): the argmax, the scores and the log-probs are of the processed
            # logits. With steering they stay: they choose the candidates the argmax reweights.
            temperature, top_k, top_p, min_p = 1.0, 0, 1.0, 0.0
        n_ret = 1 if gc.num_return_sequences is None else gc.num_return_sequences  # HF turns 0 into 1
        _check_int("num_return_sequences", n_ret, 1)

        vocab = model_vocab(model)
        eos_ids = token_ids("eos_token_id", gc.eos_token_id, vocab)
        stop_ids = caller_eos(kwargs, vocab)  # HF: a caller's EosTokenCriteria replaces the config's EOS
        stop_ids = eos_ids if stop_ids is None else stop_ids
        pad = None if gc.pad_token_id is None else as_int_ids(gc.pad_token_id)
        if gc.pad_token_id is not None and (isinstance(gc.pad_token_id, bool) or not isinstance(pad, int)):
            raise ValueError(f"pad_token_id must be an integer, got {gc.pad_token_id!r}")
        pad = eos_ids[0] if pad is None and eos_ids else pad  # HF's fallback
        # HF pads a stopped row only when some criterion can stop rows at EOS (its EosTokenCriteria,
        # made for any eos_token_id that is not None, or a caller's criterion with eos_token_id)
        criteria = kwargs.get("stopping_criteria") or ()
        pads = gc.eos_token_id is not None or any(hasattr(c, "eos_token_id") for c in criteria)
        if pad is None and pads:
            raise ValueError("pad_token_id is unset and the config has no eos_token_id to pad with")
        stop_strings = gc.stop_strings
        stop_strings = () if stop_strings is None else (
            (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings))
        if stop_strings and kwargs.get("tokenizer") is None:
            raise ValueError("stop_strings needs tokenizer= (as in HF generate)")
        if (gc.output_hidden_states or gc.output_attentions) and gc.use_cache is False:
            raise ValueError("output_hidden_states / output_attentions with use_cache=False: HF then returns every "
                             "position of the sequence each step, pd (which decodes with its cache) the new one "
                             "only; pass use_cache=True")
        max_time = None if gc.max_time is None else finite_number(gc.max_time)
        if gc.max_time is not None and (max_time is None or max_time < 0):
            raise ValueError(f"max_time must be a finite number of seconds >= 0, got {gc.max_time!r}")
        if kwargs.get("streamer") is not None and input_ids.shape[0] * n_ret != 1:
            raise ValueError("streamer supports a batch of one sequence, as in HF generate")

        cache_impl = getattr(gc, "cache_implementation", None)
        if cache_impl not in (None, "static", "dynamic"):
            raise ValueError(f"cache_implementation must be 'static', 'dynamic' or None, got {cache_impl!r}")
        if steer != 0.0 and rewards is None:
            raise ValueError("steer != 0 needs rewards= (there is nothing to steer with)")
        gamma_value = finite_number(gamma)
        if gamma_value is None or not 0.0 <= gamma_value <= 1.0:
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
        from .step import BACKENDS
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        do_compile = _decide_compile(model, gc, cache_impl, compile)
        from .linear import check_linear
        check_linear(linear, model)
        if linear == "onednn" and do_compile:
            raise ValueError("linear='onednn' and compile do not combine (inductor cannot lower oneDNN's "
                             "packed weights); pass compile=False or linear='torch'")
        check_warpers(gc)
        mode = processing_mode(gc, kwargs, do_sample or steer != 0.0, _is_inert)
        if mode is not None:
            check_fields(gc, vocab)
            prepare_lengths(gc, prompt_len, config_new)
            rp, min_new = 1.0, 0  # the step must not repeat them: HF's list applies them
        if mode == "warpers":  # ... and its warpers: the step only steers and draws
            temperature, top_k, top_p, min_p = 1.0, 0, 1.0, 0.0
        check_negative_prompt(kwargs, gc.guidance_scale, input_ids.shape[0] * n_ret, vocab)
        static = _static_cache(model, cache_impl, do_compile)
        check_model(model, prompt_len + max_new, static)
        return DecodeConfig(
            max_new_tokens=int(max_new), min_new_tokens=int(min_new), do_sample=do_sample,
            temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
            min_p=float(min_p), repetition_penalty=float(rp), eos_token_ids=eos_ids, stop_token_ids=stop_ids,
            pads=pads, pad_token_id=pad, num_return_sequences=int(n_ret),
            return_dict_in_generate=bool(gc.return_dict_in_generate),
            output_scores=bool(gc.output_scores), output_logits=bool(gc.output_logits),
            output_hidden_states=bool(gc.output_hidden_states), output_attentions=bool(gc.output_attentions),
            renormalize_logits=bool(gc.renormalize_logits), steer=float(steer), gamma=gamma_value,
            prompt_seeds=_prompt_seeds(seed, input_ids.shape[0]), stop_strings=stop_strings,
            static_cache=static, backend=backend, compile=do_compile,
            compile_required=compile is True, compile_config=gc.compile_config, linear=linear,
            max_time=max_time,
            hf_processing=mode, hf_config=gc if mode is not None else None)

    def row_seeds(self, batch: int) -> list[int]:
        """One Philox key per output row (prompt-major, as HF orders num_return_sequences)."""
        from .philox import row_seed

        base = self.prompt_seeds
        if base is None:
            base = tuple(int(s) for s in torch.randint(0, 2**62, (batch,)))
        return [row_seed(s, r) for s in base for r in range(self.num_return_sequences)]


def _static_cache(model, cache_impl, do_compile: bool) -> bool:
    """The KV cache, when ``cache_implementation`` does not name one: static where a step may
    be captured or compiled (a compiled step, or an accelerator: fixed shapes are what CUDA
    graphs and ``torch.compile`` need, so the design keeps the cache static there even for an
    eager step; which cache is faster eager on a GPU is unmeasured), HF's default
    ``DynamicCache`` for eager steps on the CPU, where nothing is captured and the static
    cache's attention over its full length cost more than the dynamic one's per-step copy
    at batch 32 (README, "Where the end-to-end speedup comes from"). A model that builds its
    static-cache mask in its own hook (``decoder.builds_own_masks``) gets the dynamic cache."""
    if cache_impl is not None:
        return cache_impl == "static"
    return do_compile or (model.device.type != "cpu" and not builds_own_masks(model))


def _decide_compile(model, gc, cache_impl, compile) -> bool:
    """Whether to compile the decode step (the forward, and with rewards the step after it).

    ``compile=None`` decides as HF's ``generate`` does (``_valid_auto_compile_criteria``): a
    static cache asked for by name, ``disable_compile`` unset, a CUDA/XPU/Neuron/TPU model or
    a ``compile_config`` with ``_compile_all_devices``, and no quantiser that cannot compile
    or CPU/disk offload. ``True`` compiles on any device (on this project's CPU a modest gain
    over eager for the default model, after one compile per ``(batch, prompt length,
    max_new_tokens)``; ``make bench-update`` measures both, see README).
    """
    if compile is not None and not isinstance(compile, bool):
        raise TypeError(f"compile must be True, False or None (HF's rule), got {compile!r}")
    if compile is True:
        if gc.disable_compile:
            raise ValueError("compile=True contradicts disable_compile=True; pass one of them")
        if cache_impl == "dynamic":
            raise ValueError("compile=True needs the static KV cache (cache_implementation='static' or None), "
                             "got cache_implementation='dynamic'")
        return True
    if compile is False or cache_impl != "static" or gc.disable_compile:
        return False
    cc = gc.compile_config  # HF's GenerationConfig checked its type
    hardware = model.device.type in ("cuda", "xpu", "neuron", "tpu") or bool(cc and cc._compile_all_devices)
    quantizer = getattr(model, "hf_quantizer", None)
    devices = set(getattr(model, "hf_device_map", {}).values())
    offloaded = "disk" in devices or ("cpu" in devices and len(devices) > 1)
    return hardware and (quantizer is None or quantizer.is_compileable) and not offloaded


def _is_inert(value, inert: tuple) -> bool:
    """``value`` is one of ``inert``: the same object, an equal number or bool, or an empty
    list for ``[]`` (a ``LogitsProcessorList()`` too); never an elementwise tensor compare."""
    for v in inert:
        if value is v:
            return True
        if isinstance(v, list) and isinstance(value, list) and not value:
            return True
        if isinstance(v, (bool, int, float)) and isinstance(value, (bool, int, float)) and value == v:
            return True
    return False


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_inputs(input_ids, attention_mask) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 \
            or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError("input_ids must be an integer tensor of shape [batch, prompt_len]")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): "
                         "need at least one prompt of at least one token")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            shape = getattr(attention_mask, "shape", None)
            raise ValueError(f"attention_mask must have the shape of input_ids "
                             f"{tuple(input_ids.shape)}, got {shape}")


def _prompt_seeds(seed, batch: int) -> tuple[int, ...] | None:
    """int ``s`` gives prompt ``p`` the seed ``s + p``; a sequence gives one per prompt."""
    if seed is None:
        return None
    if isinstance(seed, torch.Tensor):
        seed = seed.tolist()
    if isinstance(seed, int) and not isinstance(seed, bool):
        seeds = [seed + p for p in range(batch)]
    elif isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = list(seed)
        if len(seeds) != batch:
            raise ValueError(f"seed has {len(seeds)} entries for a batch of {batch} prompts")
    else:
        raise TypeError(f"seed must be an int, a sequence of ints or None, got {type(seed).__name__}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
            raise ValueError(f"seed values must be integers in [0, 2**63), got {s!r}")
    return tuple(seeds)
