"""Where the time of one on-policy update goes: rollout, reward, learning.

An RL step with proximal rewards needs, per update, a batch of sampled continuations, the
reward of every generated token, and one gradient step. The usual way to get the first two
is HF ``generate`` followed by the rewards in Python: decode each prefix of each row and
score it (the seed's ``get_reward`` and TextBlob polarity), the per-token reward being the
difference of consecutive prefix scores, then the returns by a loop. ``pd.generate`` does
both inside the decode loop, on the logits' device.

Both paths produce the same kind of signal (per-token rewards of the same families, the
discounted returns) for the same batch; they are timed in one process, alternating, median
of ``--runs`` rounds; ratios and the reward cost are taken within each round (the paths of
a round run back to back) and their median reported. The learning part (``pd.rl.update``,
REINFORCE, full model) is the same for both and is timed once per round on the pd rollout.

pd runs three times per round: with rewards and the model's linear layers as HF runs them
(``F.linear``, the same forward as HF's side), the same without rewards (``pd_plain``: the
split's rollout time, rewards apart), and with rewards and ``linear="onednn"`` (packed
weights, ``linear.py``; the repack after each update's weight change is inside its time).
``--compile`` adds a fourth, with rewards and the decode step compiled (the forward and the
step after it); each path's warm-up call, the compile included, is recorded as
``warmup_s``.

    python benchmarks/update_speed.py        # writes benchmarks/results/update-cpu.json
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
from proxdecode.bench import PROMPTS, SETTINGS, _machine
from proxdecode.bench_rewards import seed_get_reward

RESULTS = Path(__file__).parent / "results"


def rewards_for(tok):
    """Sentiment (TextBlob, per token) + the seed's rule (EndsWith + gated apple/orange)."""
    R = pd.rewards
    return pd.Rewards(tok, [R.Sentiment(), R.EndsWith("."),
                            R.Keywords(["apple", "orange"], require_all=True, only_if_ends_with=".")])


def python_rewards(tok, prompt_len: int, sequences: torch.Tensor, eos_id: int, gamma: float):
    """The plain way: per row, per step, decode the prefix and score it; rewards are the
    differences of consecutive scores; returns by a backwards loop. ``[B, T]`` lists."""
    from textblob import TextBlob

    def score(text):
        return TextBlob(text).sentiment.polarity + seed_get_reward(text)

    all_rewards, all_returns = [], []
    for row in sequences[:, prompt_len:].tolist():
        if eos_id in row:
            row = row[: row.index(eos_id) + 1]
        prev, rewards = score(""), []
        for t in range(len(row)):
            now = score(tok.decode(row[: t + 1], skip_special_tokens=True))
            rewards.append(now - prev)
            prev = now
        returns, g = [], 0.0
        for r in reversed(rewards):
            g = r + gamma * g
            returns.append(g)
        all_rewards.append(rewards)
        all_returns.append(returns[::-1])
    return all_rewards, all_returns


