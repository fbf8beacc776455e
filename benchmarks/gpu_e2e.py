"""Sections ``e2e`` and ``rewards`` of ``benchmarks/gpu.py``: ``pd.generate`` against
``model.generate`` end to end on random-weight models of real shapes (issue 4), and the
reward library's speed targets of issue 3 on the GPU, where the model forward no longer
hides what the seed-style baseline's Python rewards cost.
"""

from __future__ import annotations

import statistics
import time

import torch

from gpu_step import DEV, MAIN, sync


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


def _load_random(shape, model_dtype):
    import proxdecode as pd

    with torch.device(DEV):  # initialise the random weights on the device directly
        return pd.random_model(shape, seed=0, dtype=model_dtype, device=DEV)


def section_e2e(rec, models, batches, new_tokens, reps, model_dtype, smoke):
    from torch._dynamo.utils import counters

    import proxdecode as pd

    prompts = ["I like to eat", "The weather today is", "Once upon a time, there was a",
               "My favourite fruit is the"]
    for shape in models:
        loaded = {}

        def load(shape=shape):
            t = time.monotonic()
            loaded["model"], loaded["tok"] = _load_random(shape, model_dtype)
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

                    def hf_run():
                        with torch.inference_mode():  # as pd.generate runs (HF's own is no_grad)
                            return model.generate(**enc, **gen)

                    runs = {"pd_triton": lambda: pd_run("triton"), "pd_torch": lambda: pd_run("torch"),
                            "hf_generate": hf_run}
                    if shape == models[0] and B == batches[1]:  # one cell: the compile is minutes
                        # the decode forward compiled with HF's default CompileConfig: "reduce-overhead",
                        # i.e. captured in a CUDA graph (static cache, fixed-shape mask); with the
                        # Triton step eager beside it, and with the whole step compiled (backend auto:
                        # rewards + the torch step fused by inductor, engine.sample_one)
                        runs["pd_triton_compiled"] = lambda: pd_run("triton", compile=True)
                        runs["pd_compiled_step"] = lambda: pd_run("auto", compile=True)
                    lengths, skips = {}, {}
                    for k, fn in list(runs.items()):  # warm-up: compiles, autotunes, allocates
                        before = counters["inductor"]["cudagraph_skips"]
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
                        if "compile" in k:  # graphs inductor ran without a CUDA graph (mode "reduce-overhead")
                            skips[k] = counters["inductor"]["cudagraph_skips"] - before
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
                    if skips:  # the reason of each skip is in the log (torch._inductor's cudagraphs logger)
                        res["cudagraph_skips"] = skips
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
                need = 20 if smoke else (15 + 0.1 * B) * (1 if shape != "llama-1b" else 1.5)
                need += 120 if shape == models[0] and B == batches[1] else 0  # the compiles
                settings = dict(MAIN, max_new_tokens=new_tokens, steer=2.0 if rewards_on else 0.0)
                rec.guarded("e2e", "e2e", {"model": shape, "B": B, "rewards": rewards_on, "settings": settings,
                                           "model_dtype": str(model_dtype).split(".")[-1]}, run, need_s=need)
        model = tok = None  # free the weights before the next shape loads
        loaded.clear()
        if DEV == "cuda":
            torch.cuda.empty_cache()


def section_rewards(rec, shape, batch, new_tokens, reps, model_dtype, smoke):
    """Issue 3's speed rows on the GPU: ``proxdecode.bench_rewards.rewards_speed`` (the code of
    ``proxdecode bench --rewards``) on a random-weight model of the default model's shape.

    tokens/s of ``pd.generate`` with the full stack steering (Sentiment, EndsWith, Keywords,
    Repetition, Fluency) against ``pd.generate`` without rewards (target >= 0.9x) and against
    the seed-style baseline, HF ``generate`` with a processor that decodes each row's top-20
    candidates and scores them with TextBlob every step (target >= 20x). On a CPU both loops
    share a forward that is most of a 64-77 ms step, so that ratio cannot pass about 1.4x
    (about 3x with packed linear layers; the README's free-rewards bound); here the forward
    takes a few ms. First with ``compile=True`` (the forward in a CUDA graph, the whole step
    after it fused by inductor), then eager with the Triton step, where ``Sentiment`` alone
    dispatches a few hundred small ops a step (``dispatch_ops``), each a kernel launch: the
    compiled row is the one the targets are about. Random weights change the texts TextBlob
    scores, not how much work a call does.
    """
    try:
        import textblob  # noqa: F401 - Sentiment's lexicon and the baseline's scorer
    except ImportError as e:
        rec.note("rewards", f"skipped: {e}. Sentiment and the seed-style baseline need textblob: run "
                            "`make gpu-wheels` on the development machine and carry .whl (see gpu.sh)")
        return
    from proxdecode.bench_rewards import rewards_speed

    loaded = {}

    def load():
        t = time.monotonic()
        loaded["model"], loaded["tok"] = _load_random(shape, model_dtype)
        return {"load_s": round(time.monotonic() - t, 1)}
    rec.guarded("rewards", "rewards", {"what": "load", "model": shape}, load, need_s=30)
    if "tok" not in loaded:
        return
    costs = ("reward_step_ms", "reward_step_speedup", "step_after_forward_ms", "dispatch_ops")
    measured = []  # the step costs do not depend on the engine: the first row that runs through takes them
    for engine in ({"compile": True}, {"backend": "triton"}):
        # seconds: the three timed rows, the compiled engine's compiles, the step costs' own compile
        need = 20 if smoke else 40 + (50 if "compile" in engine else 0) + (0 if measured else 60)

        def run(engine=engine):
            res = rewards_speed(batch=batch, new_tokens=new_tokens, runs=reps, steer=2.0, engine=engine,
                                model=loaded["model"], tok=loaded["tok"], step_costs=not measured)
            keys = ("tok_s", "rewards_vs_none", "rewards_vs_seed_style", "stack", "settings", "seconds", "cpu")
            out = {k: res[k] for k in keys + (costs if not measured else ())}
            measured.append(engine)
            return out
        rec.guarded("rewards", "rewards", {"model": shape, "B": batch, "new_tokens": new_tokens, "steer": 2.0,
                                           "pd_engine": engine, "model_dtype": str(model_dtype).split(".")[-1]},
                    run, need_s=need)
    loaded.clear()
    if DEV == "cuda":
        torch.cuda.empty_cache()
