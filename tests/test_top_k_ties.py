"""Top-k ties as HF keeps them, in every implementation of the step.

HF's ``TopKLogitsWarper`` keeps every logit ``>=`` the k-th largest, so a tie at the k-th
value makes the candidate set larger than k (common with bf16 logits, whose 8 significant
bits put several tokens on one value near the 50th). The step keeps that same set while the
tie has at most ``TIE_ROOM`` members past the k-th, and fills the room with tied tokens past
that (the lowest ids in the C++ and Triton steps; ``torch.topk``'s choice in the reference).

The oracle is HF's own warpers, on rows built around the k-th value, on realistic bf16 rows
(with top-p after top-k too: there the multiset of kept values must be HF's, since which of
several tied ids a top-p cut keeps is the order's choice), on the sampling frequencies, and
end to end: ``pd.generate``'s first scores against ``model.generate``'s on a bf16 model.
"""

import copy

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import proxdecode as pd
from proxdecode.step import TIE_ROOM, sample_step

V = 1000
K = 5


def _steps():
    """(name, step function) for every implementation this machine can run."""
    steps = [("torch", sample_step)]
    from proxdecode import cpp

    if cpp.available():
        steps.append(("cpp", cpp.sample_step_cpp))
    try:
        from proxdecode.kernels.sample_step import sample_step_triton
    except ImportError:
        pass
    else:
        steps.append(("triton", sample_step_triton))
    return steps


STEPS = dict(_steps())
IMPLS = [pytest.param(name, id=name) for name in STEPS]


def hf_kept(z, top_k, temperature=1.0, top_p=1.0):
    """HF's candidate set: where its warpers leave a finite score.  [B, V] bool"""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return torch.isfinite(warpers(None, z.float().clone()))


def pd_kept(name, z, **kw):
    out = STEPS[name](z, seeds=torch.arange(z.shape[0]), step=0, return_scores=True, **kw)
    return torch.isfinite(out.scores), out


def tie_rows():
    """Four rows whose k-th value (k = 5) is tied: 4 values above a tie at 5.0 of 3 tokens
    (HF's set is 7 tokens), of ``1 + TIE_ROOM`` (exactly the room), of ``2 + TIE_ROOM`` (one
    past it), and a row of equal logits (HF keeps all V). Ids are shuffled, values below
    the tie are distinct."""
    g = torch.Generator().manual_seed(0)
    z = torch.rand(4, V, generator=g) * 4  # [4, V] in [0, 4): under the tie
    for row, n_tie in enumerate((3, 1 + TIE_ROOM, 2 + TIE_ROOM)):
        ids = torch.randperm(V, generator=g)
        z[row, ids[:K - 1]] = torch.tensor([13.0, 12.0, 11.0, 10.0])
        z[row, ids[K - 1:K - 1 + n_tie]] = 5.0
    z[3] = 1.0
    return z


@pytest.mark.parametrize("name", IMPLS)
def test_a_tie_at_the_kth_value_is_kept_whole_as_in_hf(name):
    z = tie_rows()
    want = hf_kept(z, K)  # [4, V]
    got, out = pd_kept(name, z, top_k=K)
    assert want[:2].sum(-1).tolist() == [K + 2, K + TIE_ROOM]
    assert torch.equal(got[:2], want[:2]), "the tie fits the room: HF's set"
    # past the room: k + room tokens of HF's set, every value above the tie among them
    assert got[2:].sum(-1).tolist() == [K + TIE_ROOM] * 2
    assert not (got[2:] & ~want[2:]).any()
    assert (got[2][z[2] > 5.0]).all()
    if name != "torch":  # the kernels fill the room with the lowest ids of the tie
        tied = torch.nonzero(z[2] == 5.0)[:, 0][: TIE_ROOM + 1]
        assert torch.equal(torch.nonzero(got[2] & (z[2] == 5.0))[:, 0], tied)
        assert torch.nonzero(got[3])[:, 0].tolist() == list(range(K + TIE_ROOM))
    assert got.gather(1, out.tokens[:, None]).all(), "a token outside the set"


@pytest.mark.parametrize("name", IMPLS)
def test_greedy_and_top_k_1_on_tied_maxima(name):
    z = torch.full((1, V), -1.0)
    z[0, [640, 7, 500]] = 2.0  # three tied maxima
    for kw in (dict(top_k=1), dict(top_k=2), dict(top_k=1, do_sample=False)):
        got, out = pd_kept(name, z, **kw)
        assert torch.equal(got, hf_kept(z, kw["top_k"]))
        assert out.tokens.tolist() == [7] or kw.get("do_sample", True)  # greedy: the lowest id


