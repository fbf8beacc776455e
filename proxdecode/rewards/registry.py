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
In a config file, relative paths are relative to the file's folder. Errors name the entry
(``--reward topic:,,``, ``rewards config F, reward #2``) and come before any model loads:
a family that takes a model is first built with stand-ins for its models, which runs its
own checks of everything else (``topic``'s words, ``kl``'s ``coef``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch


def _words(arg: str) -> list[str]:
    return [w for w in arg.split(",") if w]


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _lengths(arg: str) -> dict:
    parts = arg.split(",")
    if len(parts) > 2:
        raise ValueError(f"at most MIN,MAX, got {len(parts)} numbers")
    return {k: _whole(x) if x else None for k, x in zip(("min_tokens", "max_tokens"), parts)}


# CLI name -> (class name in pd.rewards, the text after ':' -> keyword arguments, its syntax)
FAMILIES = {
    "ends-with": ("EndsWith", lambda a: {"suffix": a}, "ends-with[:SUFFIX] (default '.')"),
    "keywords": ("Keywords", lambda a: {"words": _words(a)}, "keywords:WORD,WORD,..."),
    "words": ("WordList", lambda a: {"words": _words(a)}, "words:WORD,WORD,..."),
    "repetition": ("Repetition", lambda a: {"n": _whole(a)}, "repetition[:N] (repeated token N-grams, default 1)"),
    "length": ("Length", _lengths, "length:MIN[,MAX] (tokens; either may be empty)"),
    "capitalization": ("Capitalization", None, "capitalization (no arguments)"),
    "sentiment": ("Sentiment", None, "sentiment (no arguments)"),
    "topic": ("Topic", lambda a: {"words": _words(a)}, "topic:WORD,WORD,..."),
    "fluency": ("Fluency", lambda a: {"reference": a}, "fluency[:MODEL_FOLDER] (default: the policy)"),
    "kl": ("KLPenalty", lambda a: {"reference": a}, "kl:MODEL_FOLDER (the reference model)"),
    "overlap": ("Overlap", lambda a: {"references": a}, "overlap:REFERENCE TEXT"),
    "human": ("HumanFeedback", lambda a: {"ratings": a}, "human:RATINGS.jsonl"),
}


# families whose argument is free text: the only ones whose argument may hold an '=' (one not
# followed by a number belongs to it)
_FREE_TEXT = {"ends-with", "overlap", "fluency", "kl", "human"}


def known() -> list[str]:
    return sorted(FAMILIES)


def syntax() -> str:
    """Each family's ``--reward`` form, for help texts and errors."""
    return "; ".join(FAMILIES[k][2] for k in known()) + "; any of them [=WEIGHT]"


def check(kind: str, kwargs: dict, where: str = "reward") -> None:
    """The family exists, its weight is a finite number and it takes these arguments, of the
    types its constructor declares: what can be checked before any model is loaded."""
    if kind not in FAMILIES:
        raise ValueError(f"{where}: unknown reward {kind!r}; known: {', '.join(known())}")
    if "weight" in kwargs:
        w = kwargs["weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"{where}: weight must be a finite number, got {w!r}")
    params = _parameters(kind)
    extra = sorted(set(kwargs) - set(params))
    if extra:
        raise ValueError(f"{where}: {kind} takes {', '.join(params)}; got unknown {', '.join(extra)}")
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise ValueError(f"{where}: {kind} needs {', '.join(missing)} (the form is {FAMILIES[kind][2]})")
    for n, value in kwargs.items():  # a TOML "yes" where a bool goes would be truthy, silently
        allowed = _BY_NAME.get(n) or _ALLOWED.get(params[n].annotation)
        if allowed is not None and not any(_is(value, t) for t in allowed[0]):
            raise ValueError(f"{where}: {kind}'s {n} must be {allowed[1]}, got {value!r}")


# an annotation of the families' constructors -> (the Python types it takes, how errors say it)
_ALLOWED = {bool: ((bool,), "true or false"), int: ((int,), "a whole number"),
            float: ((float,), "a number"), str: ((str,), "a string"),
            int | None: ((int, None), "a whole number (or left out)"),
            str | None: ((str, None), "a string (or left out)")}
# the arguments the constructors leave unannotated (they also take objects from Python),
# as a config or a spec can give them: text and paths
_BY_NAME = {"words": ((str, list), "a word or a list of words"),
            "references": ((str, list), "a text or a list of texts (one per prompt)"),
            "reference": ((str,), "a model folder"), "ratings": ((str,), "a ratings file"),
            "embeddings": ((torch.Tensor,), "a [V, D] tensor, which only Python gives (left out: the policy's)")}


def _is(value, t) -> bool:
    """``value`` is of type ``t`` as a config means it: no bool for a number, an int for a float."""
    if t is None:
        return value is None
    if t in (int, float) and isinstance(value, bool):
        return False
    if t is list:  # of strings (a tuple from Python as well)
        return isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value)
    return isinstance(value, (int, float) if t is float else t)


def _parameters(kind: str) -> dict[str, inspect.Parameter]:
    """The family's keyword arguments by name (``human``'s file is its ``ratings``;
    ``topic``'s model is the policy's), annotations evaluated."""
    from .. import rewards

    cls = getattr(rewards, FAMILIES[kind][0])
    factory = cls.from_ratings if kind == "human" else cls
    return {("ratings" if n == "path" else n): p
            for n, p in inspect.signature(factory, eval_str=True).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in ("self", "model")}


def _named(error: Exception, where: str) -> str:
    """The error's message, starting with ``where`` (the entry) once."""
    return str(error) if str(error).startswith(where) else f"{where}: {error}"


def build(kind: str, kwargs: dict, model=None, where: str = "reward"):
    """One family from its registry name and keyword arguments (checked against its signature)."""
    from .. import models, rewards

    check(kind, kwargs, where)
    cls = getattr(rewards, FAMILIES[kind][0])
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("reference"), str):  # a model given by path
        kwargs["reference"], _ = models.load_model(kwargs["reference"] or None)
    if kind == "topic" and "embeddings" not in kwargs:
        kwargs["model"] = model
    factory = cls
    if kind == "human":
        factory = cls.from_ratings
        kwargs["path"] = kwargs.pop("ratings", None)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:  # a missing required argument, a value it refuses
        raise ValueError(_named(e, where)) from e


@dataclass(frozen=True, eq=False)
class Entry:
    """One reward family as the user named it (a ``--reward`` spec or a ``[[reward]]``
    table), checked. A family that needs no model is built while checking and kept, so its
    own checks run before any model loads and a ratings file is read once; every ``build``
    returns that one family (a family is settings; each ``pd.Rewards`` binds it anew)."""

    kind: str  # the registry name, a key of FAMILIES
    kwargs: dict  # its keyword arguments; model paths still as strings
    where: str  # how errors name it: "--reward keywords:apple" or "rewards config F, reward #2"
    family: object = None  # the built family, when it needs no model

    @property
    def name(self) -> str:
        """The name its rewards go by in ``Rollout.reward_components``."""
        from .. import rewards

        return self.kwargs.get("name") or getattr(rewards, FAMILIES[self.kind][0]).default_name

    def build(self, model=None):
        """The family; ``model`` is the policy, for those that take it (``topic``) or default
        to it (``fluency``); a ``reference`` given by path is loaded here."""
        return self.family if self.family is not None else build(self.kind, self.kwargs, model, self.where)


def check_names(entries: list[Entry]) -> None:
    """Two families under one name cannot be told apart in ``Rollout.reward_components``:
    refused before any model loads, saying how to merge or rename them."""
    seen: dict[str, Entry] = {}
    for e in entries:
        first = seen.get(e.name)
        if first is not None:
            merge = f"list all the words in one {e.kind}, or " if e.kind == first.kind and "words" in e.kwargs else ""
            raise ValueError(f"{e.where}: a second reward named {e.name!r} (the first: {first.where}); "
                             f"{merge}give each its own name = \"...\" in a --rewards file")
        seen[e.name] = e


def _entry(kind: str, kwargs: dict, where: str) -> Entry:
    """Checked against the signature, then built when the family needs no model (families
    that take a model or a model path are built later, with it; here with stand-ins for the
    models, so that their other arguments are checked before any model loads)."""
    from .. import rewards

    check(kind, kwargs, where)
    try:
        if kind not in ("kl", "fluency", "topic"):
            return Entry(kind, kwargs, where, build(kind, kwargs, None, where))
        ref = kwargs.get("reference")
        if isinstance(ref, str) and not Path(ref).is_dir():
            raise ValueError(f"reference {ref!r}: no such model folder")
        stand_in = dict(kwargs)
        if kind == "topic":
            stand_in.setdefault("embeddings", torch.zeros(1, 1))  # [V, D]; only bind reads the rows
        elif ref is not None:
            stand_in["reference"] = torch.nn.Module()
        getattr(rewards, FAMILIES[kind][0])(**stand_in)
        return Entry(kind, kwargs, where)
    except (TypeError, ValueError) as e:
        raise ValueError(_named(e, where)) from None


def check_prompts(entries: list[Entry], prompts: int) -> None:
    """What the number of prompts decides, before any model loads: an ``overlap``'s
    references number 1, one per prompt or one per run of repeated prompts (a count dividing theirs)."""
    from .. import rewards

    for e in entries:
        if isinstance(e.family, rewards.Overlap):
            try:
                e.family.check_prompts(prompts)
            except ValueError as err:
                raise ValueError(_named(err, e.where)) from None


def parse_spec(spec: str) -> Entry:
    """``name[:args][=weight]``, e.g. ``keywords:apple,orange=0.5``, checked, no model needed."""
    where = f"--reward {spec}"
    body, weight = spec, None
    head, sep, tail = spec.rpartition("=")
    if sep:
        try:
            weight, body = float(tail), head
        except ValueError:  # part of the arguments only where they are free text (a suffix, a path)
            if head.partition(":")[0] in FAMILIES and (":" not in head or head.partition(":")[0] not in _FREE_TEXT):
                raise ValueError(f"{where}: the weight after '=' must be a number, got {tail!r}") from None
    name, colon, arg = body.partition(":")
    if name not in FAMILIES:
        raise ValueError(f"{where}: unknown reward {name!r}; known: {', '.join(known())}")
    _, parse, form = FAMILIES[name]
    if "=" in arg and name not in _FREE_TEXT:
        raise ValueError(f"{where}: {name}'s arguments {arg!r} hold an '='; the weight is what follows the "
                         f"last '=', and only a free-text argument (a suffix, a reference text, a path) "
                         f"may hold one itself (the form is {form})")
    if colon and not arg:
        raise ValueError(f"{where}: nothing after ':' (the form is {form})")
    if arg and parse is None:
        raise ValueError(f"{where}: {name} takes no arguments, got {arg!r}")
    try:
        kwargs = parse(arg) if arg else {}
    except ValueError as e:
        raise ValueError(f"{where}: cannot read {arg!r} (the form is {form}): {e}") from None
    if weight is not None:
        kwargs["weight"] = weight
    return _entry(name, kwargs, where)


def from_spec(spec: str, model=None):
    """``name[:args][=weight]`` -> a family, e.g. ``keywords:apple,orange=0.5``."""
    return parse_spec(spec).build(model)


def read_config(path) -> list[Entry]:
    """The ``[[reward]]`` tables of a TOML file, checked, no model needed. Relative file and
    model paths (``ratings``, ``reference``) are relative to the config file's folder, so
    the file works from any working directory."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # TOML is UTF-8; a BOM is no key
    except FileNotFoundError:
        raise ValueError(f"rewards config {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"rewards config {path}: a folder, not a TOML file") from None
    except OSError as e:
        raise ValueError(f"rewards config {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"rewards config {path}: not UTF-8 text ({e.reason} at byte {e.start}); "
                         f"TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"rewards config {path}: not valid TOML: {e}") from None
    entries = doc.get("reward")
    if not isinstance(entries, list) or not entries or set(doc) - {"reward"}:
        raise ValueError(f"rewards config {path}: expected one or more [[reward]] tables and nothing else")
    out = []
    for i, entry in enumerate(entries, 1):
        entry, where = dict(entry), f"rewards config {path}, reward #{i}"
        kind = entry.pop("type", None)
        if kind is None:
            raise ValueError(f"{where} has no 'type' (known: {', '.join(known())})")
        if entry.get("reference") == "":
            raise ValueError(f"{where}: reference must be a model folder (leave it out for the policy)")
        for key in ("ratings", "reference"):
            if isinstance(entry.get(key), str) and entry[key] and not Path(entry[key]).is_absolute():
                entry[key] = str(path.parent / entry[key])
        out.append(_entry(kind, entry, where))
    return out


def from_config(path, model=None) -> list:
    """The families listed as ``[[reward]]`` tables in a TOML file."""
    return [entry.build(model) for entry in read_config(path)]
