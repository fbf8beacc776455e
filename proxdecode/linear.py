"""oneDNN-packed linear layers: the CPU decode step's matmuls closer to the memory's speed.

Why: a decode step multiplies a few rows (one per sequence) by every weight matrix of the
model, so it should run as fast as the weights stream from memory. ``F.linear`` on x86
calls MKL's sgemm, which for so few rows reaches a fraction of the speed the machine reads
the same weights at; oneDNN, with each weight reordered once into its blocked layout, gets
closer, most on the big matrices (the 49,152-row LM head, the MLP) and least on the small
attention projections. ``make bench-linear`` measures both per layer shape against a plain
read of the weights (the README's table: 2.1x over the default model's 211 layers at 8
rows), and the matmuls are most of a decode step. vLLM's CPU backend makes the same choice
for unquantised linear layers (oneDNN GEMM, prepacked).

Costs, and why this is opt-in (``pd.generate(..., linear="onednn")``):
- the packed copies are a second copy of every linear weight (~540 MB for the 135M default
  model in fp32) and take time to make (``make bench-linear`` reports it: 0.1-0.3 s in the
  README's run). They are made at the start of each ``generate`` call and dropped at its
  end: nothing outlives the call, and nothing can go stale when the weights change between
  calls (an optimiser step, ``param.data`` writes of an EMA or an adapter merge, none of
  which a cache could reliably see);
- oneDNN sums in another order than MKL: logits differ by fp32 rounding, so greedy tokens
  can differ from HF's where two candidates nearly tie. The default (``"torch"``) keeps
  ``F.linear`` and HF's exact tokens.

Only plain ``nn.Linear`` layers with fp32 or bf16 weights on the CPU are packed (bf16
needs a CPU with AVX-512 or AVX-NE-CONVERT, checked up front); a layer whose ``forward``
something else already replaced (accelerate's offload hooks) or that has hooks is left
alone. The swap
lasts one forward call: nothing of the model is changed outside it.
"""

from __future__ import annotations

import contextlib

import torch

LINEARS = ("torch", "onednn")


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
    Copies every weight (the packed layout); the copies live as long as the list. Inference
    only: the packed op has no backward.
    """
    return [(m, _packed_forward(torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch),
                                m.bias, m.out_features))
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
            m.__dict__.pop("forward", None)
