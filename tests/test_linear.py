"""linear="onednn": oneDNN-packed linear layers against F.linear, in the layer and in pd.generate."""

import pytest
import torch

import proxdecode as pd
from proxdecode.linear import check_linear, pack_linears, packed_forwards

from conftest import assert_verbose_allclose

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")

# (dtype, atol, rtol): weights ~ N(0, 1/in), so outputs are O(1); another summation order only
TOLERANCES = [(torch.float32, 2e-5, 1e-5)]


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("in_f,out_f", [(17, 5), (64, 4099), (576, 1536)])
@pytest.mark.parametrize("rows", [1, 3, 8, 33])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear(dtype, atol, rtol, in_f, out_f, rows, bias):
    torch.manual_seed(in_f * rows + out_f)
    layer = torch.nn.Linear(in_f, out_f, bias=bias, dtype=dtype)
    with torch.no_grad():
        layer.weight.normal_(0, in_f ** -0.5)
    x = torch.randn(2, rows, in_f, dtype=dtype)  # [2, rows, in]: the 3-D input of a model's layer
    with torch.inference_mode():
        want = torch.nn.functional.linear(x, layer.weight, layer.bias)  # [2, rows, out]
        with packed_forwards(pack_linears(layer, rows)):
            got = layer(x)
    assert_verbose_allclose(got, want, atol, rtol, "packed linear")
    assert "forward" not in layer.__dict__, "the layer's own forward must be back after the block"


def test_only_plain_unhooked_linears_are_packed(tiny):
    model, _ = tiny
    own = model.lm_head.forward
    model.lm_head.forward = lambda x: own(x)  # as accelerate's offload hooks do
    try:
        layers = [m for m, _ in pack_linears(model, 2)]
        assert model.lm_head not in layers
        assert len(layers) == sum(type(m) is torch.nn.Linear for m in model.modules()) - 1
    finally:
        del model.lm_head.forward


def _first_divergence(a, b):
    diff = (a != b).nonzero()
    return int(diff[0]) if len(diff) else None


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_generate_follows_the_torch_path_up_to_near_ties(request, which, packed_calls):
    """Greedy with packed linears takes the torch path's tokens, and its logits agree to fp32
    rounding; the tokens may part only where the torch path's top two nearly tie."""
    model, tok = request.getfixturevalue(which)
    prompts = ["I like to eat", "Today is a", "The capital of France is", "Write a haiku about the sea:",
               "Once upon a time, in a land far away, there lived a"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=24, do_sample=False, output_scores=True, return_dict_in_generate=True)
    ref = pd.generate(model, **enc, **kw)  # F.linear: HF's exact tokens (test_engine)
    assert not packed_calls
    got = pd.generate(model, **enc, **kw, linear="onednn")
    assert packed_calls[id(model)] >= got.tokens.shape[1] * 2, "the packed forwards did not run"
    ref_scores, got_scores = torch.stack(ref.scores, 1), torch.stack(got.scores, 1)  # [B, T, V]
    parted = 0
    for b in range(len(prompts)):
        t = _first_divergence(got.tokens[b], ref.tokens[b])
        upto = got.tokens.shape[1] if t is None else t + 1
        assert_verbose_allclose(got_scores[b, :upto], ref_scores[b, :upto], 1e-3, 1e-4, f"row {b} logits")
        if t is not None:
            parted += 1
            top2 = ref_scores[b, t].topk(2).values
            assert float(top2[0] - top2[1]) < 2e-3, f"row {b} parted at step {t} without a near tie"
    assert parted <= 1, f"{parted} of {len(prompts)} rows parted: more near ties than fp32 rounding explains"
    assert all("forward" not in m.__dict__ for m in model.modules()), "a layer kept the packed forward"


def test_generate_with_packed_linears_steers_and_samples(tiny, packed_calls):
    model, tok = tiny
    enc = tok(["I like to eat", "Today is a"], return_tensors="pt", padding=True)
    rewards = pd.Rewards(tok, [pd.rewards.EndsWith(".")])
    kw = dict(max_new_tokens=8, do_sample=True, top_k=20, seed=3, rewards=rewards, steer=2.0)
    a, b = pd.generate(model, **enc, **kw), pd.generate(model, **enc, **kw, linear="onednn")
    assert a.tokens.shape[0] == b.tokens.shape[0] == 2
    assert packed_calls[id(model)] > 0, "the packed forwards did not run"
    assert_verbose_allclose(b.logprobs[:, :1], a.logprobs[:, :1], 1e-4, 1e-4, "first step's log-probs")


def test_bad_linear_choices_are_named():
    with pytest.raises(ValueError, match="linear must be one of torch, onednn"):
        check_linear("fast", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="float16"):
        check_linear("onednn", torch.nn.Linear(2, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match="no plain nn.Linear"):
        check_linear("onednn", torch.nn.Conv1d(2, 2, 1))


def test_bf16_is_packed_where_the_cpu_can_or_refused_by_name():
    layer = torch.nn.Linear(16, 16, dtype=torch.bfloat16)
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 1)
    except RuntimeError:
        with pytest.raises(ValueError, match="bfloat16"):
            check_linear("onednn", layer)
        return
    check_linear("onednn", layer)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    with torch.inference_mode(), packed_forwards(pack_linears(layer, 3)):
        got = layer(x)
    assert_verbose_allclose(got, torch.nn.functional.linear(x, layer.weight, layer.bias), 2e-2, 2e-2, "bf16")


@pytest.mark.parametrize("change", ["optimiser step", "param.data write"])
def test_packed_weights_follow_weight_changes_between_calls(change):
    """A training loop changes the weights between rollouts, through autograd (an optimiser
    step) or around it (``param.data``: EMA, adapter merges): the next packed rollout must see
    them. Each call packs afresh, so neither can leave it stale."""
    model, tok = pd.random_model("tiny", seed=2)  # its own copy: this test changes its weights
    enc = tok(["I like to eat", "Today is a"], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    before = pd.generate(model, **enc, **kw, linear="onednn")
    if change == "optimiser step":
        opt = torch.optim.SGD(model.parameters(), lr=5.0)
        model(**enc).logits.float().pow(2).mean().backward()
        opt.step()
    else:
        for p in model.parameters():
            p.data.mul_(-1.5)
    got = pd.generate(model, **enc, **kw, linear="onednn")
    want = pd.generate(model, **enc, **kw)
    assert not torch.allclose(before.scores[0], want.scores[0], atol=1e-3), "the change must move the logits"
    assert_verbose_allclose(got.scores[0], want.scores[0], 1e-3, 1e-4, f"logits after a {change}")
