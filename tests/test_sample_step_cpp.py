"""The C++ step (``csrc/sample_step_cpu.cpp`` via ``proxdecode.cpp``) against the torch reference.

The reference, ``proxdecode.step.sample_step``, leaves two things to chance that the C++
step fixes, so most comparisons are against an *oracle*: the reference itself, run with

* stable sorts (``torch.topk``/``torch.sort`` replaced by a stable descending sort): the
  C++ step ranks tied values by lower token id, where CPU ``torch.topk`` and the non-stable
  ``torch.sort`` pick any order, so on a tie at the k-th slot or at the top-p cut (common
  with bf16 logits) they may keep another, equally valid id;
* a float64 softmax: the reference's top-p without top-k (and its log-softmax over the whole
  vocabulary) sums 49,152 exps in float32 lanes, which comes out ~2e-5 short (several 1e-5
  on rows of tens of thousands of tied logits, against float64); the C++ step
  sums in double. (After top-k, the softmax runs over k values and the C++ step reproduces
  torch's float32 arithmetic bit for bit: ``test_top_k_paths_bit_exact_with_plain_reference``.)

Against the oracle we require identical tokens and validity on the same seeds, identical
candidate sets and scores (``return_scores``), and log-probs within the tolerance of the
dtype table below. Against the plain reference we check the bit-exact top-k paths and
bound the top-p deviation to the tokens whose cumulative mass lies within 1e-4 of top_p.
"""

import math
import types

import pytest
import torch

from conftest import assert_verbose_allclose
from proxdecode import philox
from proxdecode import step as reference
from proxdecode.step import sample_step

V_REAL = 49152

# (dtype, atol, rtol) for logprobs and policy_logprobs. Both steps compute in float32 from the
# same float32 view of the logits (bf16/fp16 convert exactly), so the tolerance does not depend
# on the dtype: it is set by the reference's float32 sums over the vocabulary (~2e-5 absolute
# at V = 49,152, more on rows of many ties, see above) and by fp32 rounding.
DTYPES = [
    (torch.float32, 5e-5, 1e-5),
    (torch.bfloat16, 5e-5, 1e-5),
    (torch.float16, 5e-5, 1e-5),
]

# Settings; "rows" marks a per-row [B] tensor, True a tensor built from the inputs.
TOP_K_SETTINGS = {
    "k50-p0.9-T0.8": dict(temperature=0.8, top_k=50, top_p=0.9),
    "k50": dict(top_k=50),
    "k20-stack": dict(top_k=20, top_p=0.95, min_p=0.05, repetition_penalty=1.3, seen=True,
                      suppress=True, reward=True, steer=1.5),
}
NO_TOP_K_SETTINGS = {
    "p0.9": dict(top_p=0.9),
    "min_p-T1.3": dict(min_p=0.1, temperature=1.3),
    "plain": dict(),
    "rows-stack": dict(temperature="rows", top_p="rows", min_p="rows", repetition_penalty=0.8,
                       seen=True, reward=True, steer=-2.0),
}
SMALL_ONLY_SETTINGS = {
    "k=V-1,p0.5": dict(top_k="V-1", top_p=0.5),  # a large k: selection, not a heap
    "k>=V,p1,min_p1": dict(top_k="V+5", top_p=1.0, min_p=1.0),  # top-k/top-p off, argmax set
    "greedy-steer": dict(top_k=40, reward=True, steer=3.0),
}


@pytest.fixture(scope="module")
def cpp():
    from proxdecode import cpp

    if not cpp.available():
        pytest.skip("the C++ step could not be built on this machine (see the warning)")
    return cpp


class _StableTorch(types.ModuleType):
    """``torch`` with stable sorts and a float64 softmax, for the reference (see module doc)."""

    def __init__(self):
        super().__init__("torch_oracle")
        self.sort = lambda x, dim=-1, descending=False, stable=None: torch.sort(
            x, dim=dim, descending=descending, stable=True)
        self.softmax = lambda x, dim: torch.softmax(x.double(), dim).float()

    def topk(self, x, k, dim=-1):
        v, i = torch.sort(x, dim=dim, descending=True, stable=True)
        return v[..., :k], i[..., :k]

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture
def oracle(monkeypatch):
    monkeypatch.setattr(reference, "torch", _StableTorch())
    return reference.sample_step


