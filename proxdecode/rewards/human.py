"""Human feedback as a token table: per-token weights fitted from 1-5 ratings of texts.

The seed's third kind of reward is a person's judgement (section 3.3): accurate, but slow
and expensive, so it cannot be asked for at every step of every row. ``proxdecode rate``
collects ratings of generated texts into a JSONL file (``{"text", "rating", "prompt"}``
per line); ``HumanFeedback.from_ratings`` turns them into one weight per vocabulary token,
a ``"table"`` reward: folded into the step's single ``[V]`` vector, it steers at no cost.

The fit is a ridge regression of the centred rating on the bag of tokens (counts):
``min_w |y - X w|^2 + ridge |w|^2`` with ``y`` = rating - mean rating and ``X[i, a]`` = how
often token ``a`` occurs in text ``i``. Why this and not the simpler "mean centred rating
of the texts a token appears in": the per-step rewards of a completion then add up to the
model's predicted centred rating of that completion (``X w``), the same decomposition
every other family here gives its text-level oracle; and a regression explains away
tokens that merely co-occur (in "I love apple pie" / "I hate orange juice", " I" gets
little while " apple" and " orange" get the credit), where a per-token mean gives every
token of a loved text the text's full rating. ``ridge`` shrinks weights of tokens seen in
few texts toward 0; tokens never rated get exactly 0. It is solved in closed form with
``torch.linalg.solve`` on the smaller of ``X X^T`` (texts) and ``X^T X`` (distinct tokens),
in float64, in ``bind`` (where the tokenizer arrives). Texts are tokenised as they were
rated, without special tokens, so weights are for the model's completion tokens.

Scale: rewards are in rating units (a token weighted 0.5 moves the predicted rating by
half a star), so ``steer`` of a few nats per star steers firmly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .base import Reward, finite_number, token_strings


def read_ratings(path) -> list[tuple[str, float]]:
    """``(text, rating)`` pairs of a ratings JSONL file (UTF-8, a leading BOM allowed); blank
    lines are skipped.

    Raises ValueError naming the file (and the line, ``path:line:``) on a missing or empty
    file, a line that is not JSON, a missing ``text`` or ``rating``, or a rating that is
    not a number in [1, 5].
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"HumanFeedback: ratings file {path}: no such file")
    pairs = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Windows editors) is no text
    except UnicodeDecodeError as e:
        raise ValueError(f"HumanFeedback: ratings file {path}: not UTF-8 text ({e.reason})") from None
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"HumanFeedback: {path}:{no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object with \"text\" and \"rating\", got {line.strip()[:60]}")
        missing = [k for k in ("text", "rating") if k not in obj]
        if missing:
            raise ValueError(f"{where}: missing {' and '.join(repr(k) for k in missing)}")
        text, rating = obj["text"], obj["rating"]
        if not isinstance(text, str):
            raise ValueError(f"{where}: \"text\" must be a string, got {type(text).__name__}")
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(rating) \
                or not 1 <= rating <= 5:
            raise ValueError(f"{where}: \"rating\" must be a number from 1 to 5, got {rating!r}")
        pairs.append((text, float(rating)))
    if not pairs:
        raise ValueError(f"HumanFeedback: ratings file {path} has no ratings (it is empty)")
    return pairs


def fit_ridge(bags: list[list[int]], ratings: list[float], vocab: int, ridge: float):
    """Ridge regression of centred ratings on token counts: ``([V] weights, mean rating)``."""
    y = torch.tensor(ratings, dtype=torch.float64)
    mean = float(y.mean())
    used = sorted({t for bag in bags for t in bag})  # the U distinct tokens that occur
    col = {t: j for j, t in enumerate(used)}
    X = torch.zeros(len(bags), len(used), dtype=torch.float64)  # [N, U] counts
    for i, bag in enumerate(bags):
        for t in bag:
            X[i, col[t]] += 1
    y = y - mean  # [N]
    if len(bags) <= len(used):  # dual: w = X^T (X X^T + ridge I)^-1 y
        w = X.T @ torch.linalg.solve(X @ X.T + ridge * torch.eye(len(bags), dtype=X.dtype), y)
    else:  # primal: w = (X^T X + ridge I)^-1 X^T y
        w = torch.linalg.solve(X.T @ X + ridge * torch.eye(len(used), dtype=X.dtype), X.T @ y)
    table = torch.zeros(vocab, dtype=torch.float64)
    if used:
        table[torch.tensor(used)] = w
    return table.float(), mean


