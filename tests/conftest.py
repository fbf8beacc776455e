import contextlib
import os

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if not torch.cuda.is_available():  # Triton kernels run in its interpreter on CPU; this must
    os.environ.setdefault("TRITON_INTERPRET", "1")  # precede any import of triton

from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


@pytest.fixture(scope="session")
def real():
    """The default SmolLM2-135M-Instruct, fp32, and its tokenizer."""
    import proxdecode as pd

    return pd.load_model()


@pytest.fixture(scope="session")
def tiny():
    """A 2-layer random-weight Llama with the default tokenizer (fast)."""
    import proxdecode as pd

    return pd.random_model("tiny", seed=0)


def assert_verbose_allclose(actual, expected, atol, rtol, name="value"):
    """allclose that says where and by how much it failed."""
    actual, expected = torch.as_tensor(actual).float(), torch.as_tensor(expected).float()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    both_inf = torch.isinf(actual) & torch.isinf(expected) & (actual.sign() == expected.sign())
    diff = torch.where(both_inf, 0.0, (actual - expected).abs())
    bad = ~(diff <= atol + rtol * expected.abs().nan_to_num(0.0, 0.0, 0.0))
    if bad.any():
        idx = torch.nonzero(bad)[:5].tolist()
        worst = int(diff.nan_to_num(float("inf")).argmax())
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} mismatched (atol={atol}, rtol={rtol}); first at "
            f"{idx}; worst flat index {worst}: {actual.flatten()[worst].item()} vs "
            f"{expected.flatten()[worst].item()}")


@pytest.fixture
def packed_calls(monkeypatch):
    """Counts forwards that ran on packed weights, per model packed: proof the option reached them."""
    import proxdecode.linear as linear

    calls = {}
    pack = linear.pack_linears

    def counting_pack(model, batch):
        def counted(forward):
            def run(x):
                calls[id(model)] = calls.get(id(model), 0) + 1
                return forward(x)
            return run
        return [(m, counted(f)) for m, f in pack(model, batch)]

    monkeypatch.setattr("proxdecode.decoder.pack_linears", counting_pack)
    return calls


# What makes the host wait for an accelerator's queue, as seen at dispatch: a value read back
# (.item(), bool(), int()), an output whose shape depends on the data (nonzero, boolean-mask
# indexing, unique), an op whose CUDA code reads back (multinomial's check, allclose, histc;
# isin, whose sorting path for many test ids calls unique), or a tensor built from host data
# (torch.tensor / as_tensor of Python values: a blocking copy). Conservative in one way: a
# Python scalar written by indexing (x[i] = 1) also shows as a host tensor though CUDA turns
# it into a fill; step code writes fill_ instead, rather than the check telling them apart.
# On a CPU nothing waits, so a CPU test checks "no host sync inside a step" by these, plus the
# Tensor methods that copy to the host (.cpu(), .tolist(), .numpy(), printing). What it cannot
# see: a copy between devices (everything here is on the CPU), syncs of one op's own code
# not listed here, and Triton's autotuning (GPU only, first call per shape).
HOST_SYNC_OPS = {"aten._local_scalar_dense.default", "aten.equal.default", "aten.nonzero.default",
                 "aten.masked_select.default", "aten.lift_fresh.default", "aten._unique2.default",
                 "aten.unique_dim.default", "aten.unique_consecutive.default", "aten.bincount.default",
                 "aten.multinomial.default", "aten.allclose.default", "aten.histc.default"}
HOST_COPY_METHODS = ("cpu", "tolist", "numpy", "__repr__", "__format__")


def _caller() -> str:
    """The innermost line of proxdecode (or kernels/) on the stack."""
    import traceback

    ours = [f for f in traceback.extract_stack() if "/proxdecode/" in f.filename or "/kernels/" in f.filename]
    return f"{ours[-1].filename.split('/')[-1]}:{ours[-1].lineno} {ours[-1].line}" if ours else "?"


def _syncs(func, args, kwargs) -> str | None:
    """Why ``func(*args, **kwargs)`` would sync an accelerator, or None."""
    name = str(func)
    if name in HOST_SYNC_OPS or name.startswith("aten.isin."):
        return name
    if name in ("aten.index.Tensor", "aten.index_put_.default", "aten.index_put.default") and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None):
        return f"{name} (mask index)"
    if name == "aten.repeat_interleave.Tensor" and (kwargs or {}).get("output_size") is None:
        return f"{name} (no output_size)"
    return None


@contextlib.contextmanager
def _record_host_syncs(found: list):
    """Within the block, append ``"<what> at <calling line>"`` to ``found`` for each op or
    Tensor method that would sync an accelerator."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostSyncs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            why = _syncs(func, args, kwargs)
            if why is not None:
                found.append(f"{why} at {_caller()}")
            return func(*args, **(kwargs or {}))

    def watched(method):
        original = getattr(torch.Tensor, method)

        def call(self, *a, **k):
            found.append(f"Tensor.{method} at {_caller()}")
            return original(self, *a, **k)
        return call

    own = {m: torch.Tensor.__dict__[m] for m in HOST_COPY_METHODS if m in torch.Tensor.__dict__}
    for m in HOST_COPY_METHODS:
        setattr(torch.Tensor, m, watched(m))
    try:
        with HostSyncs():
            yield
    finally:
        for m in HOST_COPY_METHODS:  # as before: torch.Tensor's own, or inherited again
            if m in own:
                setattr(torch.Tensor, m, own[m])
            else:
                delattr(torch.Tensor, m)


@pytest.fixture
def host_syncs():
    """``host_syncs(fn)`` wraps ``fn`` so every call records the host syncs it would make on an
    accelerator; ``host_syncs.found()`` lists them (what, and the calling line)."""
    found, calls = [], []

    def wrap(fn):
        def run(*args, **kwargs):
            calls.append(fn)
            with _record_host_syncs(found):
                return fn(*args, **kwargs)
        return run

    wrap.found = lambda: list(found)
    wrap.calls = lambda: len(calls)
    return wrap
