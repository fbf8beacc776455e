"""``proxdecode``: generate with proximal rewards, see them per token, and benchmark.

    proxdecode generate "I like to eat" --reward ends-with:. --reward keywords:apple,orange \\
        --steer 2 -n 4 --max-new-tokens 32 --seed 0
    proxdecode demo
    proxdecode bench --batch 1 8 32
    proxdecode rate --out ratings.jsonl      # rate continuations 1-5, for HumanFeedback
    proxdecode train "Today is a" --reward sentiment --steps 10 --log metrics.jsonl

A reward is ``name[:args][=weight]`` (or a ``--rewards rewards.toml`` file); ``--json``
prints one JSON document instead of the coloured view.
"""

from __future__ import annotations

import argparse
import json
import sys

from .argtypes import HelpWithDefaults, at_least, number, prompt


def _reward_entries(specs, config, prompts: int) -> list:
    """``--reward`` specs and a ``--rewards`` TOML file read and checked against each other
    and the number of ``prompts``, before any model loads (``registry.Entry`` each:
    ``.build(model)`` gives the family)."""
    from .rewards import registry

    entries = [registry.parse_spec(s) for s in specs] + (registry.read_config(config) if config else [])
    registry.check_names(entries)
    registry.check_prompts(entries, prompts)
    return entries


def _generate(model, tok, prompts, entries, args, steer):
    import proxdecode as pd

    families = [entry.build(model) for entry in entries]
    rewards = pd.Rewards(tok, families) if families else None
    enc = tok(prompts, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=args.max_new_tokens, num_return_sequences=args.n,
              do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
              no_repeat_ngram_size=args.no_repeat_ngram_size, return_dict_in_generate=True)
    return pd.generate(model, **enc, rewards=rewards, steer=steer, gamma=args.gamma, seed=args.seed,
                       **_engine(args), **kw)