def reward_work(rewards, out, vocab: int, repeats: int = 5) -> dict:
    """Median ms a step of the in-loop reward work alone, replayed on a rollout's tokens:
    ``all_candidates`` (the ``[B, V]`` score steering needs, then the record) against
    ``chosen`` (what a rollout without steering runs: the chosen tokens' rewards only)."""
    B, T = out.tokens.shape
    logits = torch.zeros(B, vocab)
    times = {"all_candidates": [], "chosen": []}
    with torch.inference_mode():
        for _ in range(repeats):
            for name in times:
                run = rewards.start(vocab, B, "cpu", max_new_tokens=T)
                t0 = time.perf_counter()
                for t in range(T):
                    if name == "all_candidates":
                        run.score(logits)
                    run.record(out.tokens[:, t], out.mask[:, t], logits)
                times[name].append((time.perf_counter() - t0) * 1e3 / T)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--compile", action="store_true",
                    help="also time pd with the decode step compiled (the forward and the step after it)")
    ap.add_argument("--out", default=str(RESULTS / "update-cpu.json"))
    args = ap.parse_args(argv)

    model, tok = pd.load_model()
    rewards = rewards_for(tok)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    enc = tok(prompts, return_tensors="pt", padding=True)
    P = enc["input_ids"].shape[1]
    kw = dict(SETTINGS, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: time the step, keep the weights

    def pd_rollout(seed, **engine):
        return pd.generate(model, **enc, **kw, rewards=rewards, gamma=args.gamma, seed=seed, **engine)

    def hf_rollout(seed):
        torch.manual_seed(seed)
        with torch.inference_mode():
            seqs = model.generate(**enc, **kw)
        t = time.perf_counter()
        python_rewards(tok, P, seqs, tok.eos_token_id, args.gamma)
        return time.perf_counter() - t

    paths = {"pd": pd_rollout, "pd_plain": lambda seed: pd.generate(model, **enc, **kw, seed=seed),
             "pd_onednn": lambda seed: pd_rollout(seed, linear="onednn"), "hf": hf_rollout}
    if args.compile:
        paths["pd_compiled"] = lambda seed: pd_rollout(seed, compile=True)
    warmup = {}
    for name, fn in paths.items():  # warm-up; the compiled path compiles here
        t0 = time.perf_counter()
        fn(0)
        warmup[name] = time.perf_counter() - t0
        print(f"warm-up {name}: {warmup[name]:.1f} s", flush=True)
    rounds = []
    for r in range(args.runs):
        row = {}
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            t0 = time.perf_counter()
            res = paths[name](r + 1)
            row[name + "_s"] = time.perf_counter() - t0
            if name == "hf":
                row["hf_reward_s"] = res
            elif name == "pd":
                out = res
        t0 = time.perf_counter()
        rl.update(model, optimizer, out, algo="reinforce")
        row["learn_s"] = time.perf_counter() - t0
        rounds.append(row)
        print(json.dumps(row), flush=True)

    # medians of per-round figures: the paths of a round ran back to back, so pairing
    # them within a round cancels the machine's slow drifts that medians taken apart keep
    compared = [p for p in paths if p not in ("hf", "pd_plain")]  # the pd rollouts with rewards
    for r in rounds:
        for path in compared:
            suffix = path[2:]  # "", "_onednn", "_compiled"
            r["rollout_speedup" + suffix] = r["hf_s"] / r[path + "_s"]
            r["update_speedup" + suffix] = (r["hf_s"] + r["learn_s"]) / (r[path + "_s"] + r["learn_s"])
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    # pd's reward part is timed directly (replayed on the last rollout's tokens): the difference
    # of two ~2 s runs is noise at this size
    work = reward_work(rewards, out, model.config.vocab_size)
    split = {
        "pd": {"rollout_s": med["pd_plain_s"], "reward_s": work["chosen"] * args.new_tokens / 1e3,
               "learn_s": med["learn_s"]},
        "hf_then_python": {"rollout_s": med["hf_s"] - med["hf_reward_s"], "reward_s": med["hf_reward_s"],
                           "learn_s": med["learn_s"]},
    }
    doc = {"batch": args.batch, "new_tokens": args.new_tokens, "runs": args.runs, "settings": SETTINGS,
           "rewards": rewards.names, "machine": _machine(), "rounds": rounds, "median": med, "split": split,
           **{k: v for k, v in med.items() if k.startswith(("rollout_speedup", "update_speedup"))},
           "reward_work_ms_per_step": work,
           "warmup_s": warmup}  # one call each; pd_compiled's includes its compile (inductor's disk cache helps)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"{'path':<16}{'rollout s':>11}{'reward s':>10}{'learn s':>9}")
    for name, s in split.items():
        print(f"{name:<16}{s['rollout_s']:>11.3f}{s['reward_s']:>10.3f}{s['learn_s']:>9.3f}")
    print(f"reward work alone: {work['all_candidates']:.2f} ms a step scoring every candidate, "
          f"{work['chosen']:.2f} ms the chosen tokens only")
    for path in compared:
        suffix = path[2:]
        print(f"rollout + rewards: {path} {med[path + '_s']:.3f} s vs HF + Python {med['hf_s']:.3f} s (medians); "
              f"median per-round ratios: rollout {med['rollout_speedup' + suffix]:.2f}x, "
              f"whole update {med['update_speedup' + suffix]:.2f}x")


if __name__ == "__main__":
    main()
