"""``proxdecode bench --rewards`` and ``--steering``: what rewards cost, and what steering buys.

``rewards_speed``: tokens/s at one batch, in one process, alternating, median of ``runs``:
``pd.generate`` without rewards, with the full stack steering (Sentiment, EndsWith,
Keywords, Repetition, Fluency), and the seed-style baseline: HF ``generate`` with a
``LogitsProcessor`` that, every step, decodes the text of each row's top-20 candidates and
scores it with TextBlob and the seed's rule in Python. That is how the seed's
``get_reward(text)`` grows into reward-guided decoding (ARGS with k = 20), and it is what
people write today. The reward work alone (one step's rewards, same logits) is timed too,
since on a CPU the model forward dominates both loops.

``steering``: on the default model, fixed seeds, >= 64 continuations a cell: Sentiment
steering at several beta against TextBlob polarity, perplexity under the unsteered model
(from ``Rollout.policy_logprobs``, no extra pass) and distinct-2; the fidelity of the
vectorised Sentiment (Spearman against TextBlob over every continuation); and the rule
and task rewards (Keywords, EndsWith, Overlap vs sacrebleu) at beta = 0 and a chosen beta.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time

import torch

from .bench import SETTINGS, _alternating, _inputs, _machine, _sync

TOP_CANDIDATES = 20


def seed_get_reward(text: str) -> float:
    """The seed write-up's rule (section 5.1), verbatim."""
    if not text.endswith('.'):
        return -1
    if "apple" in text and "orange" in text:
        return 1
    return 0


def seed_style_processor(tokenizer, prompt_len: int, beta: float):
    """A HF ``LogitsProcessor``: top-20 candidates per row, each decoded and scored in Python."""
    from textblob import TextBlob
    from transformers import LogitsProcessor

    class SeedStyle(LogitsProcessor):
        def __call__(self, input_ids, scores):
            vals, idx = scores.topk(TOP_CANDIDATES, dim=-1)  # [B, 20]
            rewards = []
            for b in range(scores.shape[0]):
                prefix = input_ids[b, prompt_len:].tolist()
                texts = tokenizer.batch_decode([prefix + [c] for c in idx[b].tolist()], skip_special_tokens=True)
                rewards.append([TextBlob(t).sentiment.polarity + seed_get_reward(t) for t in texts])
            r = torch.tensor([[beta * x for x in row] for row in rewards], dtype=vals.dtype, device=vals.device)
            return torch.full_like(scores, float("-inf")).scatter_(1, idx, vals + r)  # [B, V]
    return SeedStyle()


def full_stack(tok):
    """The issue's full reward stack."""
    import proxdecode as pd

    R = pd.rewards
    return pd.Rewards(tok, [R.Sentiment(), R.EndsWith(".", weight=0.5), R.Keywords(["apple", "orange"]),
                            R.Repetition(weight=-0.5), R.Fluency(weight=0.1)])


