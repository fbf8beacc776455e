"""Does a dense proximal reward make on-policy learning faster than the same signal at the end?

The seed write-up (section 9) asks whether immediate rewards speed learning up and how the
discount gamma should balance immediate against long-term reward. This runs the answer on
this CPU, on the default model, with fixed seeds:

- tasks: ``sentiment`` (the vectorised TextBlob ``Sentiment``: a row's rewards sum to its
  polarity) and ``apple_orange`` (the seed's ``get_reward`` as ``EndsWith('.')`` + gated
  ``Keywords``: -1 unless it ends with '.', +1 if it also names apple and orange);
- signal: ``dense`` (the per-token proximal rewards) or ``sparse`` (each row's sum on its
  last token: the same return for gamma = 1, none of the credit assignment);
- gamma in {0, 0.9, 0.99, 1}; >= 3 seeds per arm; REINFORCE with the per-step baseline.

To fit a 2-core CPU, only the last ``--train-layers`` transformer layers and the final norm
are trained (the tied embeddings stay frozen), rollouts are short, and an arm takes a few
updates: the table says what moved, not what a long run would reach.

    python benchmarks/learning.py            # writes benchmarks/results/learning-cpu.{json,png}
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import proxdecode as pd
from proxdecode import rl
from proxdecode.bench_rewards import distinct_n

RESULTS = Path(__file__).parent / "results"


def _chat(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def task(name, tok):
    R = pd.rewards
    if name == "sentiment":
        prompts = ["Today is a", "The movie I saw yesterday", "My new job"]
        return prompts, pd.Rewards(tok, [R.Sentiment()])
    prompts = [_chat(tok, "Write one short sentence about fruit."), _chat(tok, "What did you eat today?"),
               _chat(tok, "Describe a snack in one sentence.")]
    return prompts, pd.Rewards(tok, [R.EndsWith("."), R.Keywords(["apple", "orange"], require_all=True,
                                                                 ignore_case=True, only_if_ends_with=".")])


def fresh_model(base_state, model, train_layers):
    model.load_state_dict(base_state)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers[-train_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    for p in model.model.norm.parameters():
        p.requires_grad_(True)
    return model


def evaluate(model, ref, tok, prompts, rewards, new_tokens):
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = pd.generate(model, **enc, rewards=rewards, max_new_tokens=new_tokens, do_sample=True,
                      num_return_sequences=8, seed=777)
    with torch.no_grad():
        ref_lp, _ = rl.completion_logprobs(ref, out)
    m = out.mask
    texts = [tok.decode(out.tokens[b, : int(m[b].sum())], skip_special_tokens=True) for b in range(m.shape[0])]
    return {"reward": float(out.rewards.sum(1).mean()),
            "perplexity": float(torch.exp(-(ref_lp * m).sum() / m.sum())),
            "distinct_2": distinct_n(texts, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["sentiment", "apple_orange"])
    ap.add_argument("--gammas", nargs="+", type=float, default=[0.0, 0.9, 0.99, 1.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--train-layers", type=int, default=4)
    ap.add_argument("--out", default=str(RESULTS / "learning-cpu"))
    ap.add_argument("--summarise", metavar="JSON", help="only rebuild the table and plot of a finished run")
    args = ap.parse_args(argv)
    if args.summarise:
        doc = json.loads(Path(args.summarise).read_text())
        doc["table"] = summarise(doc["runs"], doc["baseline"])
        Path(args.summarise).write_text(json.dumps(doc, indent=2))
        plot(doc["runs"], str(Path(args.summarise).with_suffix(".png")))
        for row in doc["table"]:
            print(row)
        return

    model, tok = pd.load_model()
    ref, _ = pd.load_model()  # the frozen starting point, for perplexity
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = []
    t_start = time.perf_counter()
    for name in args.tasks:
        prompts, rewards = task(name, tok)
        for signal in ("dense", "sparse"):
            for gamma in args.gammas:
                for seed in args.seeds:
                    torch.manual_seed(seed)
                    fresh_model(base_state, model, args.train_layers)
                    hist = rl.train(model, tok, prompts, rewards, args.updates, group_size=args.group_size,
                                    max_new_tokens=args.new_tokens, lr=args.lr, algo="reinforce",
                                    gamma=gamma, sparse=signal == "sparse", seed=seed * 100_003,
                                    progress=False)
                    final = evaluate(model, ref, tok, prompts, rewards, args.new_tokens)
                    runs.append({"task": name, "signal": signal, "gamma": gamma, "seed": seed,
                                 "curve": [h["reward"] for h in hist], "final": final,
                                 "seconds": sum(h["rollout_s"] + h["learn_s"] for h in hist)})
                    print(json.dumps({k: runs[-1][k] for k in ("task", "signal", "gamma", "seed", "final")}),
                          flush=True)
    model.load_state_dict(base_state)
    baseline = {name: evaluate(model, ref, tok, *task(name, tok), args.new_tokens) for name in args.tasks}
    table = summarise(runs, baseline)
    doc = {"args": vars(args), "baseline": baseline, "table": table, "runs": runs,
           "minutes": (time.perf_counter() - t_start) / 60}
    Path(args.out + ".json").write_text(json.dumps(doc, indent=2))
    plot(runs, args.out + ".png")
    for row in table:
        print(row)


def _smoothed(arm):
    """The arm's mean curve over seeds, then a trailing mean over 3 updates (one update's
    12 rollouts a seed are a noisy estimate)."""
    mean = [statistics.mean(c) for c in zip(*[r["curve"] for r in arm])]
    return [statistics.mean(mean[max(0, i - 2): i + 1]) for i in range(len(mean))]


def summarise(runs, baseline):
    """One row per arm. The set reward of a task is the same for all its arms: the untrained
    model's reward on the training rollouts (every arm's first point: the same seeds, the
    same weights) plus half the largest smoothed gain any arm reached over it."""
    rows = []
    for name in baseline:
        arms = {}
        for r in runs:
            if r["task"] == name:
                arms.setdefault((r["signal"], r["gamma"]), []).append(r)
        if not arms:
            continue
        start = statistics.mean(r["curve"][0] for a in arms.values() for r in a)
        best = max(max(_smoothed(a)) for a in arms.values())
        target = start + 0.5 * max(best - start, 0.0)
        for (signal, gamma), arm in sorted(arms.items()):
            curve = _smoothed(arm)
            reach = next((i for i, v in enumerate(curve) if i > 0 and v >= target), None)  # after i updates
            finals = [r["final"]["reward"] for r in arm]
            rows.append({"task": name, "signal": signal, "gamma": gamma, "seeds": len(arm),
                         "start_reward": start, "target_reward": target, "updates_to_target": reach,
                         "final_reward": statistics.mean(finals),
                         "final_reward_sd": statistics.stdev(finals) if len(arm) > 1 else 0.0,
                         "perplexity": statistics.mean(r["final"]["perplexity"] for r in arm),
                         "distinct_2": statistics.mean(r["final"]["distinct_2"] for r in arm),
                         "baseline_reward": baseline[name]["reward"]})
    return rows


def plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in runs})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, name in zip(axes[0], tasks):
        for signal, style in (("dense", "-"), ("sparse", "--")):
            for gamma in sorted({r["gamma"] for r in runs}):
                arm = [r["curve"] for r in runs if (r["task"], r["signal"], r["gamma"]) == (name, signal, gamma)]
                if arm:
                    ax.plot([statistics.mean(c) for c in zip(*arm)], style, label=f"{signal} γ={gamma:g}")
        ax.set(title=name, xlabel="update", ylabel="mean reward of the update's rollouts")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
