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


# What makes the host wait for an accelerator's queue: reading a value back (.item(), bool(),
# int()), an output whose shape depends on the data (nonzero, boolean-mask indexing, unique),
# or a tensor built from host data (torch.tensor / as_tensor of Python values: a blocking
# copy). On a CPU nothing waits, so a CPU test checks "no host sync inside a step" by these.
HOST_SYNC_OPS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.equal.default",
                 "aten.nonzero.default", "aten.masked_select.default", "aten.lift_fresh.default",
                 "aten._unique2.default", "aten.unique_dim.default", "aten.unique_consecutive.default",
                 "aten.repeat_interleave.Tensor", "aten.bincount.default"}


def _host_sync_mode():
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    class HostSyncs(TorchDispatchMode):
        """Records each op run inside it that would sync an accelerator, with the line of
        proxdecode (or kernels/) that called it."""

        def __init__(self):
            super().__init__()
            self.found = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            bool_index = name in ("aten.index.Tensor", "aten.index_put_.default", "aten.index_put.default") \
                and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
            if name in HOST_SYNC_OPS or bool_index or (name == "aten.repeat_interleave.self_Tensor"
                                                      and (kwargs or {}).get("output_size") is None):
                ours = [f for f in traceback.extract_stack()
                        if "/proxdecode/" in f.filename or "/kernels/" in f.filename]
                where = f"{ours[-1].filename.split('/')[-1]}:{ours[-1].lineno} {ours[-1].line}" if ours else "?"
                self.found.append(f"{name}{' (bool index)' if bool_index else ''} at {where}")
            return func(*args, **(kwargs or {}))
    return HostSyncs()


@pytest.fixture
def host_syncs():
    """``host_syncs(fn)`` wraps ``fn`` so every call records the host syncs it would make on an
    accelerator; the fixture's ``.found`` lists them (op and calling line)."""
    modes = []

    def wrap(fn):
        def run(*args, **kwargs):
            mode = _host_sync_mode()
            with mode:
                try:
                    return fn(*args, **kwargs)
                finally:
                    modes.append(mode)
        return run

    wrap.found = lambda: [f for m in modes for f in m.found]
    wrap.calls = lambda: len(modes)
    return wrap