def rewards_speed(batch: int = 8, new_tokens: int = 32, runs: int = 3, steer: float = 2.0,
                  engine: dict | None = None, model=None, tok=None, step_costs: bool = True) -> dict:
    """``engine``: pd.generate's own options (backend, linear, compile) for both pd rows;
    ``model``/``tok``: the default model when None (``benchmarks/gpu.py`` passes a
    random-weight one); ``step_costs``: also time one step's reward work and the step after
    the forward, and count its ops (the same whatever ``engine`` is: a second engine on the
    same model can skip them)."""
    import proxdecode as pd
    from transformers import LogitsProcessorList

    if model is None:
        model, tok = pd.load_model()
    device = model.device
    enc = _inputs(tok, batch, device)
    P = enc["input_ids"].shape[1]
    t0 = time.perf_counter()
    rewards = full_stack(tok)  # once per process (token tables, tries): outside every timed call
    build_s = time.perf_counter() - t0

    def pd_call(with_rewards):
        def run(n, seed):
            kw = dict(SETTINGS, max_new_tokens=n or new_tokens, min_new_tokens=n or new_tokens)
            if with_rewards:
                return pd.generate(model, **enc, **kw, rewards=rewards, steer=steer, seed=seed, **(engine or {}))
            return pd.generate(model, **enc, **kw, seed=seed, **(engine or {}))
        return run

    def seed_call(n, seed):
        torch.manual_seed(seed)
        with torch.inference_mode():  # as pd.generate runs
            return model.generate(**enc, **SETTINGS, max_new_tokens=n or new_tokens,
                                  min_new_tokens=n or new_tokens,
                                  logits_processor=LogitsProcessorList([seed_style_processor(tok, P, steer)]))

    times = _alternating({"pd": pd_call(False), "pd_rewards": pd_call(True), "seed_style": seed_call},
                         runs, device, engine)
    med = {k: statistics.median(v) for k, v in times.items()}
    tok_s = {k: batch * new_tokens / v for k, v in med.items()}
    res = {
        "batch": batch, "new_tokens": new_tokens, "runs": runs, "steer": steer, "settings": SETTINGS,
        "pd_engine": engine or {}, "stack": rewards.names, "stack_build_s": build_s, "seconds": times, "tok_s": tok_s,
        "rewards_vs_none": tok_s["pd_rewards"] / tok_s["pd"],
        "rewards_vs_seed_style": tok_s["pd_rewards"] / tok_s["seed_style"],
        **_machine(),
    }
    if not step_costs:
        return res

    # the reward work alone, one step, the same logits and history
    logits = torch.randn(batch, model.config.vocab_size, device=device) * 3
    history = torch.randint(0, 1000, (batch, 16), device=device)
    run = rewards.start(model.config.vocab_size, batch, device, None, enc["input_ids"], enc["attention_mask"],
                        new_tokens)
    alive = torch.ones(batch, dtype=torch.bool, device=device)  # [B]
    for t in range(history.shape[1]):
        run.score(logits)
        run.record(history[:, t], alive)
    proc = seed_style_processor(tok, 0, steer)

    def ours():
        r = run.score(logits)
        run.record(r.argmax(-1), alive)

    reward_ms = {"pd_rewards": _median_ms(ours, device=device),
                 "seed_style": _median_ms(lambda: proc(history, logits), device=device)}
    ops = dispatch_ops(run, logits, alive)
    step_ms = step_after_forward_ms(model, rewards, enc, steer, new_tokens, logits)
    return dict(res, reward_step_ms=reward_ms, reward_step_speedup=reward_ms["seed_style"] / reward_ms["pd_rewards"],
                step_after_forward_ms=step_ms, dispatch_ops=ops)


