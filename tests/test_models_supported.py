"""Which models pd's decoder can drive, HF's own ``generate`` the oracle.

The decoder calls ``model.forward`` with HF's standard generation inputs and HF's cache,
built as HF builds it (with the model's config, so hybrid models get their recurrent and
convolution states). Models whose own generation hooks feed other inputs are refused by
name before any forward, rather than decoded wrong. Tiny random-weight models, greedy.
"""

import pytest
import torch
import transformers as T

import proxdecode as pd

IDS = torch.randint(3, 1000, (2, 7), generator=torch.Generator().manual_seed(0))
MASK = torch.ones_like(IDS)


def _tiny(config):
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    return model


def _forwards(model, monkeypatch):
    """Count the model's forwards (none may run before a refusal)."""
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    return calls


@pytest.mark.parametrize("config", [
    T.RecurrentGemmaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, lru_width=64, attention_window_size=8,
                           block_types=["recurrent", "attention"]),
    T.Lfm2Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, layer_types=["conv", "full_attention"]),
], ids=["recurrent_gemma", "lfm2"])
def test_hybrid_models_decode_as_in_hf(config):
    """Their recurrent / convolution layers keep state in HF's config-built cache."""
    model = _tiny(config)
    hf = model.generate(IDS, attention_mask=MASK, max_new_tokens=8, do_sample=False)
    assert not torch.equal(hf[0, 7:], hf[1, 7:])  # the rows decode apart: a real comparison
    assert torch.equal(pd.generate(model, IDS, MASK, max_new_tokens=8, do_sample=False), hf)


@pytest.mark.parametrize("config, says", [
    (T.MambaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, state_size=8),
     "MambaForCausalLM: its prepare_inputs_for_generation builds its own inputs"),
    (T.RwkvConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, attention_hidden_size=64,
                  intermediate_size=128, context_length=64),
     "RwkvForCausalLM: it keeps its own recurrent state outside HF's Cache"),
], ids=["mamba", "rwkv"])
def test_models_with_their_own_generation_inputs_are_refused_before_any_forward(config, says, monkeypatch):
    model = _tiny(config)
    calls = _forwards(model, monkeypatch)
    with pytest.raises(ValueError, match=f"cannot decode with {says}.*use model.generate"):
        pd.generate(model, IDS, MASK, max_new_tokens=4, do_sample=False)
    assert not calls


def test_a_model_that_builds_its_own_static_mask_gets_the_dynamic_cache(monkeypatch):
    """Bloom's alibi needs its own create_masks_for_generate with a static cache: pd refuses
    the static cache by name, and decodes as HF with the dynamic one."""
    model = _tiny(T.BloomConfig(vocab_size=1000, hidden_size=64, n_layer=2, n_head=4))
    hf = model.generate(IDS, attention_mask=MASK, max_new_tokens=6, do_sample=False)
    assert torch.equal(pd.generate(model, IDS, MASK, max_new_tokens=6, do_sample=False), hf)
    calls = _forwards(model, monkeypatch)
    says = "BloomForCausalLM builds its attention mask .* cache_implementation='dynamic'"
    with pytest.raises(ValueError, match=says):
        pd.generate(model, IDS, MASK, max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert not calls


def test_phi3s_long_rope_hook_is_inert_within_its_original_length(monkeypatch):
    """Phi-3's prepare_inputs_for_generation acts once it is given more ids than
    original_max_position_embeddings: the last forward of P + T tokens gets P + T - 1."""
    config = T.Phi3Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          original_max_position_embeddings=16, pad_token_id=0)
    model = _tiny(config)
    hf = model.generate(IDS, attention_mask=MASK, max_new_tokens=10, do_sample=False)  # 7 + 10 - 1 = 16
    assert torch.equal(pd.generate(model, IDS, MASK, max_new_tokens=10, do_sample=False), hf)
    calls = _forwards(model, monkeypatch)
    with pytest.raises(ValueError, match="Phi3ForCausalLM past its original_max_position_embeddings=16"):
        pd.generate(model, IDS, MASK, max_new_tokens=11, do_sample=False)
    assert not calls


_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
               patch_size=14)
_GEMMA3_TEXT = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
                    layer_types=["sliding_attention", "full_attention"])


@pytest.mark.parametrize("config", [
    T.Gemma3Config(text_config=_GEMMA3_TEXT, vision_config=_SIGLIP, mm_tokens_per_image=4, image_token_index=999,
                   boi_token_index=998, eoi_token_index=997),
    T.CTRLConfig(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, dff=128),
    T.DogeConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
], ids=["gemma3 image-text", "ctrl", "doge"])
@pytest.mark.parametrize("cache", [None, "static"])
def test_hooks_that_change_nothing_in_a_text_call_are_accepted(config, cache):
    """Gemma 3's and CTRL's own prepare_inputs_for_generation only pass or drop token types;
    Doge's and Gemma 3's create_masks_for_generate is HF's generic mask."""
    cls = T.Gemma3ForConditionalGeneration if isinstance(config, T.Gemma3Config) else T.AutoModelForCausalLM
    torch.manual_seed(0)
    model = (cls(config) if cls is T.Gemma3ForConditionalGeneration else cls.from_config(config)).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    mask = MASK.clone()
    mask[0, :2] = 0  # left padding
    kw = dict(max_new_tokens=8, do_sample=False, cache_implementation=cache)
    assert torch.equal(pd.generate(model, IDS, mask, **kw), model.generate(IDS, attention_mask=mask, **kw))


def test_a_models_own_supports_default_dynamic_cache_is_asked_as_hf_asks_it():
    """HF calls it on the model: remote-code models define it as an instance method."""
    class MyLlama(T.LlamaForCausalLM):
        def _supports_default_dynamic_cache(self):
            return True

    config = T.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = MyLlama(config).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    hf = model.generate(IDS, attention_mask=MASK, max_new_tokens=4, do_sample=False)
    assert torch.equal(pd.generate(model, IDS, MASK, max_new_tokens=4, do_sample=False), hf)


def test_a_wrapper_is_judged_by_the_model_it_runs(tiny):
    """A PEFT-style wrapper (``get_base_model``) has its own generation hooks that defer to
    the base model: the base model's class decides."""
    from proxdecode.decoder import check_model

    class Wrapper(torch.nn.Module):  # what PeftModelForCausalLM looks like to pd
        def __init__(self, base):
            super().__init__()
            self.base, self.config = base, base.config

        def get_base_model(self):
            return self.base

        def prepare_inputs_for_generation(self, *args, **kwargs):
            return self.base.prepare_inputs_for_generation(*args, **kwargs)

    check_model(Wrapper(tiny[0]), 16, static=True)
    mamba = _tiny(T.MambaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, state_size=8))
    with pytest.raises(ValueError, match="cannot decode with MambaForCausalLM"):
        check_model(Wrapper(mamba), 16, static=False)
