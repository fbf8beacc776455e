"""Rule rewards from the seed write-up, as vectors over the vocabulary.

The seed's ``get_reward(text)`` returns -1 unless the text ends with '.', and rewards
mentioning both "apple" and "orange". Decoding every candidate's text and calling such a
rule each step costs ``V`` Python calls a row; here each rule is a token table plus a
few bits of row state, and a step is a handful of ``[B, V]`` tensor ops.

Tokens are not words. ``EndsWith`` follows which prefixes of the suffix the text ends
with, token by token (byte-level BPE decodes token by token; special tokens such as EOS
add no text), so a suffix may span tokens. ``Keywords`` looks for the word
inside each token's text and, for words the tokenizer splits, for its canonical token
sequence; both are set up once as tables, so a step never decodes text.
"""

from __future__ import annotations

import torch

from .base import Reward, token_strings


class EndsWith(Reward):
    """-weight unless the completion ends with ``suffix`` (the seed's rule), shaped per step.

    Potential ``Phi(s) = 0`` if the completion ``s`` ends with ``suffix``, else -1. A
    candidate ``a`` scores ``Phi(s + a) - Phi(s)``: +1 for a token that makes the text end
    with the suffix, -1 for continuing past it, 0 for EOS and other special tokens (they add
    no text). The terminal reward ``Phi(empty) = -1`` closes the telescoping sum, so a row's
    rewards add up to exactly the seed's value on its text. Oracle: ``0 if
    text.endswith(suffix) else -1`` on the completion decoded with ``skip_special_tokens=True``.

    A suffix may span tokens ("end." as " end" + "."): the row state is which prefixes
    ``suffix[:j]`` the text ends with (``E[:, j]``, ``E[:, 0]`` always true), and a token of
    text ``t`` leads to ``E'[j] = t.endswith(suffix[:j])`` when ``len(t) >= j``, else
    ``suffix[:j].endswith(t) and E[j - len(t)]``: two ``[V, L]`` tables, and a step's
    ``[B, V]`` score is one small matrix product. Token texts are byte-level BPE's per-token
    decodings, so a suffix character split over several byte tokens (most emoji) is never
    seen whole.
    """

    default_name = "ends_with"

    def __init__(self, suffix: str = ".", weight: float = 1.0, name: str | None = None):
        super().__init__(weight, name)
        if not isinstance(suffix, str) or not suffix:
            raise ValueError(f"EndsWith: suffix must be a non-empty string, got {suffix!r}")
        self.suffix = suffix

    def bind(self, tokenizer) -> None:
        strings, special = token_strings(tokenizer)
        s, L = self.suffix, len(self.suffix)
        full = torch.zeros(len(strings), L, dtype=torch.bool)  # [V, L] the token alone ends with s[:j]
        need = torch.arange(1, L + 1).repeat(len(strings), 1)  # [V, L] else: E[need] carries over
        texts = [not special[a] and bool(t) for a, t in enumerate(strings)]
        need[torch.tensor(texts)] = L + 1  # text that cannot end with any s[:j]: E[L + 1] is false
        ends_at: dict[str, list[int]] = {}  # character -> the j whose s[:j] ends with it
        for j in range(1, L + 1):
            ends_at.setdefault(s[j - 1], []).append(j)
        for a, t in enumerate(strings):
            if not texts[a]:
                continue  # no text: every E[j] stays (need = j)
            for j in ends_at.get(t[-1], ()):  # other j: s[:j] and t end differently
                if len(t) >= j:
                    full[a, j - 1], need[a, j - 1] = t.endswith(s[:j]), L + 1
                elif s[:j].endswith(t):
                    need[a, j - 1] = j - len(t)
        self._full, self._need = full, need

    def init(self, ctx):
        L = len(self.suffix)
        pad = ctx.vocab - self._full.shape[0]  # padding rows of the model's vocab add no text
        E = torch.zeros(ctx.batch, L + 2, dtype=torch.bool, device=ctx.device)  # [B, L + 2]
        E[:, 0] = True
        full = torch.cat([self._full, self._full.new_zeros(pad, L)])  # [V, L]
        need = torch.cat([self._need, torch.arange(1, L + 1).repeat(pad, 1)])  # [V, L]
        # the last column as one matmul for the [B, V] score: 1 where the token alone ends
        # the text with the suffix, plus E[need] read through a one-hot [L + 2, V] selector
        # (a gather would read a [B, V] int64 index: 8x the bytes of the score)
        select = torch.nn.functional.one_hot(need[:, -1], L + 2).T.float()  # [L + 2, V]
        return {"E": E, "full": full.to(ctx.device), "need": need.to(ctx.device),
                "full_last": full[:, -1].float().to(ctx.device), "select": select.to(ctx.device)}

    def ends(self, st) -> torch.Tensor:
        """``[B]`` bool: the text so far ends with the suffix."""
        return st["E"][:, len(self.suffix)]

    def ends_after(self, st) -> torch.Tensor:
        """``[B, V]`` float, 0 or 1: the text would end with the suffix after each candidate
        (the two terms never overlap: a token that ends it alone reads E's false column)."""
        return st["full_last"][None, :] + st["E"].float() @ st["select"]

    def score(self, st, logits):
        return self.ends_after(st) - self.ends(st).float()[:, None]  # [B, V]

    def update(self, st, tokens, alive):
        E = st["E"]
        new = st["full"][tokens] | E.gather(1, st["need"][tokens])  # [B, L]
        st["E"] = torch.cat([E[:, :1], torch.where(alive[:, None], new, E[:, 1:-1]), E[:, -1:]], 1)

    def chosen(self, st, tokens, alive, logits):
        before = self.ends(st).float()
        self.update(st, tokens, alive)
        return self.ends(st).float() - before  # [B]

    def terminal(self, st):
        return torch.full(st["E"].shape[:1], -1.0, device=st["E"].device)