@pytest.mark.parametrize("name", IMPLS)
@pytest.mark.parametrize("top_k", [4, 0])
def test_top_p_cuts_a_tie_where_hf_does(name, top_k):
    """top_p = 0.6 through 16 tokens tied at 2.0 under 3.0 and 2.5 (all in the top 4 with
    their ties): HF keeps 8 of the tie. The Triton tile overflows here: its general path."""
    z = torch.full((1, V), -30.0)
    z[0, :2] = torch.tensor([3.0, 2.5])
    z[0, 10:26] = 2.0
    want = hf_kept(z, top_k, top_p=0.6)
    got, out = pd_kept(name, z, top_k=top_k, top_p=0.6)
    assert int(want.sum()) == int(got.sum()) == 10 and got[0, :2].all()
    if name != "torch":  # ranked by id, the first 8 of the tie
        assert torch.nonzero(got[0])[:, 0].tolist() == [0, 1, *range(10, 18)]
    assert got[0, out.tokens[0]]


@pytest.mark.parametrize("name", [p for p in IMPLS if p.id != "triton"])  # the interpreter: too slow for 6000 rows
def test_tied_maxima_are_sampled_evenly_as_hfs_probabilities(name):
    """top_k=1 over three tied maxima: HF's softmax gives each 1/3; so must the frequencies."""
    n = 6000
    z = torch.full((n, V), -1.0)
    z[:, [640, 7, 500]] = 2.0
    probs = torch.softmax(TopKLogitsWarper(1)(None, z[:1].clone()), -1)[0]  # HF: [V]
    out = STEPS[name](z, seeds=torch.arange(n) * 7919, step=3, top_k=1)
    freq = torch.bincount(out.tokens, minlength=V).float() / n
    assert set(torch.nonzero(freq)[:, 0].tolist()) == {7, 500, 640}
    assert (freq - probs).abs().max() < 0.03  # 4.6 standard errors at n = 6000


def bf16_rows(B, V, seed):
    """Gaussian bf16 logits (std 3): near the 50th largest, ties of a few tokens are usual."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, V, generator=g) * 3).to(torch.bfloat16)


@pytest.mark.parametrize("name", IMPLS)
@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_realistic_bf16_rows_keep_hfs_set(name, top_p):
    Vb = 4099 if name == "triton" else 49152
    z = bf16_rows(8, Vb, seed=11)
    want = hf_kept(z, 50, temperature=0.8, top_p=top_p)
    got, _ = pd_kept(name, z, top_k=50, temperature=0.8, top_p=top_p)
    if top_p == 1.0:
        assert (want.sum(-1) > 50).sum() >= 2, "the rows should tie at the 50th value"
        assert torch.equal(got, want)
    else:  # the same values kept; among equal values the ids are the order's choice
        for r in range(z.shape[0]):
            assert torch.equal(z[r][got[r]].float().sort().values, z[r][want[r]].float().sort().values)


@pytest.fixture(scope="module")
def real_bf16(real):
    model, tok = real
    return copy.deepcopy(model).to(torch.bfloat16), tok


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_first_scores_are_hfs_on_a_bf16_model(real_bf16, backend):
    """``output_scores`` of the first step (the same prompt logits on both sides): HF's set."""
    model, tok = real_bf16  # load_model's tokenizer pads on the left
    enc = tok(["The capital of France is", "My favourite fruit is the", "Once upon a time, a"],
              return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=1, do_sample=True, top_k=50, temperature=0.8, return_dict_in_generate=True,
              output_scores=True, pad_token_id=tok.eos_token_id)
    want = torch.isfinite(model.generate(**enc, **kw).scores[0])
    got = torch.isfinite(pd.generate(model, **enc, backend=backend, seed=0, **kw).scores[0])
    assert want.sum(-1).max() <= 50 + TIE_ROOM and want.sum(-1).max() > 50, "a prompt should tie at the 50th"
    assert torch.equal(got, want), f"set sizes: pd {got.sum(-1).tolist()}, HF {want.sum(-1).tolist()}"


def test_every_implementation_holds_the_same_tie_room():
    """The C++ and CUDA sources spell TIE_ROOM as constants of their own (the CUDA step cannot
    run here): they must equal the reference's."""
    import re
    from pathlib import Path

    csrc = Path(__file__).resolve().parents[1] / "csrc"
    for name in ("sample_step_cpu_candidates.h", "sample_step_cuda.cu"):
        found = re.findall(r"kTieRoom = (\d+);", (csrc / name).read_text())
        assert found == [str(TIE_ROOM)], (name, found)
