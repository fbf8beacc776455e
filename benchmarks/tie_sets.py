"""How often a bf16 model's logits tie at the top-k boundary, and whether pd keeps HF's set.

bf16 has 8 significant bits, so near the 50th largest logit several tokens often share one
value. HF's ``TopKLogitsWarper`` keeps them all; pd's step keeps them too (up to
``TIE_ROOM`` past the k-th). This runs HF's own ``generate`` on the default model in bf16
with ``output_scores`` (its processed scores: the oracle) and ``output_logits``, then pd's
torch and C++ steps (the Triton one runs in ``tests/test_top_k_ties.py``) on the same raw
logits and prefixes, and counts, per setting, the
steps whose candidate set (finite scores) differs from HF's and the steps with ties past
the k-th: HF's set larger than k, where a step that kept exactly k tokens would differ.

    python benchmarks/tie_sets.py           # writes benchmarks/results/tie-sets-bf16.json
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import proxdecode as pd
from proxdecode import cpp
from proxdecode.step import TIE_ROOM, sample_step

PROMPTS = ["The capital of France is", "My favourite fruit is the", "Once upon a time, a",
           "In 1969, the first", "def fibonacci(n):", "The weather today is", "Dear Sir or Madam,",
           "To make a cake, you need"]
SETTINGS = {
    "top_k=50": dict(top_k=50),
    "top_k=20, T=1.2": dict(top_k=20, temperature=1.2),
    "top_k=1": dict(top_k=1),
    "top_k=200": dict(top_k=200),
    "top_k=50, repetition_penalty=1.3": dict(top_k=50, repetition_penalty=1.3),
}


def seen_at(seq: torch.Tensor, mask: torch.Tensor, length: int, vocab: int) -> torch.Tensor:
    """``[B, V]`` bool: the tokens of each row's first ``length`` positions, padding left out
    (as transformers 5.24's repetition penalty reads the prefix)."""
    ids = seq[:, :length]  # [B, L]
    real = mask[:, :length].bool()
    seen = torch.zeros(seq.shape[0], vocab + 1, dtype=torch.bool)
    return seen.scatter(1, torch.where(real, ids, vocab), True)[:, :vocab]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tie-sets-bf16.json"))
    args = ap.parse_args(argv)

    model, tok = pd.load_model()
    model = copy.deepcopy(model).to(torch.bfloat16)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    P = enc.input_ids.shape[1]
    steps = {"torch": sample_step}
    if cpp.available():
        steps["cpp"] = cpp.sample_step_cpp
    rows = []
    for name, kw in SETTINGS.items():
        torch.manual_seed(0)
        out = model.generate(**enc, do_sample=True, max_new_tokens=args.new_tokens,
                             return_dict_in_generate=True, output_scores=True, output_logits=True,
                             pad_token_id=tok.eos_token_id, **kw)
        mask = torch.cat([enc.attention_mask, torch.ones_like(out.sequences[:, P:])], 1)  # [B, P+T]
        row = {"setting": name, "steps": 0, "ties_past_k": 0}
        for t, (logits, scores) in enumerate(zip(out.logits, out.scores)):
            want = torch.isfinite(scores)  # [B, V] HF's candidate set
            row["steps"] += want.shape[0]
            row["ties_past_k"] += int((want.sum(-1) > kw["top_k"]).sum())
            seen = seen_at(out.sequences, mask, P + t, logits.shape[1]) if "repetition_penalty" in kw else None
            for impl, step in steps.items():
                got = torch.isfinite(step(logits, seeds=torch.arange(want.shape[0]), step=t, seen=seen,
                                          return_scores=True, **kw).scores)
                key = f"sets_differ_{impl}"
                row[key] = row.get(key, 0) + int((got != want).any(-1).sum())
        rows.append(row)
        print(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": "SmolLM2-135M-Instruct, bfloat16", "prompts": PROMPTS,
                                          "new_tokens": args.new_tokens, "tie_room": TIE_ROOM,
                                          "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
