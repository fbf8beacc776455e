"""oneDNN-packed linear layers: the CPU decode step's matmuls at the memory's speed.

Why: a decode step multiplies a few rows (one per sequence) by every weight matrix of the
model, so it should run as fast as the weights stream from memory. ``F.linear`` on x86
calls MKL's sgemm, which for so few rows reaches 2-3 GB/s on this project's 2-core AMD
EPYC, out of ~15 GB/s the machine reads at; oneDNN, with each weight reordered once into
its blocked layout, reaches ~7 GB/s (``python benchmarks/bench_linear.py``): ~2.5x on the
matmuls, which are ~85% of a decode step of the default model. vLLM's CPU backend makes the
same choice for unquantised linear layers (oneDNN GEMM on prepacked weights).

Costs, and why this is opt-in (``pd.generate(..., linear="onednn")``):
- the packed copies are a second copy of every linear weight (~540 MB for the 135M default
  model in fp32) and take ~0.1 s to make. They are cached per layer and remade only when
  the weight changes (an optimiser step bumps its version) or the batch size does, so a
  training loop pays one repack per update;
- oneDNN sums in another order than MKL: logits differ by fp32 rounding, so greedy tokens
  can differ from HF's where two candidates nearly tie. The default (``"torch"``) keeps
  ``F.linear`` and HF's exact tokens.

Only plain ``nn.Linear`` layers with fp32 weights on the CPU are packed (bf16 needs a CPU
with AVX-512 or AVX-NE-CONVERT, checked up front); a layer whose ``forward`` something else
already replaced (accelerate's offload hooks) is left alone. The swap lasts one forward
call: nothing of the model is changed outside it.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

LINEARS = ("torch", "onednn")

# nn.Linear -> (cache key, packed weight); weak, so a dropped model frees its packed copies
_PACKED: "weakref.WeakKeyDictionary[torch.nn.Linear, tuple]" = weakref.WeakKeyDictionary()


def _packable(m: torch.nn.Module) -> bool:
    return type(m) is torch.nn.Linear and "forward" not in m.__dict__ and not m._forward_hooks \
        and not m._forward_pre_hooks


def check_linear(linear: str, model) -> None:
    """Raise unless ``linear`` is a known choice that this model and this torch can run."""
    if linear not in LINEARS:
        raise ValueError(f"linear must be one of {', '.join(LINEARS)}, got {linear!r}")
    if linear == "torch":
        return
    if not torch.backends.mkldnn.is_available():
        raise ValueError("linear='onednn' needs a torch built with oneDNN (torch.backends.mkldnn); use 'torch'")
    layers = [m for m in model.modules() if _packable(m)]
    if not layers:
        raise ValueError(f"linear='onednn': {type(model).__name__} has no plain nn.Linear layer to pack")
    for m in layers:
        w = m.weight
        if w.device.type != "cpu":
            raise ValueError(f"linear='onednn' runs on the CPU; the model's weights are on {w.device}")
        if w.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"linear='onednn' supports float32 and bfloat16 weights, got {w.dtype}")
    if any(m.weight.dtype == torch.bfloat16 for m in layers):
        try:  # oneDNN's bf16 reorder refuses CPUs without native bf16 conversion
            torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 1)
        except RuntimeError as e:
            raise ValueError(f"linear='onednn' with bfloat16 weights: {e}; use float32 or linear='torch'") from None


def _packed_weight(m: torch.nn.Linear, batch: int) -> torch.Tensor:
    """The layer's weight in oneDNN's blocked layout for ``batch`` rows, made once, cached."""
    w = m.weight
    try:
        version = w._version
    except RuntimeError:  # an inference tensor keeps no version: repack, it may have changed
        version = None
    key = (w.data_ptr(), version, w.dtype, batch)
    hit = _PACKED.get(m)
    if version is not None and hit is not None and hit[0] == key:
        return hit[1]
    packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch)  # opaque mkldnn tensor
    _PACKED[m] = (key, packed)
    return packed


def _packed_forward(packed: torch.Tensor, bias, out_features: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, bias, "none", [], "")  # [N, out]
        return y.reshape(*x.shape[:-1], out_features)
    return forward


def pack_linears(model: torch.nn.Module, batch: int) -> list:
    """``(layer, forward)`` for each plain linear layer: its forward on the oneDNN-packed weight.

    Args:
        model: a CPU model with fp32 (or, where the CPU has it, bf16) linear weights; check
            it first with :func:`check_linear`.
        batch: the rows of a decode step (the reorder's size hint).
    Packs only what changed since the last call (cached per layer). Inference only: the
    packed op has no backward.
    """
    return [(m, _packed_forward(_packed_weight(m, batch), m.bias, m.out_features))
            for m in model.modules() if _packable(m)]


@contextlib.contextmanager
def packed_forwards(packed: list):
    """Within the block, each layer of ``pack_linears``' list runs its packed forward; restored on exit."""
    swapped = []
    try:
        for m, forward in packed:
            m.forward = forward
            swapped.append(m)
        yield
    finally:
        for m in swapped:
            del m.forward
