"""pytest-benchmark: one sampling step at V = 49,152 (the default model's vocabulary).

HF's ``LogitsProcessorList`` (temperature, top-k, top-p) + softmax + ``torch.multinomial``
against ``pd.sample_step`` (torch reference, eager and under ``torch.compile``) and the C++ step (``proxdecode.cpp``,
``csrc/sample_step_cpu.cpp``) on the same logits and settings, per batch size. HF's top-p
sorts the whole row; the reference's top-p works on the top-k list only; the C++ step makes
two passes over each row (scaling, then the log-sum-exp for the policy log-prob), a heap
scan for the top k, and sorts only those k values.

    make bench-step
"""

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from proxdecode import cpp, sample_step

V = 49152


def _logits(B):
    return torch.randn(B, V, generator=torch.Generator().manual_seed(B)) * 4


@pytest.mark.parametrize("B", [1, 8, 32, 128])
def test_step_hf(benchmark, B):
    procs = LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKLogitsWarper(50), TopPLogitsWarper(0.9)])
    z = _logits(B)
    benchmark.group = f"step B={B}"
    benchmark(lambda: torch.multinomial(torch.softmax(procs(None, z), -1), 1))


@pytest.mark.parametrize("B", [1, 8, 32, 128])
def test_step_torch_reference(benchmark, B):
    z, seeds = _logits(B), torch.arange(B)
    benchmark.group = f"step B={B}"
    benchmark(lambda: sample_step(z, seeds=seeds, step=0, temperature=0.8, top_k=50, top_p=0.9))


@pytest.mark.parametrize("B", [1, 8, 32, 128])
def test_step_torch_compiled(benchmark, B):
    """The torch reference under ``torch.compile`` (what ``generate(compile=True)`` runs inside
    its compiled step, there fused with the rewards); compiled once per shape before timing."""
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("inductor needs a C++ compiler")
    step = torch.compile(sample_step, fullgraph=True, dynamic=False)
    z, seeds, t = _logits(B), torch.arange(B), torch.zeros((), dtype=torch.long)
    step(z, seeds=seeds, step=t, temperature=0.8, top_k=50, top_p=0.9)
    benchmark.group = f"step B={B}"
    benchmark(lambda: step(z, seeds=seeds, step=t, temperature=0.8, top_k=50, top_p=0.9))


@pytest.mark.parametrize("B", [1, 8, 32, 128])
def test_step_cpp(benchmark, B):
    if not cpp.available():
        pytest.skip("the C++ step could not be built here")
    z, seeds = _logits(B), torch.arange(B)
    benchmark.group = f"step B={B}"
    benchmark(lambda: cpp.sample_step_cpp(z, seeds=seeds, step=0, temperature=0.8, top_k=50, top_p=0.9))
