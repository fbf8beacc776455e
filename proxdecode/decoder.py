"""The model and its KV cache, fed one token per row per step.

Split from the loop (``engine.py``) because two drive it: the policy's loop, and the
rewards that step a reference model beside it (``KLPenalty``, ``Fluency(reference=...)``).
Its job is to keep every decode step's shapes fixed (static cache, full-length mask), so a
compiled forward compiles once and a CUDA graph can replay it; eager on the CPU, where
nothing is captured, the engine gives it HF's default ``DynamicCache`` instead
(``config._static_cache``).
"""

from __future__ import annotations

import contextlib
import inspect
import weakref

import torch

from .linear import pack_linears, packed_forwards


def model_vocab(model) -> int:
    """Logits per position: the output head's rows (the config's vocabulary without a head)."""
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.get_text_config().vocab_size


def _make_cache(model, max_len: int, static: bool):
    """The loop's KV cache: HF's ``StaticCache`` (fixed shapes, written in place; what CUDA
    graphs and ``torch.compile`` need) or ``DynamicCache`` (HF's default: its per-step
    ``torch.cat`` copies the whole cache, but attention reads only the slots written, and
    eager on the CPU it ran 3-6% faster end to end at batch 32, ``proxdecode bench
    --cache-ab``)."""
    from transformers import DynamicCache, StaticCache

    if static:
        try:
            return StaticCache(config=model.config, max_cache_len=max_len)
        except (TypeError, ValueError):
            pass  # a model whose cache classes take other arguments: dynamic it is
    # with the config, as HF's generate makes it: the layers of hybrid models (recurrent,
    # convolutional, sliding-window) get their own kinds of state
    return DynamicCache(config=model.config.get_text_config(decoder=True))


# Generation hooks of HF models that change nothing in pd's calls (text only, no token types):
# Phi-3's acts only past config.original_max_position_embeddings (it switches rope and drops
# the cache); these pass or drop image / token-type inputs; these build HF's generic mask
_LONG_ROPE_HOOKS = ("Phi3ForCausalLM", "PhimoeForCausalLM")
_TOKEN_TYPE_HOOKS = ("Gemma3ForConditionalGeneration", "Gemma4ForConditionalGeneration", "CTRLLMHeadModel")
_GENERIC_MASK_HOOKS = ("DogeForCausalLM", "Gemma3ForConditionalGeneration")


def _hf_model(model):
    """The HF model that runs (a PEFT wrapper's base model)."""
    return model.get_base_model() if hasattr(type(model), "get_base_model") else model


def builds_own_masks(model) -> bool:
    """Whether the model builds its static-cache attention mask in its own
    ``create_masks_for_generate`` other than HF's generic one (Bloom's alibi needs a 2-D
    mask), which pd does not run."""
    cls = type(_hf_model(model))
    return hasattr(cls, "create_masks_for_generate") and cls.__name__ not in _GENERIC_MASK_HOOKS


def check_model(model, length: int, static: bool) -> None:
    """Refuse, before any forward, a model this decoder would feed other inputs than HF does.

    Why: the decoder calls ``model.forward`` itself with HF's standard generation inputs
    (ids, positions, a 2-D mask, HF's cache), as gpt-fast calls its model; HF's ``generate``
    lets a model change those in its own hooks. Models that keep a recurrent state outside
    HF's ``Cache`` (RWKV, xLSTM), or whose ``prepare_inputs_for_generation`` builds other
    inputs (Mamba drops the mask after the prefill, Zamba and Bamba their own states) would
    decode wrong tokens without a word. ``length``: prompt plus new tokens.
    """
    from transformers.generation.utils import GenerationMixin

    hf = _hf_model(model)
    name = type(hf).__name__
    if not getattr(hf, "_supports_default_dynamic_cache", lambda: True)():  # HF calls it on the model
        raise ValueError(f"pd.generate cannot decode with {name}: it keeps its own recurrent state outside HF's "
                         "Cache (its _supports_default_dynamic_cache() is False); use model.generate")
    own_inputs = getattr(type(hf), "prepare_inputs_for_generation", None)
    if own_inputs not in (None, GenerationMixin.prepare_inputs_for_generation) and name not in _TOKEN_TYPE_HOOKS:
        limit = getattr(model.config, "original_max_position_embeddings", None)
        # HF's hook acts once the ids it is given, P + t < P + T of them, exceed the limit
        if name not in _LONG_ROPE_HOOKS or (limit is not None and length - 1 > limit):
            where = f" past its original_max_position_embeddings={limit}" if name in _LONG_ROPE_HOOKS else ""
            raise ValueError(f"pd.generate cannot decode with {name}{where}: its prepare_inputs_for_generation "
                             "builds its own inputs each step, which pd's decoder does not run; use model.generate")
    if static and builds_own_masks(model):
        raise ValueError(f"{name} builds its attention mask for a static cache in its own create_masks_for_generate, "
                         "which pd's decoder does not run: pass cache_implementation='dynamic' (and compile=False)")


