"""Sections ``check`` and ``timing`` of ``benchmarks/gpu.py``: the Triton step against the
torch reference on the GPU, and its speed against the reference, HF's processors and a
device-to-device copy. Also the helpers the other sections share (device, timing, logits).

Imported by ``gpu.py`` after it has set ``TRITON_INTERPRET`` for a ``--smoke`` run.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

# Triton's interpreter (the --smoke run) runs kernels on host tensors, so it runs on the CPU
DEV = "cuda" if (torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1") else "cpu"
MAIN = dict(top_k=50, top_p=0.9, temperature=0.8)  # the benchmark's sampling settings
OUT_BYTES_PER_ROW = 8 + 4 + 4 + 1  # token, logprob, policy logprob, valid


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def bench_ms(fn) -> float:
    """Median milliseconds of ``fn()``: ``triton.testing.do_bench`` on GPU (L2 flushed
    between runs), a wall-clock median on CPU (smoke only)."""
    if DEV == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(2):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def make_logits(B, V, dtype, seed=0):
    """LLM-like logits: Gaussian (std 2.5) with a few dominant tokens per row."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    z = torch.randn(B, V, generator=g, device=DEV) * 2.5
    hot = torch.randint(0, V, (B, 8), generator=g, device=DEV)
    z.scatter_add_(1, hot, torch.rand(B, 8, generator=g, device=DEV) * 8)
    return z.to(dtype)


def seeds_for(B):
    return torch.arange(B, dtype=torch.int64, device=DEV) * 1000003 + 17


def compare(ref, tri, dense=False) -> dict:
    """Agreement of two StepOutputs."""
    same = ref.tokens == tri.tokens
    both = ref.valid & tri.valid
    out = {
        "rows": int(same.numel()), "tokens_identical": int(same.sum()),
        "valid_equal": bool(torch.equal(ref.valid, tri.valid)),
        "max_abs_dlogprob": float((ref.logprobs - tri.logprobs)[both & same].abs().max().nan_to_num(0))
        if bool((both & same).any()) else 0.0,
        "max_abs_dpolicy": float((ref.policy_logprobs - tri.policy_logprobs)[both & same].abs().max())
        if bool((both & same).any()) else 0.0,
    }
    if dense:
        kr, kt = torch.isfinite(ref.scores), torch.isfinite(tri.scores)
        out["candidate_sets_equal_rows"] = int((kr == kt).all(1).sum())
        out["candidate_set_sizes_mean"] = float(kt.sum(1).float().mean())
        inside = kr & kt
        out["max_abs_dscore"] = float((ref.scores - tri.scores)[inside].abs().max()) if bool(inside.any()) else 0.0
    return out


