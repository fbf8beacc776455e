"""``proxdecode bench``: tokens/s of ``pd.generate`` against ``model.generate``.

Same model, prompts and settings, in one process, alternating which goes first, median of
``runs``; the ratio is the result (these machines are noisy, absolute times are not).
Every row generates exactly ``new_tokens`` tokens (``min_new_tokens = max_new_tokens``) so
both sides do the same work. Peak memory is the high-water RSS (CPU) or
``max_memory_allocated`` (CUDA) of a fresh subprocess running one call, the high-water mark
reset (``/proc/self/clear_refs``) after the model has loaded.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch

PROMPTS = ["I like to eat", "Today is a", "The capital of France is",
           "Once upon a time, in a land far away, there lived a", "My favourite fruit is the",
           "Write a short poem about the sea:", "The best way to learn is", "Yesterday I saw"]
SETTINGS = dict(do_sample=True, top_k=50, top_p=0.9, temperature=0.8)


def _inputs(tok, batch: int, device):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    return tok(prompts, return_tensors="pt", padding=True).to(device)


def _call(impl: str, model, enc, new_tokens: int, seed: int, engine: dict | None = None,
          settings: dict = SETTINGS):
    """One generate call; ``engine``: pd.generate's own options (backend, linear, compile,
    cache_implementation); ``settings``: the generate arguments both sides get."""
    import proxdecode as pd

    kw = dict(settings, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    if impl == "hf":
        torch.manual_seed(seed)
        with torch.inference_mode():  # as pd.generate runs (HF's own is no_grad)
            return model.generate(**enc, **kw)
    return pd.generate(model, **enc, **kw, seed=seed, **(engine or {}))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _alternating(calls: dict, runs: int, device, engine: dict | None = None) -> dict:
    """Seconds of each named call over ``runs`` rounds, the order reversed every other round.

    Each call is warmed up first (allocator, caches, lazy imports) with 4 tokens, or at its
    full length when ``engine`` compiles: a compiled step compiles once per length."""
    names = list(calls)
    warm = None if (engine or {}).get("compile") else 4
    for name in names:
        calls[name](warm, 0)
    times = {name: [] for name in names}
    for r in range(runs):
        for name in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            calls[name](None, r)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def time_generate(model, tok, batch: int, new_tokens: int, runs: int, engine: dict | None = None,
                  settings: dict = SETTINGS) -> dict:
    """Median seconds of HF and pd over ``runs`` alternating runs."""
    device = next(model.parameters()).device
    enc = _inputs(tok, batch, device)
    P = enc["input_ids"].shape[1]

    def call(impl):
        def run_once(n, seed):
            out = _call(impl, model, enc, n or new_tokens, seed, engine, settings)
            assert out.shape[1] == P + (n or new_tokens)
        return run_once

    times = _alternating({"hf": call("hf"), "pd": call("pd")}, runs, device, engine)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "new_tokens": new_tokens, "runs": runs,
            "hf_tok_s": batch * new_tokens / med["hf"], "pd_tok_s": batch * new_tokens / med["pd"],
            "speedup": med["hf"] / med["pd"], "hf_s": times["hf"], "pd_s": times["pd"]}


def time_cache_ab(model, tok, batch: int, new_tokens: int, runs: int, engine: dict | None = None) -> dict:
    """``pd.generate`` with the static against the dynamic KV cache, alternating (both with
    ``engine``'s other options)."""
    device = next(model.parameters()).device
    enc = _inputs(tok, batch, device)

    def call(cache):
        return lambda n, seed: _call("pd", model, enc, n or new_tokens, seed,
                                     dict(engine or {}, cache_implementation=cache))

    times = _alternating({"static": call("static"), "dynamic": call("dynamic")}, runs, device, engine)
    med = {c: statistics.median(v) for c, v in times.items()}
    return {"batch": batch, "new_tokens": new_tokens, "runs": runs, "engine": engine or {}, "static_s": times["static"],
            "dynamic_s": times["dynamic"], "static_speedup": med["dynamic"] / med["static"]}


def peak_memory_mib(impl: str, batch: int, new_tokens: int, dtype: str, device: str,
                    engine: dict | None = None, settings: dict = SETTINGS) -> float:
    """Peak memory of one ``impl`` call in a fresh process (RSS high-water mark on Linux CPUs).

    Both sides first make one 2-token call, so lazy imports and one-time loads (HF's
    generation modules, the C++ step's shared library) are not counted as the call's
    working memory; then the high-water mark is reset and the measured call runs."""
    code = ("import sys; from proxdecode.bench import _probe; "
            f"_probe({impl!r}, {batch}, {new_tokens}, {dtype!r}, {device!r}, {engine!r}, {settings!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _probe(impl, batch, new_tokens, dtype, device, engine=None, settings=SETTINGS):
    import proxdecode as pd

    model, tok = pd.load_model(dtype=dtype, device=device)
    enc = _inputs(tok, batch, model.device)
    _call(impl, model, enc, 2, 0, engine, settings)  # warm-up: imports, extension load, weight packing
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        _call(impl, model, enc, new_tokens, 0, engine, settings)
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:  # reset the RSS high-water mark after loading, so the peak is the call's own
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _call(impl, model, enc, new_tokens, 0, engine, settings)
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        print(int(hwm.split()[1]) / 1024)


def run(batches=(1, 8, 32), new_tokens: int = 64, runs: int = 3, dtype: str = "float32",
        device: str = "cpu", memory: bool = True, out_path: str | None = None,
        engine: dict | None = None, settings: dict = SETTINGS) -> dict:
    """Time both implementations at each batch size; return (and optionally write) results.
    ``settings``: the generate arguments both sides get (``SETTINGS``, or more of HF's)."""
    import proxdecode as pd

    model, tok = pd.load_model(dtype=dtype, device=device)
    rows = []
    for b in batches:
        row = time_generate(model, tok, b, new_tokens, runs, engine, settings)
        if memory:
            row["hf_peak_mib"] = peak_memory_mib("hf", b, new_tokens, dtype, device, None, settings)
            row["pd_peak_mib"] = peak_memory_mib("pd", b, new_tokens, dtype, device, engine, settings)
        rows.append(row)
    result = {"model": pd.models.DEFAULT_MODEL, "dtype": dtype, "device": device, "pd_engine": engine or {},
              "pd_kv_cache": _kv_cache(model, tok, new_tokens, engine), "settings": settings, "rows": rows,
              **_machine()}
    if out_path:
        with open(out_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _kv_cache(model, tok, new_tokens: int, engine: dict | None) -> str:
    """The KV cache ``pd.generate`` takes with these options: ``DecodeConfig.resolve``'s own
    decision, on a one-row prompt of the benchmark."""
    from .config import DecodeConfig

    kwargs = dict(SETTINGS, max_new_tokens=new_tokens, **(engine or {}))
    own = {k: kwargs.pop(k) for k in ("backend", "compile", "linear") if k in kwargs}  # pd.generate's own
    enc = _inputs(tok, 1, model.device)
    cfg = DecodeConfig.resolve(model, enc["input_ids"], enc["attention_mask"], steer=0.0, gamma=1.0, seed=0,
                               rewards=None, kwargs=kwargs, **own)
    return "static" if cfg.static_cache else "dynamic"


def _machine() -> dict:
    import transformers

    return {"machine": platform.processor() or platform.machine(), "cpu": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpus": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _cpu_model() -> str:
    """The CPU's model name and whether it multiplies bf16 natively (what decides bf16's speed)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    native = [f for f in ("amx_bf16", "avx512_bf16") if f" {f}" in info]
    return f"{name} ({', '.join(native) or 'no native bf16'})"
