"""Is compiling the decode forward worth it on this CPU? A probe for the next engine step.

The engine's remaining cost against HF (``make bench-update``) is the model forward itself,
the same on both sides. gpt-fast compiles only the single decode step; with HF's
``StaticCache`` the step's shapes are fixed once the attention mask is passed at its full
``[B, P + T]`` length (the cache's ``cache_position`` keeps future slots out), so
``torch.compile(model.forward, dynamic=False)`` compiles once per (B, P, T). This times one
decode forward, eager against compiled, alternating, on the default model, and checks both
give the same greedy tokens. Not yet wired into ``pd.generate``.

    python benchmarks/compile_probe.py --batch 8 --new-tokens 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import StaticCache

import proxdecode as pd


def decode(model, forward, ids, mask, new_tokens):
    """Greedy decode with a static cache; per-step forward seconds (after the first) and tokens."""
    B, P = ids.shape
    full = torch.cat([mask, mask.new_ones(B, new_tokens)], 1)  # [B, P+T]: fixed for every step
    cache = StaticCache(config=model.config, max_cache_len=P + new_tokens)
    kw = dict(attention_mask=full, past_key_values=cache, use_cache=True, logits_to_keep=1)
    with torch.inference_mode():
        tok = model(input_ids=ids, cache_position=torch.arange(P), **kw).logits[:, -1].argmax(-1)  # [B]
        out, times = [tok], []
        for t in range(new_tokens - 1):
            t0 = time.perf_counter()
            logits = forward(input_ids=tok[:, None], cache_position=torch.tensor([P + t]), **kw).logits
            tok = logits[:, -1].argmax(-1)
            times.append(time.perf_counter() - t0)
            out.append(tok)
    return times, torch.stack(out, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    model, tok = pd.load_model()
    enc = tok(["The weather today is"] * args.batch, return_tensors="pt")
    compiled = torch.compile(model.forward, dynamic=False)
    t0 = time.perf_counter()
    _, ref = decode(model, compiled, enc["input_ids"], enc["attention_mask"], args.new_tokens)
    print(f"first compiled decode (compiles once): {time.perf_counter() - t0:.0f} s")
    med = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        for name, fwd in (("eager", model.forward), ("compiled", compiled)):
            times, toks = decode(model, fwd, enc["input_ids"], enc["attention_mask"], args.new_tokens)
            assert torch.equal(toks, ref), f"{name}: greedy tokens differ from the compiled run's"
            med[name].append(statistics.median(times[1:]) * 1e3)
    e, c = statistics.median(med["eager"]), statistics.median(med["compiled"])
    print(f"decode forward, batch {args.batch}: eager {e:.1f} ms, compiled {c:.1f} ms ({e / c:.2f}x); "
          "same greedy tokens")


if __name__ == "__main__":
    main()