class HumanFeedback(Reward):
    """Per-token weights from human feedback (module docstring), a token-table reward.

    Args:
        weights: a ``[V]`` tensor or sequence (one weight per token of the tokenizer), or a
            dict ``{word: weight}`` (every token whose text, stripped, is the word gets its
            weight: " apple" and "apple"). Or None, with ``ratings``.
        ratings: ``(text, rating)`` pairs, ratings in [1, 5], fitted in ``bind``; see
            ``from_ratings`` for a file.
        ridge: the fit's L2 strength (> 0): larger shrinks rarely-seen tokens more.
    Oracle: a completion's rewards sum to ``predict(text) - mean rating``.
    """

    kind = "table"
    default_name = "human"

    def __init__(self, weights=None, weight: float = 1.0, name: str | None = None, *, ratings=None,
                 ridge: float = 1.0):
        super().__init__(weight, name)
        if (weights is None) == (ratings is None):
            raise ValueError("HumanFeedback: give weights (a [V] table or {word: weight}) or ratings, not both")
        ridge_value = finite_number(ridge)
        if ridge_value is None or ridge_value <= 0:
            raise ValueError(f"HumanFeedback: ridge must be a finite number > 0, got {ridge!r}")
        if ratings is not None:
            try:
                ratings = [(t, float(r)) for t, r in ratings]
            except (TypeError, ValueError):
                ratings = None
            if not ratings or not all(isinstance(t, str) and 1 <= r <= 5 for t, r in ratings):
                raise ValueError("HumanFeedback: ratings must be a non-empty list of (text, rating in [1, 5])")
        elif isinstance(weights, dict):
            if not weights or not all(isinstance(k, str) and k.strip() and isinstance(v, (int, float))
                                      and not isinstance(v, bool) and math.isfinite(v) for k, v in weights.items()):
                raise ValueError(f"HumanFeedback: weights must map non-empty words to finite numbers, got {weights!r}")
            weights = {k.strip(): float(v) for k, v in weights.items()}
        else:
            weights = torch.as_tensor(weights, dtype=torch.float32)
            if weights.dim() != 1 or not bool(torch.isfinite(weights).all()):
                raise ValueError(f"HumanFeedback: a weights table must be 1-D and finite, "
                                 f"got shape {tuple(weights.shape)}")
        self.weights, self.ratings, self.ridge = weights, ratings, ridge_value
        self.mean_rating, self.source = None, None  # the ratings' mean (after bind); their file
        self._table = None

    @classmethod
    def from_ratings(cls, path, weight: float = 1.0, ridge: float = 1.0, name: str | None = None):
        """Fit from a ratings JSONL file (``{"text": ..., "rating": 1..5}`` per line, as
        ``proxdecode rate`` writes). Errors name the file and the line (``read_ratings``)."""
        if path is None:
            raise ValueError("HumanFeedback.from_ratings: give the path of a ratings JSONL file")
        hf = cls(weight=weight, name=name, ratings=read_ratings(path), ridge=ridge)
        hf.source = str(path)
        return hf

    def bind(self, tokenizer) -> None:
        V = len(tokenizer)
        if self.ratings is not None:
            bags = [_text_ids(tokenizer, t) for t, _ in self.ratings]
            self._table, self.mean_rating = fit_ridge(bags, [r for _, r in self.ratings], V, self.ridge)
        elif isinstance(self.weights, dict):
            strings, special = token_strings(tokenizer)
            table, found = torch.zeros(V), set()
            for i, s in enumerate(strings):
                w = self.weights.get(s.strip())
                if w is not None and not special[i]:
                    table[i] = w
                    found.add(s.strip())
            unknown = sorted(set(self.weights) - found)
            if unknown:
                raise ValueError(f"HumanFeedback: {unknown} are not single tokens of this tokenizer; "
                                 f"give a [V] table or fit from ratings")
            self._table = table
        else:
            if self.weights.numel() != V:
                raise ValueError(f"HumanFeedback: the weights table has {self.weights.numel()} entries, "
                                 f"the tokenizer {V} tokens")
            self._table = self.weights
        self._tokenizer = tokenizer

    def table(self) -> torch.Tensor:
        if self._table is None:
            raise RuntimeError("HumanFeedback: not bound to a tokenizer yet (put it in a pd.Rewards set)")
        return self._table  # [V]

    def predict(self, texts) -> torch.Tensor:
        """``[N]`` predicted ratings: mean rating (0 without ratings) + the texts' summed weights."""
        table = self.table()
        ids = [_text_ids(self._tokenizer, t) for t in texts]
        return torch.stack([table[torch.tensor(i, dtype=torch.long)].sum() for i in ids]) + (self.mean_rating or 0.0)


def _text_ids(tokenizer, text: str) -> list[int]:
    """The text's token ids without special tokens, also those its text spells literally
    ("<|im_end|>" in a chat transcript): they add no text to a completion, so no weight."""
    _, special = token_strings(tokenizer)  # [V] bool, cached
    return [i for i in tokenizer.encode(text, add_special_tokens=False) if not special[i]]