def make_inputs(B, V, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, V, generator=g) * 4).to(dtype)
    return dict(
        logits=logits,
        seeds=torch.randint(0, 2**62, (B,), generator=g),
        seen=torch.rand(B, V, generator=g) < 0.02,
        reward=torch.randn(B, V, generator=g),
        suppress=torch.tensor([0, 3, V - 1]),
        rows=dict(temperature=torch.rand(B, generator=g) + 0.4,
                  top_p=torch.rand(B, generator=g) * 0.8 + 0.15,
                  min_p=torch.rand(B, generator=g) * 0.2),
    )


def materialise(setting, inputs, V):
    kw = {}
    for key, value in setting.items():
        if value is True:
            value = inputs[key]
        elif value == "rows":
            value = inputs["rows"][key]
        elif value == "V-1":
            value = V - 1
        elif value == "V+5":
            value = V + 5
        kw[key] = value
    return kw


def assert_same_step(got, want, atol, rtol, scores=True):
    assert torch.equal(got.valid, want.valid), f"valid {got.valid.tolist()} != {want.valid.tolist()}"
    assert torch.equal(got.tokens, want.tokens), f"tokens {got.tokens.tolist()} != {want.tokens.tolist()}"
    for name in ("logprobs", "policy_logprobs"):  # NaN where the reference has NaN (nothing to sample)
        a, b = getattr(got, name), getattr(want, name)
        assert torch.equal(a.isnan(), b.isnan()), f"{name}: NaN at {a.isnan().tolist()} vs {b.isnan().tolist()}"
        assert_verbose_allclose(a.nan_to_num(0.0, posinf=torch.inf, neginf=-torch.inf),
                                b.nan_to_num(0.0, posinf=torch.inf, neginf=-torch.inf), atol, rtol, name=name)
    assert got.tokens.dtype == torch.int64 and got.logprobs.dtype == torch.float32
    assert got.valid.dtype == torch.bool
    if scores:
        a, b = got.scores, want.scores
        assert a.shape == b.shape and a.dtype == torch.float32
        assert torch.equal(torch.isneginf(a), torch.isneginf(b)), \
            f"candidate sets differ at {torch.nonzero(torch.isneginf(a) != torch.isneginf(b))[:5].tolist()}"
        assert torch.equal(a[~torch.isneginf(a)], b[~torch.isneginf(b)]), "scores differ inside the set"


def run_both(cpp, oracle, B, V, dtype, setting, do_sample, seed):
    inputs = make_inputs(B, V, dtype, seed)
    kw = materialise(setting, inputs, V)
    common = dict(seeds=inputs["seeds"], step=seed % 1000 + 3, do_sample=do_sample, return_scores=True, **kw)
    before = inputs["logits"].clone()
    got = cpp.sample_step_cpp(inputs["logits"], **common)
    assert torch.equal(inputs["logits"], before), "logits were modified"
    want = oracle(inputs["logits"], **common)
    return got, want


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES[:2], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(TOP_K_SETTINGS))
@pytest.mark.parametrize("B", [1, 3, 8, 32])
@pytest.mark.parametrize("do_sample", [True, False])
def test_real_shapes_top_k(cpp, oracle, dtype, atol, rtol, name, B, do_sample):
    got, want = run_both(cpp, oracle, B, V_REAL, dtype, TOP_K_SETTINGS[name], do_sample, seed=B)
    assert_same_step(got, want, atol, rtol)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES[:2], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(NO_TOP_K_SETTINGS))
@pytest.mark.parametrize("B", [1, 3])  # the reference draws for all 49,152 ids here: slow
@pytest.mark.parametrize("do_sample", [True, False])
def test_real_shapes_without_top_k(cpp, oracle, dtype, atol, rtol, name, B, do_sample):
    got, want = run_both(cpp, oracle, B, V_REAL, dtype, NO_TOP_K_SETTINGS[name], do_sample, seed=B + 100)
    assert_same_step(got, want, atol, rtol)


ALL_SETTINGS = {**TOP_K_SETTINGS, **NO_TOP_K_SETTINGS, **SMALL_ONLY_SETTINGS}


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", list(ALL_SETTINGS))
@pytest.mark.parametrize("V", [17, 1000, 4099])
@pytest.mark.parametrize("do_sample", [True, False])
def test_small_odd_shapes(cpp, oracle, dtype, atol, rtol, name, V, do_sample):
    got, want = run_both(cpp, oracle, 5, V, dtype, ALL_SETTINGS[name], do_sample, seed=V)
    assert_same_step(got, want, atol, rtol)


