"""``proxdecode rate``: a person rates generated texts 1-5, for ``HumanFeedback``.

    proxdecode rate --prompt "I like to eat" --prompt "Today is a" -n 3 --out ratings.jsonl

The seed's human-feedback reward (section 3.3) needs judgements, and judgements need a
quick loop: generate a few continuations per prompt, show each, ask for a rating, and
keep every answer. Each rating is appended to the JSONL file and flushed at once, so
quitting (``q``, Ctrl-C, end of input) never loses what was rated; running it again adds
to the file. ``HumanFeedback.from_ratings(path)`` (or ``--reward human:path``) fits
per-token weights from it.

At the prompt: 1-5 rates, ``s`` skips the text, ``q`` quits; anything else is refused
with a message and asked again. The CLI wires it in with ``add_parser`` and ``main``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .argtypes import HelpWithDefaults, at_least, number, prompt

DEFAULT_PROMPTS = ["I like to eat", "Today is a", "The best way to learn is"]  # the seed's two, and one more
ASK = "[bold]rating[/bold] 1-5 ([bold]s[/bold] skip, [bold]q[/bold] quit): "
QUIT = object()


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``rate`` subcommand to ``proxdecode``'s argparse subparsers."""
    p = subparsers.add_parser("rate", help="rate generated texts 1-5 into a JSONL file for HumanFeedback",
                              description=__doc__.split("\n")[0], formatter_class=HelpWithDefaults)
    p.add_argument("--prompt", action="append", default=None, dest="prompts", type=prompt,
                   help="a prompt to continue (repeatable; default: " + "; ".join(DEFAULT_PROMPTS) + ")")
    p.add_argument("-n", type=at_least(1), default=3, help="continuations per prompt")
    p.add_argument("--out", default="ratings.jsonl", help="JSONL file the ratings are appended to")
    p.add_argument("--model", default=None, help="local HF model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--tiny", action="store_true", help="a random-weight tiny model (tests; no weights needed)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the model's weights")
    p.add_argument("--max-new-tokens", type=at_least(1), default=32, help="tokens per text, at most")
    p.add_argument("--temperature", type=number(0.0, low_open=True), default=1.0, help="> 0")
    p.add_argument("--top-k", type=at_least(0), default=50, help="0: no top-k")
    p.add_argument("--top-p", type=number(0.0, 1.0, low_open=True), default=0.95, help="in (0, 1]; 1: no top-p")
    p.add_argument("--seed", type=at_least(0), default=0, help="prompt i samples with seed + i")
    return p


def ask_rating(console):
    """1-5, None (skip) or QUIT; re-asks until the answer is one of those."""
    while True:
        try:
            answer = console.input(ASK)
        except EOFError:  # input ran out: stop, keeping what was rated
            console.print()
            return QUIT
        if not sys.stdin.isatty():  # piped answers are not echoed by a terminal: show them
            console.print(answer, markup=False, highlight=False)
        answer = answer.strip().lower()
        if answer in ("q", "quit"):
            return QUIT
        if answer in ("s", "skip"):
            return None
        if answer in ("1", "2", "3", "4", "5"):
            return int(answer)
        console.print(f"[red]{answer!r} is not a rating:[/red] type a whole number from 1 to 5, "
                      f"s to skip this text, or q to quit")


def main(args, console=None) -> int:
    """Run the rating loop for parsed ``args`` (see ``add_parser``); returns 0."""
    import proxdecode as pd
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    console = console or Console()
    prompts = args.prompts or DEFAULT_PROMPTS
    out = Path(args.out)
    if out.exists() and not out.is_file():
        raise ValueError(f"--out {out} is not a file")
    with console.status("loading the model"):
        model, tok = pd.random_model("tiny") if args.tiny else pd.load_model(args.model, dtype=args.dtype)
    console.print(f"Rate each text 1 (bad) to 5 (good); ratings are appended to [bold]{out}[/bold].")
    saved, skipped, f = 0, 0, None
    try:
        for i, prompt in enumerate(prompts):
            enc = tok([prompt], return_tensors="pt")
            with console.status(f"generating {args.n} continuation(s) of {prompt!r}"):
                seqs = pd.generate(model, **enc, max_new_tokens=args.max_new_tokens, do_sample=True,
                                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                   num_return_sequences=args.n, seed=args.seed + i)
            P = enc["input_ids"].shape[1]
            for j, row in enumerate(seqs):
                text = tok.decode(row[P:], skip_special_tokens=True)
                shown = Text(prompt, style="dim") + Text(text or " (empty)", style="bold" if text else "italic")
                console.print(Panel(shown, title=f"prompt {i + 1}/{len(prompts)}, text {j + 1}/{args.n}",
                                    title_align="left"))
                rating = ask_rating(console)
                if rating is QUIT:
                    return _done(console, out, saved, skipped, quit=True)
                if rating is None:
                    skipped += 1
                    continue
                if f is None:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    f = out.open("a", encoding="utf-8")
                f.write(json.dumps({"text": text, "rating": rating, "prompt": prompt}, ensure_ascii=False) + "\n")
                f.flush()
                saved += 1
    except KeyboardInterrupt:
        return _done(console, out, saved, skipped, quit=True)
    finally:
        if f is not None:
            f.close()
    return _done(console, out, saved, skipped, quit=False)


def _done(console, out, saved, skipped, quit):
    how = "stopped" if quit else "done"
    console.print(f"{how}: {saved} rating(s) appended to {out}, {skipped} skipped.")
    if saved:
        console.print(f"Steer with them: [bold]--reward human:{out}[/bold] or "
                      f"pd.rewards.HumanFeedback.from_ratings({str(out)!r})")
    return 0


def _cli(argv=None) -> int:
    """``python -m proxdecode.rate ...``: the subcommand on its own."""
    ap = argparse.ArgumentParser(prog="proxdecode")
    add_parser(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(["rate", *(sys.argv[1:] if argv is None else argv)])
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        return main(args)
    except ValueError as e:
        raise SystemExit(f"proxdecode rate: {e}")


if __name__ == "__main__":
    sys.exit(_cli())