def _rows(out, tok, prompts, n):
    """One dict per completion: text, per-token pieces, rewards and the return."""
    rows = []
    for i in range(out.tokens.shape[0]):
        L = int(out.mask[i].sum())
        ids = out.tokens[i, :L].tolist()
        rows.append({
            "prompt": prompts[i // n], "text": tok.decode(ids, skip_special_tokens=True),
            "tokens": ids, "pieces": [tok.decode([t]) for t in ids],
            "rewards": [round(float(r), 6) for r in out.rewards[i, :L]],
            "components": {k: [round(float(r), 6) for r in v[i, :L]] for k, v in out.reward_components.items()},
            "logprobs": [round(float(r), 6) for r in out.logprobs[i, :L]],
            "return": round(float(out.returns[i, 0]), 6) if L else 0.0,
        })
    return rows


def _render(console, rows, title):
    from rich.panel import Panel
    from rich.text import Text

    for r in rows:
        text = Text()
        for piece, rew in zip(r["pieces"], r["rewards"]):
            style = "bold green" if rew > 1e-9 else "bold red" if rew < -1e-9 else ""
            text.append(piece, style=style)
        console.print(Panel(text, title=f"{title}{r['prompt']!r}", subtitle=f"return {r['return']:+.3f}",
                            subtitle_align="right"))


def cmd_generate(args):
    import proxdecode as pd
    from rich.console import Console

    entries = _reward_entries(args.reward, args.rewards, len(args.prompts))
    if args.steer != 0 and not entries:
        raise ValueError("--steer needs a --reward or a --rewards file (there is nothing to steer with)")
    model, tok = pd.load_model(args.model, dtype=args.dtype)
    out = _generate(model, tok, args.prompts, entries, args, args.steer)
    rows = _rows(out, tok, args.prompts, args.n)
    if args.json:
        print(json.dumps({"steer": args.steer, "rewards": args.reward, "rewards_config": args.rewards,
                          "completions": rows}))
        return
    console = Console()
    console.print("[dim]tokens coloured by proximal reward: [green]> 0[/green], [red]< 0[/red][/dim]")
    _render(console, rows, "")


def cmd_demo(args):
    """The seed's two prompts, unsteered and steered, side by side."""
    import proxdecode as pd
    from rich.console import Console
    from rich.table import Table

    prompts = ["I like to eat", "Today is a"]
    specs = ["ends-with:.", "keywords:apple,orange"]
    entries = _reward_entries(specs, None, len(prompts))
    model, tok = pd.load_model(args.model, dtype=args.dtype)
    console = Console()
    table = Table(title=f"proxdecode demo: rewards {specs}, {args.n} samples per prompt, seed {args.seed}")
    table.add_column("prompt")
    for steer in (0.0, args.steer):
        table.add_column(f"steer = {steer:g}", ratio=1)
    results = [_rows(_generate(model, tok, prompts, entries, args, s), tok, prompts, args.n)
               for s in (0.0, args.steer)]
    for i in range(len(prompts) * args.n):
        table.add_row(results[0][i]["prompt"],
                      *[f"{r[i]['text']}\n[dim]return {r[i]['return']:+.2f}[/dim]" for r in results])
    console.print(table)
    for s, rows in zip((0.0, args.steer), results):
        mean = sum(r["return"] for r in rows) / len(rows)
        dot = sum(r["text"].endswith(".") for r in rows) / len(rows)
        console.print(f"steer {s:g}: mean return {mean:+.3f}, ends with '.' {dot:.0%}")


def cmd_bench(args):
    import torch
    from rich.console import Console
    from rich.table import Table

    from . import bench

    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"--device {args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this torch sees no CUDA device")
    if (args.rewards or args.steering) and (device.type != "cpu" or args.dtype != "float32"):
        raise ValueError("--rewards and --steering run the default model in float32 on the CPU "
                         "(benchmarks/gpu.sh measures the rewards on a GPU); drop --device and --dtype")
    if args.no_repeat_ngram_size and (args.rewards or args.steering or args.cache_ab):
        raise ValueError("--no-repeat-ngram-size applies to the end-to-end timing only; drop it with --rewards, "
                         "--steering or --cache-ab")
    if args.rewards or args.steering:
        return _bench_rewards(args)
    if args.cache_ab:
        import proxdecode as pd

        model, tok = pd.load_model(dtype=args.dtype, device=args.device)
        rows = [bench.time_cache_ab(model, tok, b, args.new_tokens, args.runs, _engine(args)) for b in args.batch]
        for r in rows:
            print(f"batch {r['batch']}: static cache {r['static_speedup']:.3f}x the dynamic one "
                  f"(median of {r['runs']} alternating runs)", file=sys.stderr)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"dtype": args.dtype, "device": args.device, "rows": rows, **bench._machine()}, f, indent=2)
        print(json.dumps(rows))
        return
    engine = dict(_engine(args), cache_implementation=args.cache)
    settings = dict(bench.SETTINGS)
    if args.no_repeat_ngram_size:  # HF's processor on both sides: pd runs it through hf_processing
        settings["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    res = bench.run(tuple(args.batch), args.new_tokens, args.runs, args.dtype, args.device,
                    memory=not args.no_memory, out_path=args.out, engine=engine, settings=settings)
    compile_ = {None: "as HF decides", True: "on", False: "off"}[args.compile]
    table = Table(title=f"pd.generate (step {args.backend}, linear {args.linear}, compile {compile_}) "
                        "vs model.generate, "
                        f"{res['model']} {args.dtype}, "
                        f"{args.new_tokens} new tokens, {settings}")
    memory = () if args.no_memory else ("HF peak MiB", "pd peak MiB")
    for c in ("batch", "HF tok/s", "pd tok/s", "speedup", *memory):
        table.add_column(c, justify="right")
    for r in res["rows"]:
        peaks = () if args.no_memory else (f"{r['hf_peak_mib']:.0f}", f"{r['pd_peak_mib']:.0f}")
        table.add_row(str(r["batch"]), f"{r['hf_tok_s']:.1f}", f"{r['pd_tok_s']:.1f}", f"{r['speedup']:.2f}x", *peaks)
    Console(stderr=True).print(table)
    print(json.dumps(res))


def cmd_train(args):
    """The minimal on-policy loop of ``pd.rl.train`` on the default (or a local) model."""
    import proxdecode as pd
    from rich.console import Console

    entries = _reward_entries(args.reward, args.rewards, len(args.prompts))
    if not entries:
        raise ValueError("train needs at least one --reward or a --rewards file")
    model, tok = pd.load_model(args.model)
    families = [entry.build(model) for entry in entries]
    layers = len(model.model.layers)
    if args.train_layers > layers:
        raise ValueError(f"--train-layers must be in [0, {layers}] (the model's layers; 0: all), "
                         f"got {args.train_layers}")
    if args.train_layers:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in [*model.model.layers[-args.train_layers:].parameters(), *model.model.norm.parameters()]:
            p.requires_grad_(True)
    sampling = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p") if getattr(args, k) is not None}
    hist = pd.rl.train(model, tok, args.prompts, pd.Rewards(tok, families), args.steps,
                       group_size=args.group_size, max_new_tokens=args.max_new_tokens, lr=args.lr,
                       algo=args.algo, gamma=args.gamma, steer=args.steer, sparse=args.sparse,
                       entropy_coef=args.entropy_coef, **sampling,
                       seed=args.seed, log_path=args.log, **_engine(args))
    console = Console(stderr=True)
    for h in hist:
        console.print(f"step {h['step']:3d}  reward {h['reward']:+.3f}  loss {h['loss']:+.4f}  "
                      f"entropy {h['entropy']:.3f}  {h['tokens_per_s']:.1f} tok/s")
    if args.save:
        model.save_pretrained(args.save)
        tok.save_pretrained(args.save)
        console.print(f"saved to {args.save}")