def test_philox_bit_exact(cpp):
    ext = cpp._load("cpu")
    g = torch.Generator().manual_seed(0)
    seeds = torch.cat([torch.tensor([0, 1, 2**32 - 1, 2**32, 2**63 - 1]),
                       torch.randint(0, 2**63 - 1, (11,), generator=g)])
    index = torch.randint(0, 2**31 - 1, (16, 257), generator=g)
    for step in (0, 1, 77, 2**31 + 5, 2**32 - 1):
        assert torch.equal(ext.philox_uniform(seeds, step, index), philox.uniform(seeds, step, index))


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="torch's softmax summation order is reproduced for its AVX2/AVX512 kernels")
@pytest.mark.parametrize("name", list(TOP_K_SETTINGS))
@pytest.mark.parametrize("do_sample", [True, False])
def test_top_k_paths_bit_exact_with_plain_reference(cpp, name, do_sample):
    """fp32 logits have no ties: the plain reference's candidate sets and scores, bit for bit."""
    inputs = make_inputs(32, V_REAL, torch.float32, seed=7)
    kw = materialise(TOP_K_SETTINGS[name], inputs, V_REAL)
    common = dict(seeds=inputs["seeds"], step=11, do_sample=do_sample, return_scores=True, **kw)
    got = cpp.sample_step_cpp(inputs["logits"], **common)
    want = sample_step(inputs["logits"], **common)
    assert_same_step(got, want, 1e-5, 1e-5)


def test_top_p_alone_differs_from_plain_reference_only_at_the_margin(cpp):
    """Where the reference's float32 softmax denominator moves the top-p cut, and only there."""
    B, p = 8, 0.9
    inputs = make_inputs(B, V_REAL, torch.float32, seed=3)
    z = inputs["logits"]
    got = cpp.sample_step_cpp(z, seeds=inputs["seeds"], step=0, top_p=p, return_scores=True)
    want = sample_step(z, seeds=inputs["seeds"], step=0, top_p=p, return_scores=True)
    vals, idx = torch.sort(z, dim=-1, descending=True, stable=True)
    probs = torch.softmax(vals, -1)
    above = torch.cumsum(probs, -1) - probs  # the reference's mass ranked above each token
    near = torch.zeros_like(z, dtype=torch.bool).scatter(1, idx, (above - p).abs() < 1e-4)
    differ = torch.isneginf(got.scores) != torch.isneginf(want.scores)
    assert not (differ & ~near).any(), "the candidate sets differ away from the top-p cut"
    same_rows = ~differ.any(-1)
    assert torch.equal(got.tokens[same_rows], want.tokens[same_rows])


def test_one_finite_logit_ties_and_argmax_sets(cpp):
    V = 1000
    logits = torch.full((4, V), float("-inf"))
    logits[0, 123] = 0.0  # one finite logit: always that token, log-prob 0
    logits[1, [7, 500, 640]] = 5.0  # a three-way tie at the top
    logits[2, 999] = 1e4
    logits[3] = 1.0  # all tied
    seeds = torch.tensor([1, 2, 3, 4])
    for step in range(20):
        for kw in (dict(), dict(top_k=2), dict(top_p=0.5), dict(min_p=1.0), dict(top_k=V),
                   dict(top_k=V + 3, top_p=1.0)):
            out = cpp.sample_step_cpp(logits, seeds=seeds, step=step, **kw)
            assert out.valid.all()
            assert out.tokens[0] == 123 and out.logprobs[0] == 0
            assert out.tokens[1] in (7, 500, 640) and out.tokens[2] == 999
    greedy = cpp.sample_step_cpp(logits, seeds=seeds, step=0, do_sample=False)
    assert greedy.tokens.tolist() == [123, 7, 999, 0]  # the lowest id among ties
    assert math.isclose(greedy.logprobs[1].item(), math.log(1 / 3), rel_tol=1e-6)
    # top-k through a tie keeps the whole tie, as HF: k=2 of {7, 500, 640} -> all three
    two = cpp.sample_step_cpp(logits[1:2].expand(3000, V), seeds=torch.arange(3000), step=0, top_k=2)
    assert set(two.tokens.tolist()) == {7, 500, 640}
    # top-p inside a tie group: 1/3 + 1/3 ranked above the third, so p=0.5 keeps two
    half = cpp.sample_step_cpp(logits[1:2].expand(3000, V), seeds=torch.arange(3000), step=0, top_p=0.5)
    assert set(half.tokens.tolist()) == {7, 500}
    # min_p = 1 keeps exactly the maxima
    mp = cpp.sample_step_cpp(logits[3:4], seeds=seeds[:1], step=0, min_p=1.0, return_scores=True)
    assert torch.isfinite(mp.scores).all()


