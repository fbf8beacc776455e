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
