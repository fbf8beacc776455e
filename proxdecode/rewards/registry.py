"""Reward families by name: the CLI's ``--reward name[:args][=weight]`` and ``rewards.toml``.

A config file is data, never code: it names families and gives their keyword arguments,
which are checked against the family's constructor before anything runs. ::

    [[reward]]
    type = "sentiment"
    weight = 1.0

    [[reward]]
    type = "keywords"
    words = ["apple", "orange"]
    require_all = true

    [[reward]]
    type = "human"            # HumanFeedback.from_ratings
    ratings = "ratings.jsonl"

Arguments that are models are given as paths (``kl``'s and ``fluency``'s ``reference``)
or filled in with the policy (``topic``'s embeddings come from the model being decoded).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path


def _words(arg: str) -> list[str]:
    return [w for w in arg.split(",") if w]


# CLI name -> (class name in pd.rewards, how the text after ':' maps to keyword arguments)
FAMILIES = {
    "ends-with": ("EndsWith", lambda a: {"suffix": a} if a else {}),
    "keywords": ("Keywords", lambda a: {"words": _words(a)}),
    "words": ("WordList", lambda a: {"words": _words(a)}),
    "repetition": ("Repetition", lambda a: {"n": int(a)} if a else {}),
    "length": ("Length", lambda a: dict(zip(("min_tokens", "max_tokens"),
                                            [int(x) if x else None for x in a.split(",")])) if a else {}),
    "capitalization": ("Capitalization", lambda a: {}),
    "sentiment": ("Sentiment", lambda a: {}),
    "topic": ("Topic", lambda a: {"words": _words(a)}),
    "fluency": ("Fluency", lambda a: {"reference": a} if a else {}),
    "kl": ("KLPenalty", lambda a: {"reference": a} if a else {}),
    "overlap": ("Overlap", lambda a: {"references": a} if a else {}),
    "human": ("HumanFeedback", lambda a: {"ratings": a} if a else {}),
}


def known() -> list[str]:
    return sorted(FAMILIES)


def build(kind: str, kwargs: dict, model=None, where: str = "reward"):
    """One family from its registry name and keyword arguments (checked against its signature)."""
    from .. import models, rewards

    if kind not in FAMILIES:
        raise ValueError(f"{where}: unknown reward {kind!r}; known: {', '.join(known())}")
    cls = getattr(rewards, FAMILIES[kind][0])
    kwargs = dict(kwargs)
    if "weight" in kwargs:
        w = kwargs["weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"{where}: weight must be a finite number, got {w!r}")
    if isinstance(kwargs.get("reference"), str):  # a model given by path
        kwargs["reference"], _ = models.load_model(kwargs["reference"] or None)
    if kind == "topic" and "embeddings" not in kwargs:
        kwargs["model"] = model
    factory = cls
    if kind == "human":
        factory = cls.from_ratings
        kwargs["path"] = kwargs.pop("ratings", None)
    allowed = [n for n, p in inspect.signature(factory).parameters.items()
               if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"]
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise ValueError(f"{where}: {kind} takes {', '.join(allowed)}; got unknown {', '.join(extra)}")
    try:
        return factory(**kwargs)
    except TypeError as e:  # a missing required argument
        raise ValueError(f"{where}: {kind}: {e}") from e


def from_spec(spec: str, model=None):
    """``name[:args][=weight]`` -> a family, e.g. ``keywords:apple,orange=0.5``."""
    body, weight = spec, None
    head, sep, tail = spec.rpartition("=")
    if sep:
        try:
            weight, body = float(tail), head
        except ValueError:
            pass  # an '=' inside the arguments
    name, _, arg = body.partition(":")
    if name not in FAMILIES:
        raise ValueError(f"--reward {spec}: unknown reward {name!r}; known: {', '.join(known())}")
    kwargs = FAMILIES[name][1](arg)
    if weight is not None:
        kwargs["weight"] = weight
    return build(name, kwargs, model, where=f"--reward {spec}")


def from_config(path, model=None) -> list:
    """The families listed as ``[[reward]]`` tables in a TOML file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"rewards config {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"rewards config {path}: not valid TOML: {e}") from None
    entries = doc.get("reward")
    if not isinstance(entries, list) or not entries or set(doc) - {"reward"}:
        raise ValueError(f"rewards config {path}: expected one or more [[reward]] tables and nothing else")
    out = []
    for i, entry in enumerate(entries, 1):
        entry = dict(entry)
        kind = entry.pop("type", None)
        if kind is None:
            raise ValueError(f"rewards config {path}: reward #{i} has no 'type' (known: {', '.join(known())})")
        out.append(build(kind, entry, model, where=f"rewards config {path}, reward #{i}"))
    return out