# ----------------------------------------------------------------------------- sections
def section_check(rec, shapes, dtypes, one_shape):
    from proxdecode.kernels.sample_step import sample_step_triton
    from proxdecode.step import TIE_ROOM, sample_step

    for dtype in dtypes:
        for V in shapes["V"]:
            for B in shapes["B"]:
                def run(B=B, V=V, dtype=dtype):
                    z = make_logits(B, V, dtype, seed=B + V)
                    s = seeds_for(B)
                    ref = sample_step(z, seeds=s, step=3, **MAIN)
                    tri = sample_step_triton(z, seeds=s, step=3, **MAIN)
                    sync()
                    return compare(ref, tri)
                rec.guarded("step", "check", {"what": "main settings", "settings": MAIN, "B": B, "V": V,
                                              "dtype": str(dtype).split(".")[-1]}, run, need_s=20)

    # Other settings at one shape, fixed kernel config (compiles once per variant, not 3x).
    os.environ["PROXDECODE_TRITON_AUTOTUNE"] = "0"
    B, V = one_shape
    g = torch.Generator(device=DEV).manual_seed(5)
    seen = torch.rand(B, V, generator=g, device=DEV) < 0.05
    reward = torch.randn(B, V, generator=g, device=DEV)
    per_row = lambda lo, hi: lo + (hi - lo) * torch.rand(B, generator=g, device=DEV)  # noqa: E731
    settings = {
        "greedy": dict(do_sample=False),
        "top_p_only": dict(top_p=0.9),
        "top_k_300_min_p": dict(top_k=300, min_p=0.02, temperature=1.2),
        "per_row_params": dict(top_k=20, temperature=per_row(0.5, 1.5), top_p=per_row(0.5, 1.0),
                               min_p=per_row(0.0, 0.1)),
        "penalty_suppress_steer": dict(top_k=50, top_p=0.9, temperature=0.8, repetition_penalty=1.3,
                                       seen=seen, suppress=torch.tensor([2, 5], device=DEV),
                                       reward=reward, steer=2.0),
        "steer_no_top_k": dict(top_p=0.95, reward=reward, steer=-1.0),
    }
    for dtype in dtypes:
        for name, kw in settings.items():
            if dtype != torch.float32 and name not in ("penalty_suppress_steer", "top_p_only"):
                continue  # bf16 shares every code path past the load: two variants suffice

            def run(kw=kw, dtype=dtype):
                z = make_logits(B, V, dtype, seed=7)
                s = seeds_for(B)
                ref = sample_step(z, seeds=s, step=11, return_scores=True, **kw)
                tri = sample_step_triton(z, seeds=s, step=11, return_scores=True, **kw)
                sync()
                return compare(ref, tri, dense=True)
            rec.guarded("step", "check", {"what": name, "B": B, "V": V, "dtype": str(dtype).split(".")[-1]},
                        run, need_s=40)

    def tie_rule():
        """All-equal rows, top_k=5: the tie overflows top-k's room; the kernel keeps ids
        0..4 + TIE_ROOM; which does torch.topk (the reference's list) keep?"""
        n = 5 + TIE_ROOM
        z = torch.zeros(2, V, device=DEV)
        tri = sample_step_triton(z, seeds=seeds_for(2), step=0, top_k=5, return_scores=True)
        kernel_ids = torch.nonzero(torch.isfinite(tri.scores[0]))[:, 0].tolist()
        topk_ids = sorted(torch.topk(z, n, dim=-1).indices[0].tolist())
        return {"kernel_keeps_lowest_ids": kernel_ids == list(range(n)),
                "torch_topk_keeps_lowest_ids": topk_ids == list(range(n))}
    rec.guarded("step", "check", {"what": "tie rule (top_k=5 on an all-equal row)", "V": V}, tie_rule, need_s=10)
    rec.note("step", "ties: top-k keeps every value >= the k-th, as HF, up to k + TIE_ROOM tokens, then the "
                     "lowest ids among the ties (torch.topk's rule on CUDA, checked above); top-p orders ties "
                     "by id where the reference keeps a prefix of its sort order: the same count, perhaps "
                     "other ids.")
    os.environ.pop("PROXDECODE_TRITON_AUTOTUNE", None)

    def cpp_cuda():
        if DEV != "cuda":
            return {"status": "skipped: the CUDA step needs a CUDA device"}
        from proxdecode.cpp import sample_step_cuda as fn

        z = make_logits(B, V, torch.float32, seed=9)
        s = seeds_for(B)
        ref = sample_step(z, seeds=s, step=3, **MAIN)
        out = fn(z, seeds=s, step=3, **MAIN)
        sync()
        res = {"status": "checked"}
        res.update(compare(ref, out))
        res["ms_median"] = bench_ms(lambda: fn(z, seeds=s, step=3, **MAIN))
        return res
    rec.guarded("step", "check", {"what": "proxdecode.cpp CUDA step", "B": B, "V": V}, cpp_cuda, need_s=30)


def section_timing(rec, shapes, dtypes):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    from proxdecode.kernels import sample_step as ks
    from proxdecode.step import sample_step

    hf = LogitsProcessorList([TemperatureLogitsWarper(MAIN["temperature"]), TopKLogitsWarper(MAIN["top_k"]),
                              TopPLogitsWarper(MAIN["top_p"])])
    for dtype in dtypes:
        for V in shapes["V"]:
            for B in shapes["B"]:
                def run(B=B, V=V, dtype=dtype):
                    z = make_logits(B, V, dtype, seed=1)
                    s = seeds_for(B)
                    read = z.numel() * z.element_size()
                    moved = read + B * OUT_BYTES_PER_ROW
                    dst = torch.empty_like(z)
                    t = {
                        "triton": bench_ms(lambda: ks.sample_step_triton(z, seeds=s, step=3, **MAIN)),
                        "torch_reference": bench_ms(lambda: sample_step(z, seeds=s, step=3, **MAIN)),
                        # HF generate upcasts the logits to fp32 before its processors
                        "hf_processors_multinomial": bench_ms(
                            lambda: torch.multinomial(torch.softmax(hf(None, z.float()), -1), 1)),
                        "copy": bench_ms(lambda: dst.copy_(z)),
                    }
                    copy_gbps = 2 * read / (t["copy"] * 1e-3) / 1e9
                    tri_gbps = moved / (t["triton"] * 1e-3) / 1e9
                    res = {"us": {k: round(v * 1e3, 2) for k, v in t.items()},
                           "speedup_vs_torch": round(t["torch_reference"] / t["triton"], 2),
                           "speedup_vs_hf": round(t["hf_processors_multinomial"] / t["triton"], 2),
                           "bytes_logits": read, "bytes_outputs": B * OUT_BYTES_PER_ROW,
                           "triton_effective_GBps": round(tri_gbps, 1),
                           "copy_GBps_read_plus_write": round(copy_gbps, 1),
                           "triton_fraction_of_copy": round(tri_gbps / copy_gbps, 3)}
                    best = getattr(ks._autotuned, "best_config", None)
                    if ks._autotune_wanted(z.device) and best is not None:
                        res["autotune_best"] = str(best)
                    return res
                rec.guarded("step", "timing", {"settings": MAIN, "B": B, "V": V,
                                               "dtype": str(dtype).split(".")[-1]}, run, need_s=15)
    rec.note("step", "effective GB/s counts the logits once (the tile path reads them twice) plus 17 "
                     "output bytes per row; copy GB/s counts read + write of the same logits")