def _bench_rewards(args):
    from rich.console import Console
    from rich.table import Table

    from . import bench_rewards

    console = Console(stderr=True)
    if args.rewards:
        res = bench_rewards.rewards_speed(args.batch[0], args.new_tokens, args.runs, engine=_engine(args))
        t = Table(title=f"rewards at batch {res['batch']}, {res['new_tokens']} new tokens, steer {res['steer']}")
        for c in ("decoder", "tok/s", "reward work ms/step"):
            t.add_column(c, justify="right")
        t.add_row("pd.generate, no rewards", f"{res['tok_s']['pd']:.1f}", "-")
        t.add_row("pd.generate, full stack", f"{res['tok_s']['pd_rewards']:.1f}",
                  f"{res['reward_step_ms']['pd_rewards']:.2f}")
        t.add_row("HF + seed-style processor", f"{res['tok_s']['seed_style']:.1f}",
                  f"{res['reward_step_ms']['seed_style']:.2f}")
        console.print(t)
        console.print(f"full stack / no rewards {res['rewards_vs_none']:.2f}x; full stack / seed-style "
                      f"{res['rewards_vs_seed_style']:.2f}x end to end, {res['reward_step_speedup']:.0f}x "
                      f"on the reward work alone")
        console.print("the step after the forward (rewards + sampling + bookkeeping), ms: "
                      + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k}: {v}"
                                  for k, v in res["step_after_forward_ms"].items()))
    else:
        res = bench_rewards.steering(engine=_engine(args))
        t = Table(title="Sentiment steering, default model, 64 continuations a cell")
        for c in ("beta", "TextBlob polarity", "perplexity", "distinct-2"):
            t.add_column(c, justify="right")
        for c in res["sentiment"]:
            t.add_row(f"{c['beta']:g}", f"{c['polarity']:+.3f}", f"{c['perplexity']:.2f}", f"{c['distinct_2']:.3f}")
        console.print(t)
        console.print(f"fidelity (Spearman, summed rewards vs TextBlob, n={res['fidelity_n']}): "
                      f"{res['fidelity_spearman']:.3f}")
        for row in res["tasks"]:
            console.print(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    print(json.dumps(res))


def _sampling_args(p, n=1):
    p.add_argument("--model", default=None, help="local HF model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the model's weights")
    p.add_argument("-n", type=at_least(1), default=n, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=at_least(1), default=32, help="tokens per completion, at most")
    p.add_argument("--temperature", type=number(0.0, low_open=True), default=1.0, help="> 0")
    p.add_argument("--top-k", type=at_least(0), default=50, help="0: no top-k")
    p.add_argument("--top-p", type=number(0.0, 1.0, low_open=True), default=1.0, help="in (0, 1]; 1: no top-p")
    p.add_argument("--min-p", type=number(0.0, 1.0), default=0.0, help="in [0, 1]; 0: no min-p")
    p.add_argument("--repetition-penalty", type=number(0.0, low_open=True), default=1.0,
                   help="> 0; HF's: seen tokens' logits divided (positive) or multiplied (negative) by it")
    p.add_argument("--no-repeat-ngram-size", type=at_least(0), default=0,
                   help="no n-gram of this size twice, prompt included (HF's processor); 0: off")
    p.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    p.add_argument("--gamma", type=number(0.0, 1.0), default=1.0, help="discount of the returns, in [0, 1]")
    p.add_argument("--seed", type=at_least(0), default=0, help="prompt i samples with seed + i")
    _engine_args(p)


def _engine_args(p):
    """pd.generate's own options: how the step and the model forward run."""
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "cpp", "triton"],
                   help="decode step implementation (auto: C++ on CPU, Triton on CUDA)")
    p.add_argument("--linear", default="torch", choices=["torch", "onednn"],
                   help="the model's linear layers: torch (HF's exact logits) or onednn (packed weights, CPU)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the forward, and with rewards the step after it too, or not (default: as HF "
                        "decides; one compile per shape)")


def _reward_args(p):
    from .rewards.registry import syntax

    p.add_argument("--reward", action="append", default=[], metavar="NAME[:ARGS][=WEIGHT]",
                   help="a reward family (repeatable): " + syntax())
    p.add_argument("--rewards", default=None, metavar="TOML",
                   help="reward families from a TOML file: [[reward]] tables, each with type = NAME and "
                        "the family's keyword arguments, e.g. words = [\"apple\"] (a key the family does not "
                        "take is refused with the list of those it does)")