def test_non_finite_rows_are_flagged(cpp, oracle):
    V = 50
    logits = torch.randn(6, V)
    logits[1, 3] = float("nan")
    logits[2] = float("-inf")
    logits[3, 10] = float("inf")
    logits[4, :] = float("-inf")
    logits[4, 7] = 1.0  # its only finite logit is suppressed below: nothing left to sample
    suppress = torch.tensor([7])
    for kw in (dict(top_k=10), dict(top_p=0.8), dict(), dict(min_p=0.2)):
        for do_sample in (True, False):
            common = dict(seeds=torch.arange(6), step=0, do_sample=do_sample, suppress=suppress,
                          return_scores=True, **kw)
            got = cpp.sample_step_cpp(logits, **common)
            assert got.valid.tolist() == [True, False, False, False, False, True]
            assert_same_step(got, oracle(logits, **common), 1e-5, 1e-5)


def test_per_row_parameters_equal_row_by_row_scalars(cpp):
    g = torch.Generator().manual_seed(7)
    B, V = 4, 700
    logits = torch.randn(B, V, generator=g) * 2
    temps, top_ps, min_ps = [0.5, 1.0, 1.5, 0.9], [0.3, 0.9, 1.0, 0.75], [0.0, 0.05, 0.2, 0.0]
    seeds = torch.arange(B) + 100
    batched = cpp.sample_step_cpp(logits, seeds=seeds, step=2, top_k=60, temperature=torch.tensor(temps),
                                  top_p=torch.tensor(top_ps), min_p=torch.tensor(min_ps), return_scores=True)
    for b in range(B):
        one = cpp.sample_step_cpp(logits[b:b + 1], seeds=seeds[b:b + 1], step=2, top_k=60, temperature=temps[b],
                                  top_p=top_ps[b], min_p=min_ps[b], return_scores=True)
        assert one.tokens.item() == batched.tokens[b].item()
        assert torch.equal(one.scores[0], batched.scores[b])


def test_interface(cpp):
    logits = torch.randn(3, 2 * 333)[:, ::2]  # non-contiguous
    out = cpp.sample_step_cpp(logits, seeds=torch.arange(3), step=0, top_k=5)
    assert out.scores is None and out.tokens.shape == (3,)
    ref = sample_step(logits, seeds=torch.arange(3), step=0, top_k=5)
    assert torch.equal(out.tokens, ref.tokens)
    assert reference.select_step("cpp", "cpu") is cpp.sample_step_cpp
    with pytest.raises(RuntimeError, match="suppress id"):
        cpp.sample_step_cpp(logits, seeds=torch.arange(3), step=0, suppress=torch.tensor([333]))


def test_fallback_when_the_extension_cannot_be_built(cpp, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert "no C++ compiler" in cpp._why_unbuildable()
    monkeypatch.setitem(cpp._loaded, "cpu", None)  # as after a failed build (and its warning)
    assert not cpp.available()
    assert reference._resolve("auto", "cpu") is sample_step
    with pytest.raises(ValueError, match="could not be built"):
        reference._resolve("cpp", "cpu")
    with pytest.raises(RuntimeError, match="not available"):
        cpp.sample_step_cpp(torch.zeros(1, 4), seeds=torch.zeros(1, dtype=torch.long), step=0)


def test_each_build_variant_keeps_its_own_flags(cpp, monkeypatch, tmp_path):
    """torch's ``load`` appends its own flags to the lists it is given. A variant that fails
    must not leak them into the next one's flags and name, or the next process (which skips
    the cached failure) would name, and build, that variant again."""
    import torch.utils.cpp_extension as cpp_extension

    from proxdecode import models

    monkeypatch.setattr(cpp, "_OMP", list(cpp._OMP))  # a regression must not leak into later tests
    monkeypatch.setattr(cpp, "_BASE_FLAGS", list(cpp._BASE_FLAGS))
    clean = cpp._spec("cpu")
    seen = []

    def failing_load(name, sources, build_directory, verbose, **flags):
        seen.append((name, {k: list(v) for k, v in flags.items()}))
        for v in flags.values():
            v.append("-ltorch_as_load_does")
        raise RuntimeError("error: unrecognized command-line option '-march=native'")  # flag trouble

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    monkeypatch.setattr(models, "cache_dir", lambda: tmp_path)
    with pytest.raises(RuntimeError, match="unrecognized command-line option"):
        cpp._build("cpu")
    assert cpp._spec("cpu") == clean
    assert [flags for _, flags in seen] == [kw for _, kw, _ in clean[1]], "every variant, each with its own flags"
    assert len({name for name, _ in seen}) == len(seen)