class Keywords(Reward):
    """Coverage of a word list: the seed's "+1 if 'apple' and 'orange' are in the text".

    A word counts as mentioned, as with the seed's ``word in text``, once a chosen token's
    text contains it (" apple", " apples", "pineapple"'s "apple"), or once the tokens of its
    canonical spelling ("word", " word") end with the chosen one (words split over tokens).
    ``ignore_case`` compares lower-cased text; the spellings it knows for split words are
    then the word as given, in lower case, capitalised, title case and upper case.
    Potential ``Phi`` = fraction of the words mentioned (``require_all=False``) or 1 once all
    are (``require_all=True``, the seed's rule); a candidate scores ``Phi(after a) -
    Phi(now)``, so a row's rewards sum to ``Phi`` of its completion. Oracle: ``word in
    text`` on the decoded completion. They differ only when the text spells a word with
    tokens other than its canonical ones.

    ``only_if_ends_with=s`` counts the coverage only while the completion ends with ``s``
    (``Phi = Phi_words * [text ends with s]``): with ``EndsWith(s)`` beside it, the sum is
    exactly the seed's ``get_reward`` (-1 unless it ends with '.', else 1 if both words).
    """

    default_name = "keywords"

    def __init__(self, words, weight: float = 1.0, require_all: bool = False,
                 ignore_case: bool = False, only_if_ends_with: str | None = None, name: str | None = None):
        super().__init__(weight, name)
        if only_if_ends_with is not None:
            if not isinstance(only_if_ends_with, str) or not only_if_ends_with:
                raise ValueError(f"Keywords: only_if_ends_with must be None or a non-empty string, "
                                 f"got {only_if_ends_with!r}")
            self._gate = EndsWith(only_if_ends_with)  # its tables and state update, not its reward
        words = [words] if isinstance(words, str) else list(words)
        if not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(f"Keywords: words must be a non-empty list of non-empty strings, got {words!r}")
        self.words = [w.strip() for w in words]
        self._flags(require_all=require_all, ignore_case=ignore_case)

    def bind(self, tokenizer) -> None:
        strings, special = token_strings(tokenizer)
        fold = str.lower if self.ignore_case else (lambda x: x)
        words = [fold(w) for w in self.words]
        hits: dict[int, set[int]] = {}  # token id -> words its own text contains
        for i, text in enumerate(strings):
            if not special[i]:
                for k, w in enumerate(words):
                    if w in fold(text):
                        hits.setdefault(i, set()).add(k)
        variants: dict[tuple[int, ...], set[int]] = {}  # multi-token spellings -> words
        for k, w in enumerate(self.words):
            cases = {w, w.lower(), w.capitalize(), w.title(), w.upper()} if self.ignore_case else {w}
            for form in cases | {" " + c for c in cases}:
                ids = tuple(tokenizer.encode(form, add_special_tokens=False))
                if len(ids) > 1:
                    variants.setdefault(ids, set()).add(k)
        if not hits and not variants:
            raise ValueError(f"Keywords: no token or token sequence spells any of {self.words}")
        lasts = sorted(set(hits) | {v[-1] for v in variants})
        self._lasts = torch.tensor(lasts)  # [U] tokens that can complete a mention
        self._static = torch.zeros(len(lasts), len(words), dtype=torch.bool)  # [U, K]
        for i, ks in hits.items():
            self._static[lasts.index(i), sorted(ks)] = True
        self._variants = [(torch.tensor(v[:-1]), lasts.index(v[-1]), sorted(ks))
                          for v, ks in variants.items()]
        self._history = max([len(v) - 1 for v in variants], default=1)
        if hasattr(self, "_gate"):
            self._gate.bind(tokenizer)

    def init(self, ctx):
        batch, device = ctx.batch, ctx.device
        return {"covered": torch.zeros(batch, len(self.words), dtype=torch.bool, device=device),
                "hist": torch.full((batch, self._history), -1, dtype=torch.long, device=device),
                "lasts": self._lasts.to(device), "static": self._static.to(device),
                "variants": [(p.to(device), u, ks) for p, u, ks in self._variants],
                "gate": self._gate.init(ctx) if hasattr(self, "_gate") else None}

    def _hits(self, st) -> torch.Tensor:
        """``[B, U, K]``: candidate ``lasts[u]`` completes word ``k`` given the history."""
        B = st["covered"].shape[0]
        hits = st["static"].expand(B, -1, -1).clone()
        for prefix, u, ks in st["variants"]:
            match = (st["hist"][:, -len(prefix):] == prefix).all(-1)  # [B]
            hits[:, u, ks] |= match[:, None]
        return hits

    def _phi(self, count: torch.Tensor) -> torch.Tensor:
        n = len(self.words)
        return (count >= n).float() if self.require_all else count.float() / n

    def _potential(self, st) -> torch.Tensor:
        """``[B]`` Phi of the text so far: coverage, gated by the suffix when asked."""
        phi = self._phi(st["covered"].sum(-1))
        return phi if st["gate"] is None else phi * self._gate.ends(st["gate"])

    def score(self, st, logits):
        covered = st["covered"]  # [B, K]
        st["hits"] = self._hits(st)  # [B, U, K]; the history is unchanged until update()
        new = (st["hits"] & ~covered[:, None, :]).sum(-1)  # [B, U]
        now = covered.sum(-1, keepdim=True)  # [B, 1]
        if st["gate"] is None:
            gain = self._phi(now + new) - self._phi(now)  # [B, U]
            out = torch.zeros(covered.shape[0], logits.shape[1], device=logits.device)
            return out.index_copy_(1, st["lasts"], gain)  # [B, V]
        ends_after = self._gate.ends_after(st["gate"])  # [B, V]
        V = ends_after.shape[1]
        phi_after = self._phi(now).expand(-1, V).clone()  # [B, V] coverage after each candidate
        phi_after.index_copy_(1, st["lasts"], self._phi(now + new))
        out = phi_after * ends_after - self._potential(st)[:, None]  # [B, V]
        return torch.nn.functional.pad(out, (0, logits.shape[1] - V))

    def update(self, st, tokens, alive):
        chosen = (st["lasts"][None, :] == tokens[:, None]) & alive[:, None]  # [B, U]
        hits = st.pop("hits", None)
        st["covered"] |= ((self._hits(st) if hits is None else hits) & chosen[:, :, None]).any(1)
        st["hist"] = torch.where(alive[:, None], torch.cat([st["hist"][:, 1:], tokens[:, None]], 1),
                                 st["hist"])
        if st["gate"] is not None:
            self._gate.update(st["gate"], tokens, alive)

    def chosen(self, st, tokens, alive, logits):
        before = self._potential(st)  # [B]
        self.update(st, tokens, alive)
        return self._potential(st) - before
