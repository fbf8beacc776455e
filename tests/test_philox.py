"""Philox4x32-10 against the Random123 known-answer vectors, Triton's ``tl.rand``, and the
uniform mapping."""

import pytest
import torch

from proxdecode import philox


def _t(x):
    return torch.tensor([x], dtype=torch.int64)


def test_known_answers():
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for ctr, key, want in cases:
        got = philox.philox4x32(tuple(map(_t, ctr)), tuple(map(_t, key)))
        assert [int(g) for g in got] == list(want)


def test_uniform_is_a_pure_function_of_seed_step_index():
    seeds = torch.tensor([0, 1, 2**62 + 12345], dtype=torch.long)
    idx = torch.arange(4099).expand(3, -1)
    u = philox.uniform(seeds, 7, idx)
    assert u.dtype == torch.float32 and u.shape == (3, 4099)
    assert (u >= 0).all() and (u < 1).all()
    # same (seed, step, index) -> same number, whatever else is in the call
    alone = philox.uniform(seeds[2:], 7, idx[2:, 100:110])
    assert torch.equal(alone, u[2:, 100:110])
    assert not torch.equal(philox.uniform(seeds, 8, idx), u)
    # roughly uniform: mean and a 10-bin histogram
    assert abs(u.mean().item() - 0.5) < 0.01
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.01


def test_row_seed_mixes():
    seeds = {philox.row_seed(s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)


def test_bit_exact_with_triton_tl_rand():
    triton = pytest.importorskip("triton")
    tl = pytest.importorskip("triton.language")

    @triton.jit
    def rand_rows(out_ptr, seeds_ptr, step, V, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        seed = tl.load(seeds_ptr + row)
        u = tl.rand(seed, offs.to(tl.int64) + (step.to(tl.int64) << 32))  # counter (v, step)
        tl.store(out_ptr + row * V + offs, u, mask=offs < V)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    seeds = torch.tensor([0, 1, 12345, 2**62 + 7], dtype=torch.int64, device=device)
    V = 100
    for step in (0, 3, 2**20):
        out = torch.empty(4, V, device=device)
        rand_rows[(4,)](out, seeds, step, V, BLOCK=128)
        want = philox.uniform(seeds, step, torch.arange(V, device=device).expand(4, V))
        assert torch.equal(out, want), f"step {step}: max diff {(out - want).abs().max().item()}"