def dispatch_ops(run, logits, alive) -> dict:
    """Ops each family dispatches in one eager step, ``{name: {"score": n, "update": n}}``:
    every ATen op but views, i.e. about one kernel launch each on a GPU, where an eager step
    of many small ops is bound by launches rather than by work. Advances ``run``'s state by
    one token per row."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.n += not (isinstance(out, torch.Tensor) and out._is_view())
            return out

    tokens = logits.argmax(-1)  # [B]
    out = {}
    for (_, f), st in zip(run.b.live, run.states):
        with Count() as score:
            f.score(st, logits)
        with Count() as update:
            f.update(st, tokens, alive)
        out[f.name] = {"score": score.n, "update": update.n}
    return out


def step_after_forward_ms(model, rewards, enc, steer: float, new_tokens: int, logits) -> dict:
    """Median ms of everything a steering step runs after the forward (``engine.sample_one``:
    the candidates' rewards, the step, the rollout's columns, the reward state), eager with
    the ``backend="auto"`` step and, where inductor can build, compiled as ``compile=True``
    compiles it but in inductor's ``mode="default"`` (``compile=True`` takes the model's
    compile config, "reduce-overhead": on a GPU a CUDA graph too; on a CPU the same code);
    both on the same ``logits``, one fresh call state per timing."""
    import shutil

    from . import engine
    from .config import DecodeConfig
    from .step import sample_step, select_step

    ids, mask = enc["input_ids"], enc["attention_mask"]
    B, V = logits.shape
    cfg = DecodeConfig.resolve(model, ids, mask, steer=steer, gamma=1.0, seed=0, rewards=rewards,
                               kwargs=dict(SETTINGS, max_new_tokens=new_tokens), backend="auto", compile=False,
                               linear="torch")
    t_dev = torch.zeros((), dtype=torch.long, device=logits.device)

    def timed(sample, step_fn, tensor_step):
        run = rewards.start(V, B, logits.device, None, ids, mask, new_tokens)
        buf = engine._Buffers.start(cfg, ids, mask, B, new_tokens, len(run.names), V)
        steps = itertools.cycle(range(new_tokens))

        def one():
            t = next(steps)
            buf.alive.fill_(True)
            sample(step_fn, cfg, run, buf, logits, t_dev.fill_(t) if tensor_step else t, False)
        with torch.inference_mode():
            return _median_ms(one, reps=31, device=logits.device)

    out = {"eager": timed(engine.sample_one, select_step("auto", logits.device), False)}
    if logits.device.type == "cuda" or shutil.which("g++") is not None:  # inductor's CPU code needs g++
        from transformers import CompileConfig

        try:
            compiled = engine._compiled_sample_one(model, CompileConfig(dynamic=False, mode="default"), True)
            out["compiled"] = timed(compiled, sample_step, True)
        except Exception as e:  # noqa: BLE001 - the eager row and the end-to-end rows still stand
            out["compiled_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    return out


def _median_ms(fn, reps: int = 15, device=None) -> float:
    """Median wall-clock ms of ``fn()``, the device synchronised around each call."""
    device = torch.device(device or "cpu")
    fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


# ----------------------------------------------------------------------------- steering

SENTIMENT_PROMPTS = ["Today is a", "I think that the movie", "The weather this morning",
                     "My neighbour told me that", "The new restaurant downtown", "Yesterday I saw",
                     "The meeting at work", "When I opened the box,"]


def _texts(tok, out) -> list[str]:
    return [tok.decode(out.tokens[b, : int(out.mask[b].sum())], skip_special_tokens=True)
            for b in range(out.tokens.shape[0])]


def distinct_n(texts, n: int = 2) -> float:
    """Mean over texts of distinct word n-grams / n-grams (Li et al., 2016)."""
    vals = []
    for t in texts:
        w = t.split()
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        if grams:
            vals.append(len(set(grams)) / len(grams))
    return sum(vals) / len(vals) if vals else 0.0


def _perplexity(out) -> float:
    """exp of the mean negative log-prob of the chosen tokens under the unsteered model."""
    m = out.mask
    return math.exp(float(-(out.policy_logprobs * m).sum() / m.sum()))


def _chat(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                   add_generation_prompt=True)


def steering(per_prompt: int = 8, new_tokens: int = 32, betas=(0, 1, 2, 4, 8), rule_beta: float = 8.0,
             engine: dict | None = None) -> dict:
    import proxdecode as pd
    import sacrebleu
    from scipy.stats import spearmanr
    from textblob import TextBlob

    model, tok = pd.load_model()
    R = pd.rewards
    kw = dict(max_new_tokens=new_tokens, do_sample=True, top_k=50, temperature=1.0,
              num_return_sequences=per_prompt, **(engine or {}))
    enc = tok(SENTIMENT_PROMPTS, return_tensors="pt", padding=True)
    sentiment = pd.Rewards(tok, [R.Sentiment()])
    cells, summed, polar = [], [], []
    for beta in betas:
        out = pd.generate(model, **enc, rewards=sentiment, steer=float(beta), seed=1234, **kw)
        texts = _texts(tok, out)
        pol = [TextBlob(t).sentiment.polarity for t in texts]
        summed += out.reward_components["sentiment"].sum(1).tolist()
        polar += pol
        cells.append({"beta": beta, "n": len(texts), "polarity": statistics.mean(pol),
                      "perplexity": _perplexity(out), "distinct_2": distinct_n(texts),
                      "example": texts[0]})
    base = cells[0]
    ok = [c for c in cells if c["perplexity"] <= 1.5 * base["perplexity"]]
    best = max(ok, key=lambda c: c["polarity"])
    fidelity = float(spearmanr(summed, polar).statistic)

    tasks = []
    rule_prompts = [_chat(tok, "Write one sentence about what you like to eat."),
                    _chat(tok, "Write one sentence about fruit.")]
    enc_r = tok(rule_prompts, return_tensors="pt", padding=True)
    # Keywords steers with the fraction of the words mentioned (require_all=False): the seed's
    # both-or-nothing rule as a potential is 0 until the last word, so it gives steering
    # nothing to follow at the first one (measured beside it). The rates are the seed's rule
    # and "any" on the text.
    mentions = {"both": lambda t: float("apple" in t.lower() and "orange" in t.lower()),
                "any": lambda t: float("apple" in t.lower() or "orange" in t.lower())}
    for name, family, metrics in [
        ("keywords apple+orange", R.Keywords(["apple", "orange"], ignore_case=True), mentions),
        ("keywords apple+orange, all-or-nothing",
         R.Keywords(["apple", "orange"], require_all=True, ignore_case=True), mentions),
        ("ends with '.'", R.EndsWith("."), {"rate": lambda t: float(t.endswith("."))}),
    ]:
        rows = {m: {"task": f"{name}: {m}" if len(metrics) > 1 else name, "metric": "rate"} for m in metrics}
        for beta in (0.0, rule_beta):
            out = pd.generate(model, **enc_r, rewards=pd.Rewards(tok, [family]), steer=beta, seed=99,
                              **dict(kw, num_return_sequences=32, max_new_tokens=48))
            texts = _texts(tok, out)
            for m, fn in metrics.items():
                rows[m][f"beta={beta:g}"] = statistics.mean(fn(t) for t in texts)
        tasks += rows.values()
    for name, source, ref in TASKS:
        enc_t = tok([_chat(tok, source)], return_tensors="pt")
        row = {"task": name, "metric": "sacreBLEU"}
        for beta in (0.0, rule_beta):
            rewards = pd.Rewards(tok, [R.Overlap(ref, kind="bleu", weight=25.0)])  # ~ n * reference length
            out = pd.generate(model, **enc_t, rewards=rewards, steer=beta, seed=7,
                              **dict(kw, num_return_sequences=64, max_new_tokens=40))
            row[f"beta={beta:g}"] = statistics.mean(
                sacrebleu.sentence_bleu(t, [ref]).score for t in _texts(tok, out))
        tasks.append(row)
    return {"sentiment": cells, "chosen_beta": best["beta"],
            "polarity_gain": best["polarity"] - base["polarity"],
            "perplexity_ratio": best["perplexity"] / base["perplexity"], "fidelity_spearman": fidelity,
            "fidelity_n": len(summed), "rule_beta": rule_beta, "tasks": tasks, "pd_engine": engine or {},
            **_machine()}


TASKS = [  # the seed's section 6 cases: summarisation (ROUGE/BLEU) and translation (BLEU)
    ("translation en->fr", "Translate into French: I like to eat apples and oranges.",
     "J'aime manger des pommes et des oranges."),
    ("summary", "Summarise in one sentence: The city council met on Monday to discuss the new park. "
                "After a long debate, the members voted to build it next spring, using money from the "
                "state budget.",
     "The city council voted to build the new park next spring with state money."),
]
