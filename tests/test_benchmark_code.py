"""The benchmarks' own code: the seed-style baseline does what the README says it does, and
the one-shot GPU script still runs (its ``--smoke`` mode, on CPU), since no GPU is here to
catch it breaking."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from textblob import TextBlob

from proxdecode.bench_rewards import TOP_CANDIDATES, seed_get_reward, seed_style_processor

REPO = Path(__file__).resolve().parents[1]


def test_seed_style_processor_scores_the_top_20_texts_with_textblob_and_the_seed_rule(tiny):
    _, tok = tiny
    prompt = tok(["I like to eat", "Today is a nice"], return_tensors="pt", padding=True)["input_ids"]
    history = torch.cat([prompt, tok(["apple and", "day."], return_tensors="pt", padding=True)["input_ids"]], 1)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 1000, generator=g) * 3  # [B, V]: the candidates are ids < 1000
    beta = 1.5
    out = seed_style_processor(tok, prompt.shape[1], beta)(history, scores.clone())

    for b in range(2):  # the oracle: a plain loop over the row's 20 best ids
        top = sorted(range(1000), key=lambda i: -float(scores[b, i]))[:TOP_CANDIDATES]
        kept = torch.isfinite(out[b]).nonzero()[:, 0].tolist()
        assert sorted(kept) == sorted(top)
        for i in top:
            text = tok.decode(history[b, prompt.shape[1]:].tolist() + [i], skip_special_tokens=True)
            want = float(scores[b, i]) + beta * (TextBlob(text).sentiment.polarity + seed_get_reward(text))
            assert abs(float(out[b, i]) - want) < 1e-5, (b, i, text)


def test_seed_rule_is_the_write_ups():
    assert seed_get_reward("I like apple and orange.") == 1
    assert seed_get_reward("I like apple.") == 0
    assert seed_get_reward("I like apple and orange") == -1


def test_gpu_script_smoke_runs_every_section_without_an_error(tmp_path):
    """``benchmarks/gpu.sh --smoke``: the same code paths as the H200 run, in Triton's
    interpreter at tiny shapes. Every record is a result (no error), the Triton step matches
    the reference, and the rewards section measured all three rows in both engines."""
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--smoke", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = {k: json.loads((tmp_path / f"gpu-{k}-smoke.json").read_text()) for k in ("step", "rewards", "e2e")}
    records = [r for f in files.values() for sec, rs in f.items() if isinstance(rs, list) for r in rs]
    assert not [r for r in records if "error" in r or "skipped" in r]
    checks = [r for r in files["step"]["check"] if "tokens_identical" in r]
    assert len(checks) >= 8 and all(r["tokens_identical"] == r["rows"] for r in checks)
    rows = [r for r in files["rewards"]["rewards"] if "tok_s" in r]
    assert [r["pd_engine"] for r in rows] == [{"compile": True}, {"backend": "triton"}]
    assert all(set(r["tok_s"]) == {"pd", "pd_rewards", "seed_style"} for r in rows)
    assert all(math.isfinite(v) and v > 0 for r in rows for v in r["tok_s"].values())
    assert all(r["rewards_vs_none"] > 0 for r in rows)
    [costs] = [r for r in rows if "reward_step_ms" in r]  # engine-independent: measured by one row only
    assert costs["reward_step_speedup"] > 0
    assert "compiled_error" not in costs["step_after_forward_ms"], "the step failed to compile"
    assert set(costs["dispatch_ops"]) == set(costs["stack"]) and costs["dispatch_ops"]["sentiment"]["score"] > 0
    assert {r["B"] for r in files["e2e"]["e2e"] if "tokens_per_s" in r} == {1, 2}
    compiled = [r for r in files["e2e"]["e2e"] if "ratio_pd_compiled_step_over_hf" in r]
    assert len(compiled) == 2 and all(set(r["cudagraph_skips"]) == {"pd_triton_compiled", "pd_compiled_step"}
                                      for r in compiled)


def test_bench_records_the_kv_cache_generate_takes(tiny, monkeypatch):
    """``pd_kv_cache`` in the e2e JSON against the cache the decoder really builds."""
    import proxdecode as pd
    from proxdecode import bench, decoder

    model, tok = tiny
    made, real = [], decoder._make_cache
    monkeypatch.setattr(decoder, "_make_cache", lambda m, n, static: made.append(static) or real(m, n, static))
    enc = tok(["I like to eat"], return_tensors="pt")
    for engine in ({}, {"cache_implementation": "static"}, {"cache_implementation": "dynamic", "backend": "torch"}):
        pd.generate(model, **enc, max_new_tokens=2, **engine)
        assert bench._kv_cache(model, tok, 2, engine) == ("static" if made.pop() else "dynamic"), engine


def test_bench_settings_reach_both_sides(tiny):
    """``proxdecode bench --no-repeat-ngram-size``: both contenders run with the setting (no
    row repeats a bigram, prompt included; the tiny model repeats itself without it)."""
    from proxdecode import bench

    model, tok = tiny
    enc = bench._inputs(tok, 3, model.device)
    with_ngram = dict(bench.SETTINGS, no_repeat_ngram_size=2, do_sample=False)

    def repeats(row):  # a bigram twice, padding left out
        pairs = [p for p in zip(row, row[1:]) if tok.pad_token_id not in p]
        return len(pairs) != len(set(pairs))

    plain = bench._call("pd", model, enc, 12, 0, None, dict(bench.SETTINGS, do_sample=False))
    assert any(repeats(r) for r in plain.tolist()), "the check must be able to fail"
    for impl in ("hf", "pd"):
        for row in bench._call(impl, model, enc, 12, 0, None, with_ngram).tolist():
            assert not repeats(row), (impl, row)


def test_tie_sets_script_finds_hfs_sets_on_a_bf16_model(tmp_path):
    """``benchmarks/tie_sets.py`` (the README's count of bf16 ties at top-k): HF's own
    processed scores are its oracle, and pd's sets must equal them."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tie_sets
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = tmp_path / "ties.json"
    tie_sets.main(["--new-tokens", "3", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == list(tie_sets.SETTINGS)
    assert all(r["steps"] == 3 * len(tie_sets.PROMPTS) for r in rows)
    assert all(v == 0 for r in rows for k, v in r.items() if k.startswith("sets_differ_"))
    assert sum(r["ties_past_k"] for r in rows) > 0, "the bf16 logits should tie at the k-th somewhere"