# model -> ((batch, cache length, dtype, device), StaticCache) of its compiled decoder; weak on the model
_COMPILED_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cache_key(model, batch: int, max_len: int) -> tuple:
    return batch, max_len, model.dtype, model.device


def _compiled_cache(model, batch: int, max_len: int):
    """The static cache a compiled decoder of this model used last, reset, if the shape fits."""
    hit = _COMPILED_CACHES.get(model)
    if hit is None or hit[0] != _cache_key(model, batch, max_len):
        return None
    hit[1].reset()
    return hit[1]


class Decoder:
    """A model and its KV cache, fed one token per row per step.

    ``prefill(ids, mask)`` runs the ``[B, P]`` left-padded prompts and returns the last
    position's ``[B, V]`` logits; each ``step(tokens)`` appends one ``[B]`` token per row and
    returns the next logits. Positions count real tokens only (left padding gets none), as
    HF's ``generate`` does. The engine drives the policy with it; reference-model rewards
    (``KLPenalty``, ``Fluency(reference=...)``) drive their own beside it, eager.

    ``static_cache=False``: HF's ``DynamicCache`` and the mask grown by one slot per step
    (the engine's choice for eager steps on the CPU). With the static cache every decode
    step has the same shapes: ``[B, 1]`` tokens and positions, and the attention mask at its
    full ``[B, P + T]`` length, zero on the slots not yet written and set to one, in place,
    as each is (so it means what HF's growing mask means, for every attention
    implementation). So a ``compiled`` forward (``model.get_compiled_call``, HF's cached
    ``torch.compile`` of the model) compiles once per ``(B, P, T)``; the prefill always runs
    eager, as in gpt-fast and HF, since its shapes change with every prompt batch. A
    compiled decoder reuses one static cache per model and shape, as HF's ``generate`` keeps
    ``model._cache``: CUDA graphs are recorded against fixed addresses.
    ``compile_required=False`` (HF's automatic choice) runs eager where the model has no
    static cache; True raises. ``linear="onednn"`` runs the linear layers on oneDNN-packed
    weights (``linear.py``), packed at the prefill, dropped with the decoder.
    """

    def __init__(self, model, max_new_tokens: int, static_cache: bool = True, compiled=None,
                 linear: str = "torch", compile_required: bool = False, outputs: tuple[str, ...] = ()):
        self.model, self.T, self.static, self.compiled = model, max_new_tokens, static_cache, compiled
        self.linear, self.compile_required, self.outputs = linear, compile_required, outputs
        self.extra = {}  # the last forward's "hidden_states" / "attentions", of those in ``outputs``
        params = inspect.signature(type(model).forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.24 : older

    def _run(self, forward, tokens, positions, mask):
        flags = {f"output_{name}": True for name in self.outputs}  # HF's output_hidden_states / _attentions
        with packed_forwards(self.packed) if self.packed else contextlib.nullcontext():
            out = forward(input_ids=tokens, attention_mask=mask, position_ids=positions,
                          use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache}, **flags)
        copy = forward is self.compiled  # a compiled forward may reuse its output buffers
        self.extra = {name: tuple(x.clone() if copy else x for x in getattr(out, name, None) or ())
                      for name in self.outputs}
        return out.logits[:, -1, :]  # [B, V]

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from transformers import StaticCache

        B, P = ids.shape
        reused = _compiled_cache(self.model, B, P + self.T) if self.compiled is not None else None
        self.cache = reused if reused is not None else _make_cache(self.model, P + self.T, self.static)
        self.fixed_shapes = isinstance(self.cache, StaticCache)
        if self.compiled is not None and not self.fixed_shapes:
            if self.compile_required:
                raise ValueError(f"compile=True needs the static KV cache, which {type(self.model).__name__} "
                                 "does not support; pass compile=False")
            self.compiled = None  # HF's automatic choice: eager where the cache cannot be static
        if self.compiled is not None and reused is None:
            _COMPILED_CACHES[self.model] = (_cache_key(self.model, B, P + self.T), self.cache)
        self.packed = pack_linears(self.model, B) if self.linear == "onednn" else []
        self.full_mask = torch.cat([mask, mask.new_zeros(B, self.T)], 1)  # [B, P+T]: 1 once written
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # [B, P]
        self.last_pos, self.P, self.t = positions[:, -1:], P, 0  # [B, 1]
        return self._run(self.model, ids, positions, mask)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.t += 1
        self.full_mask[:, self.P + self.t - 1].fill_(1)  # the slot this token is written to
        mask = self.full_mask if self.fixed_shapes else self.full_mask[:, : self.P + self.t]  # [B, P+T]
        return self._run(self.compiled or self.model, tokens[:, None], self.last_pos + self.t, mask)
