"""Counter-based random numbers: Philox4x32-10, bit-exact with Triton's ``tl.rand``.

Why a counter-based generator: a row's draw at step ``t`` for vocabulary entry ``v`` is a
pure function of ``(row seed, t, v)``. Nothing is consumed from a shared stream, so a row
samples the same tokens alone or inside any batch, and a Triton or C++ kernel reproduces
the reference's draws exactly by evaluating the same function at the same counters
(Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).

Layout (the one ``tl.rand(seed, offset)`` uses with a 64-bit offset):
key = (seed & 0xffffffff, seed >> 32), counter = (v, t, 0, 0); the first output word is
mapped to [0, 1) as Triton's ``uint_to_uniform_float`` does.

torch has no unsigned 32-bit multiply-high, so words live in int64 and the 32x32 products
are split into 16-bit halves; every intermediate stays below 2**49.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_MUL_A = 0xD2511F53
_MUL_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUNDS = 10


def _mulhilo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of ``a * b`` for ``a`` in [0, 2**32) held in int64."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_hi, p_lo = a_hi * b, a_lo * b  # each < 2**48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _M32
    return hi, lo


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor],
               rounds: int = _ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32 on int64 tensors holding unsigned 32-bit words; broadcasts its inputs."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(c2, _MUL_B)
        hi_a, lo_a = _mulhilo(c0, _MUL_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def uniform(seeds: torch.Tensor, step: int, index: torch.Tensor) -> torch.Tensor:
    """Uniform floats in [0, 1) for draws ``(seeds[b], step, index[b, j])``.

    Args:
        seeds: ``[B]`` int64, one key per row, each in [0, 2**63).
        step: the decode step (the second counter word), ``0 <= step < 2**32``; an int or a
            0-d int64 tensor on the seeds' device.
        index: ``[B, K]`` int64 vocabulary ids (the first counter word).

    Returns:
        ``[B, K]`` float32, equal bit for bit to ``tl.rand(seeds[b], (step << 32) + index)``.
        Pure: no state is read or advanced; no host sync.
    """
    k0 = (seeds & _M32)[:, None]  # [B, 1]
    k1 = ((seeds >> 32) & _M32)[:, None]  # [B, 1]
    c0 = index & _M32  # [B, K]
    c1 = (torch.zeros_like(c0) + step) & _M32  # step: an int, or a 0-d tensor (compiled loops)
    zero = torch.zeros_like(c0)
    x = philox4x32((c0, c1, zero, zero), (k0, k1))[0]  # [B, K], unsigned word
    x = torch.where(x >= 2**31, x - 2**32, x)  # as int32
    x = torch.where(x < 0, -x - 1, x)  # Triton folds the sign: [0, 2**31)
    return x.to(torch.float32) * 4.6566127342e-10


def row_seed(base: int, index: int) -> int:
    """A well-mixed 63-bit key for row ``index`` of a request seeded with ``base`` (SplitMix64)."""
    z = (base * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1