def _engine(args) -> dict:
    return dict(backend=args.backend, linear=args.linear, compile=args.compile)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="proxdecode", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    fmt = dict(formatter_class=HelpWithDefaults)
    steer = dict(type=number(), help="beta: sample from softmax(z / T + beta * R) inside the candidate set; "
                                      "0 is plain sampling")
    g = sub.add_parser("generate", help="generate and show per-token rewards", **fmt)
    g.add_argument("prompts", nargs="+", type=prompt)
    _reward_args(g)
    g.add_argument("--steer", default=0.0, **steer)
    g.add_argument("--json", action="store_true", help="print one JSON document instead of the coloured view")
    _sampling_args(g)
    d = sub.add_parser("demo", help="the seed's prompts with and without steering", **fmt)
    d.add_argument("--steer", default=2.0, **steer)
    _sampling_args(d, n=3)
    b = sub.add_parser("bench", help="tokens/s against model.generate", **fmt)
    b.add_argument("--batch", type=at_least(1), nargs="+", default=[1, 8, 32], help="batch sizes to time")
    b.add_argument("--new-tokens", type=at_least(1), default=64, help="tokens per row, exactly")
    b.add_argument("--runs", type=at_least(1), default=3, help="alternating runs; the median counts")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the model's weights")
    b.add_argument("--device", default="cpu", help="cpu or cuda")
    b.add_argument("--cache", choices=["static", "dynamic"], default=None,
                   help="pd.generate's KV cache (default: as pd.generate decides, dynamic for an eager step on CPU, "
                        "else static)")
    b.add_argument("--cache-ab", action="store_true",
                   help="instead: pd.generate with the static vs the dynamic cache, alternating")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    b.add_argument("--no-repeat-ngram-size", type=at_least(0), default=0,
                   help="both sides also run HF's no-repeat-n-gram processor (pd's slow path: HF's own "
                        "processors between the forward and the fused step); 0: off")
    b.add_argument("--rewards", action="store_true",
                   help="instead: the full reward stack vs no rewards vs the seed-style baseline (first --batch)")
    b.add_argument("--steering", action="store_true", help="instead: what steering does to the text")
    _engine_args(b)
    b.add_argument("--out", default=None, help="also write the JSON result here")
    t = sub.add_parser("train", help="on-policy updates from proximal rewards (pd.rl.train)", **fmt)
    t.add_argument("prompts", nargs="+", type=prompt)
    _reward_args(t)
    t.add_argument("--model", default=None, help="local HF model folder (default: SmolLM2-135M-Instruct)")
    t.add_argument("--steps", type=at_least(1), default=10, help="updates (each a rollout of every prompt)")
    t.add_argument("--group-size", type=at_least(1), default=4, help="completions per prompt per update")
    t.add_argument("--max-new-tokens", type=at_least(1), default=32, help="tokens per completion, at most")
    t.add_argument("--lr", type=number(0.0, 1.0, low_open=True), default=1e-5, help="AdamW learning rate")
    t.add_argument("--algo", choices=["reinforce", "ppo"], default="ppo", help="the policy-gradient loss")
    t.add_argument("--gamma", type=number(0.0, 1.0), default=1.0, help="discount of the returns, in [0, 1]")
    t.add_argument("--steer", default=0.0, **steer)
    as_model = " (default: the model's generation config)"
    t.add_argument("--temperature", type=number(0.0, low_open=True), help="the rollouts' temperature, > 0" + as_model)
    t.add_argument("--top-k", type=at_least(0), help="the rollouts' top-k, 0: none" + as_model)
    t.add_argument("--top-p", type=number(0.0, 1.0, low_open=True), help="the rollouts' top-p, in (0, 1]" + as_model)
    t.add_argument("--entropy-coef", type=number(0.0), default=0.0, help="weight of the entropy bonus")
    t.add_argument("--sparse", action="store_true", help="give each row's reward sum on its last token only")
    t.add_argument("--train-layers", type=at_least(0), default=0, help="train only the last N layers (0: all)")
    t.add_argument("--seed", type=at_least(0), default=0, help="update s samples with seed + 1000 * s")
    t.add_argument("--log", default=None, help="append per-step metrics here (JSONL)")
    _engine_args(t)
    t.add_argument("--save", default=None, help="save the trained model and tokenizer here")
    from . import rate

    rate.add_parser(sub)
    args = ap.parse_args(argv)
    if getattr(args, "greedy", False) and args.n > 1:  # HF refuses it, after the model loads
        {"generate": g, "demo": d}[args.cmd].error(
            f"--greedy gives one completion per prompt, and -n is {args.n}: more than one needs sampling "
            "(drop --greedy, or pass -n 1)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        {"generate": cmd_generate, "demo": cmd_demo, "bench": cmd_bench, "rate": rate.main,
         "train": cmd_train}[args.cmd](args)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"proxdecode {args.cmd}: {e}")


if __name__ == "__main__":
    sys.exit(main())
