"""Overlap with a reference: the seed's "BLEU for translation, ROUGE for summaries".

The seed scores a finished summary with ROUGE and a finished translation with BLEU. To
steer with them every candidate token needs a value at every step, so ``Overlap`` keeps a
row's n-gram statistics as device state and scores all ``V`` candidates from them.

A row's rewards sum to exactly the metric ``M`` of its completion, on tokens (below):
ROUGE-N recall as rouge-score computes it, or sentence BLEU / 100 as sacrebleu's
``sentence_bleu`` does (exp smoothing, effective order, brevity penalty). Neither is a sum
over tokens, so the rewards are shaped with a potential (Ng et al., 1999, as ``rules.py``
does): a token ``a`` scores ``Phi(s + a) - Phi(s)``, and ``M - Phi`` is settled once, when
the row stops: as the score of the call's EOS (``generate``'s ``eos_token_id``, so steering
weighs stopping now) or, for a row that ends any other way (length limit, another stop
token, an EOS id that is text), as its terminal reward. After that EOS the row is done:
whatever a caller records for it next (another EOS, more text) scores 0.

``Phi`` is chosen for steering: for both metrics the mean over orders k = 1..n of
``matches_k / D_k`` (clipped matches, as BLEU's modified precision and rouge-score's
``min(hyp count, ref count)``); ``D_k`` is the reference's k-grams for ROUGE (recall), the
larger of the hypothesis' and the reference's for BLEU. So extending an unused reference
k-gram earns ``1 / (n D_k)`` per order from the first token on (ROUGE-2 alone gives step
0 nothing); a word that matches nothing scores 0 while the completion is shorter than
the reference and < 0 past it, where BLEU's precision falls; tokens the metric ignores
score 0; EOS costs ``M - Phi < 0`` while the text is short. Rejected after trying them on
the tiny model: ``Phi`` = BLEU itself (its brevity penalty ``exp(1 - r / c)`` is ``e^-9``
after 2 of 20 tokens and silences steering), and BLEU without the brevity penalty (every
non-matching word < 0, whitespace 0: steered rows filled up with whitespace).

Vectorised: a candidate's reward depends only on which of the n orders it extends, so a
step computes ``Phi`` for the ``2^n`` patterns (``[B, 2^n]``) and scatters them onto the
few candidates that extend a live reference n-gram (padded tables ``[B, G, k]``, compared
with the row's last n-1 tokens); every other candidate gets pattern 0. No loop over rows
or vocabulary.

Tokens vs words. sacrebleu (13a) splits words from punctuation, case-sensitively;
rouge-score lower-cases and keeps ``[a-z0-9]`` runs. Here the reference is tokenised with
the model's tokenizer and each token is mapped once, at ``bind``, to a class that mirrors
the metric's word form: its text stripped (ROUGE: lower-cased, non-alphanumerics
removed), plus whether it starts with a space, so that " to" and "to" stay apart
(merging them let steered rows glue words, "modelto", which score 0 in sacrebleu). A
token that starts a word without a space (the completion's first token, or one after a
newline or punctuation) joins its spaced twin's class ("The" -> " The"). Tokens with no
such text (whitespace; punctuation for ROUGE) and special tokens add nothing, and byte
pieces of a split character ("\ufffd") keep their own class. A word the tokenizer
splits is several tokens, so it weighs more than in the word-level metric, and casing
can change the split ("PROXIMAL"), which ROUGE's lower-casing does not see. The reference
is tokenised as it is written, starting without a space, as a chat model's answer does: a
completion that starts with a space can split the first word otherwise (" Tokyo" against
"To" + "kyo") and then misses its n-grams, scoring below the metric's 1.0 on a copy.
``tests/test_rewards_overlap.py`` measures the agreement (Spearman over 44 texts).

Steering scale: a match earns about ``1 / (n |reference|)``; for ~1 nat per match use
``weight * steer`` of about ``n * |reference tokens|``.

References: one string for all rows, or one per prompt. ``num_return_sequences = k``
repeats each prompt ``k`` times, so a call has ``prompts * k`` rows and the reference of
prompt ``p`` serves rows ``p*k .. p*k+k-1``. Prompts the caller repeated themselves may share one
too: ``R`` references for ``prompts`` a multiple of ``R`` serve runs of identical prompts
(checked); any other count is refused.
"""

from __future__ import annotations

import re
from collections import Counter

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from .base import Reward, token_strings

MAX_ORDER = 8  # a step enumerates the 2^n patterns of orders a candidate extends
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def _bleu_key(s: str) -> str:
    return s.strip()


def _rouge_key(s: str) -> str:
    return _NON_ALNUM.sub(" ", s.lower()).strip()


def sentence_bleu(correct: torch.Tensor, length: torch.Tensor, ref_len: torch.Tensor) -> torch.Tensor:
    """sacrebleu's ``sentence_bleu`` / 100 from n-gram statistics, elementwise: ``correct``
    ``[..., n]`` clipped matches of orders 1..n, hypothesis and reference ``length``, ``ref_len``
    ``[...]``; exp smoothing, effective order and brevity penalty as sacrebleu 2."""
    log_sum = torch.zeros_like(length, dtype=torch.float32)
    smooth, eff = torch.ones_like(log_sum), torch.zeros_like(log_sum)
    for k in range(correct.shape[-1]):
        total = (length - k).clamp(min=0).float()  # n-grams of order k+1 in the hypothesis
        has, zero = total > 0, correct[..., k] == 0
        smooth = torch.where(has & zero, smooth * 2, smooth)
        p = torch.where(zero, 1.0 / (smooth * total.clamp(min=1)), correct[..., k] / total.clamp(min=1))
        log_sum = log_sum + torch.where(has, p.log(), 0.0)
        eff = eff + has.float()
    c = length.float()
    bp = torch.where(c >= ref_len, 1.0, torch.exp(1 - ref_len / c.clamp(min=1)) * (c > 0))
    return torch.where(correct.sum(-1) > 0, bp * (log_sum / eff.clamp(min=1)).exp(), 0.0)  # no match: 0


class Overlap(Reward):
    """BLEU- or ROUGE-N-shaped reward for overlap with a reference text (module docstring).

    Args:
        references: a string for every row, or a list of strings: one, one per prompt
            (shared by the prompt's ``num_return_sequences`` rows), or one per run of
            identical prompts the caller repeated.
        n: n-gram order; None for the metric's usual one (4 for BLEU, as sacrebleu; 2 for
            ROUGE-2). The potential uses orders 1..n for both.
        kind: "bleu" (sentence BLEU / 100) or "rouge" (ROUGE-N recall).
    Oracle: the rewards of a row sum to the metric on its tokens (``token_ids`` gives the
    classes counted); tracks sacrebleu / rouge-score (module docstring).
    """

    kind = "state"
    default_name = "overlap"

    def __init__(self, references, n: int | None = None, kind: str = "bleu", weight: float = 1.0,
                 name: str | None = None):
        super().__init__(weight, name)
        refs = [references] if isinstance(references, str) else references
        if not isinstance(refs, (list, tuple)) or not refs:
            raise ValueError(f"Overlap: references must be a non-empty string or list of strings, got {references!r}")
        for i, r in enumerate(refs):
            if not isinstance(r, str) or not r.strip():
                raise ValueError(f"Overlap: references[{i}] must be a non-empty string, got {r!r}")
        if kind not in ("bleu", "rouge"):
            raise ValueError(f"Overlap: kind must be 'bleu' or 'rouge', got {kind!r}")
        if n is None:
            n = 4 if kind == "bleu" else 2
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ORDER:
            raise ValueError(f"Overlap: n must be an int in [1, {MAX_ORDER}], got {n!r}")
        self.references, self.n, self.metric = list(refs), n, kind
        self.orders = range(1, n + 1)

    def bind(self, tokenizer) -> None:
        strings, special = token_strings(tokenizer)
        V = len(strings)
        keys = [None if special[i] else (_bleu_key if self.metric == "bleu" else _rouge_key)(s)
                for i, s in enumerate(strings)]
        reps = {}  # word form (" " + text for a token that starts with a space) -> class id
        for i, (s, k) in enumerate(zip(strings, keys)):
            if k and "\ufffd" not in s:
                reps.setdefault((" " if s[:1].isspace() else "") + k, i)
        canon, first, text = list(range(V)), list(range(V)), [bool(k) for k in keys]
        members, extra = {}, {}  # class -> its tokens; class -> tokens that join it at a word start
        for i, (s, k) in enumerate(zip(strings, keys)):
            if k and "\ufffd" not in s:
                canon[i] = first[i] = reps[(" " if s[:1].isspace() else "") + k]
                first[i] = reps.get(" " + k, canon[i])  # "The" at a word start is " The"
            if k:
                members.setdefault(canon[i], []).append(i)
                if first[i] != canon[i]:
                    extra.setdefault(first[i], []).append(i)
        self._canon, self._first = torch.tensor(canon), torch.tensor(first)  # [V] class id: mid-word; word start
        self._text = torch.tensor(text)  # [V] adds a counted word piece
        self._break = torch.tensor([bool(s) and not special[i] and not s[-1].isalnum()  # [V] next token
                                    for i, s in enumerate(strings)])  # starts a word
        self._special = special
        # per reference: (length, {order: (prefixes [G, k-1], last classes [G], counts [G],
        #   entries: n-gram [E], token [E], valid at a word start [E], valid inside a word [E])});
        #   an entry is one token that completes the n-gram
        self._refs = []
        for j, ref in enumerate(self.references):
            seq = self.token_ids(tokenizer.encode(ref, add_special_tokens=False))
            need = self.n if self.metric == "rouge" else 1  # ROUGE-N divides by the reference's n-grams
            if len(seq) < need:
                raise ValueError(f"Overlap: references[{j}] {ref!r} has {len(seq)} word token(s); "
                                 f"{self.metric.upper()}-{self.n} needs at least {need}")
            tables = {}
            for k in self.orders:
                grams = Counter(tuple(seq[i:i + k]) for i in range(len(seq) - k + 1))
                order = sorted(grams)
                ent = []  # (n-gram, token, valid at a word start, valid inside a word)
                for g, gram in enumerate(order):
                    ent += [(g, t, first[t] == gram[-1], True) for t in members.get(gram[-1], [])]
                    ent += [(g, t, True, False) for t in extra.get(gram[-1], [])]
                col = lambda i, dt=torch.long: torch.tensor([e[i] for e in ent], dtype=dt)  # noqa: E731
                tables[k] = (torch.tensor([g[:-1] for g in order], dtype=torch.long).view(len(order), k - 1),
                             torch.tensor([g[-1] for g in order], dtype=torch.long),
                             torch.tensor([grams[g] for g in order], dtype=torch.long),
                             col(0), col(1), col(2, torch.bool), col(3, torch.bool))
            self._refs.append((len(seq), tables))

    def token_ids(self, ids) -> list[int]:
        """The classes of the tokens the metric counts (after ``bind``): each of ``ids`` mapped
        to its class (its word-start class after a word break), whitespace, special and
        (ROUGE) punctuation tokens dropped."""
        out, start = [], True
        for i in ids:
            if self._special[i]:
                continue
            if self._text[i]:
                out.append(int(self._first[i] if start else self._canon[i]))
            start = bool(self._break[i])
        return out

    def check_prompts(self, prompts: int) -> None:
        """Refuse a reference count that cannot split the prompts: 1, one per prompt, or one
        per run of repeated prompts (a count dividing theirs; ``init`` checks the runs)."""
        R = len(self.references)
        if R != 1 and prompts % R:
            allowed = "1" if prompts == 1 else \
                f"1 (for every row), {prompts} (one per prompt, shared by its num_return_sequences rows) or " \
                f"one per run of identical prompts (a count dividing {prompts})"
            raise ValueError(f"Overlap: references holds {R} texts for {prompts} prompt(s); give {allowed}")

    def _rows(self, ctx) -> torch.Tensor:
        """``[B]`` reference index of each row (see the module docstring)."""
        B = ctx.batch
        prompts = B if ctx.prompts is None else ctx.prompts
        self.check_prompts(prompts)
        R = len(self._refs)
        if R == 1:
            return torch.zeros(B, dtype=torch.long)
        k = B // R  # rows per reference
        if R != prompts:  # the caller repeated prompts: each run must be one
            if ctx.prompt_ids is None:
                raise ValueError(f"Overlap: {R} references for {prompts} prompts: one per run of repeated prompts "
                                 f"needs the prompts to check the runs; give one reference per prompt, or one for all")
            real = ctx.prompt_ids if ctx.prompt_mask is None else ctx.prompt_ids.masked_fill(ctx.prompt_mask == 0, -1)
            runs = real.reshape(R, k, -1)  # [R, k, P]; padding compares as padding, whatever its ids
            if not bool((runs == runs[:, :1]).all()):
                raise ValueError(f"Overlap: {R} references for {prompts} prompts, but the prompts are not {R} runs "
                                 f"of one repeated prompt each; give one reference per prompt, or one for all")
        return torch.arange(R).repeat_interleave(k)  # [B]

    def init(self, ctx):
        dev, B, rows, V = ctx.device, ctx.batch, self._rows(ctx), ctx.vocab
        extra = V - self._canon.numel()  # the model's padding rows: no text, class 0
        canon, first, text, brk = (torch.cat([t, t.new_zeros(extra)]) for t in
                                   (self._canon, self._first, self._text, self._break))
        eos = ctx.eos_mask()  # [V] the call's EOS ids: choosing one ends the row
        # an EOS that adds nothing settles M - Phi as its score; one the metric counts ("." for
        # BLEU) scores as text, and the terminal settles
        settle = eos & ~text  # [V]
        base = torch.where(settle, 2, text.long())  # [V] 0 adds nothing, 1 text, 2 EOS
        base = F.pad(base, (0, 1))  # [V+1]: a spare column for dead entries
        st = {"canon": canon.to(dev), "first": first.to(dev), "text": text.to(dev), "break": brk.to(dev),
              "eos": eos.to(dev), "settle": settle.to(dev),
              "special": torch.cat([self._special, torch.ones(extra, dtype=torch.bool)]).to(dev),
              "start": torch.ones(B, dtype=torch.bool, device=dev),  # [B] the next token starts a word
              "base": base.to(dev), "hist": torch.full((B, self.n - 1), -1, dtype=torch.long, device=dev),
              "len": torch.zeros(B, dtype=torch.long, device=dev),  # [B] tokens counted so far
              "pattern": torch.zeros(B, V + 1, dtype=torch.int32, device=dev),  # [B, V+1] scratch, kept 0
              "stopped": torch.zeros(B, dtype=torch.bool, device=dev),  # [B] chose the call's EOS
              "settled": torch.zeros(B, dtype=torch.bool, device=dev),  # [B] and its score settled M - Phi
              "pre": [], "last": [], "rem": [], "ent_g": [], "ent_tok": [],
              "ent_start": [], "ent_mid": [], "match": [None] * len(self.orders)}
        for k in self.orders:  # per-reference tables padded to [R, G or E, ...], then one row each
            cols = list(zip(*(t[k] for _, t in self._refs)))
            pad = lambda i, fill=0: pad_sequence(cols[i], True, fill)[rows].to(dev)  # noqa: E731
            st["pre"].append(pad(0))  # [B, G, k-1] prefix classes of each reference n-gram
            st["last"].append(pad(1))  # [B, G] its last class
            st["rem"].append(pad(2))  # [B, G] its count not used yet (padding: 0, never live)
            st["ent_g"].append(pad(3))  # [B, E] entries: the n-gram an entry completes,
            st["ent_tok"].append(pad(4, -1))  # [B, E] with which token (-1: padding)
            st["ent_start"].append(pad(5, False))  # [B, E] valid at a word start
            st["ent_mid"].append(pad(6, False))  # [B, E] valid inside a word
        ref_len = torch.tensor([L for L, _ in self._refs], dtype=torch.float32)[rows].to(dev)  # [B]
        st["ref_len"] = ref_len
        st["ref_grams"] = (ref_len[:, None] - torch.arange(self.n, device=dev)).clamp(min=0)  # [B, n]
        st["correct"] = torch.zeros(B, self.n, device=dev)  # [B, n] clipped matches per order
        st["phi"] = torch.zeros(B, device=dev)  # [B] potential now
        bits = torch.arange(2 ** self.n)[:, None] >> torch.arange(self.n)[None, :] & 1
        st["bits"] = bits.float().to(dev)  # [2^n, n] which orders a pattern extends
        return st

    def _phi(self, correct, length, ref_grams):
        """The steering potential: mean over orders of matches / D (module docstring).
        ``correct`` ``[..., n]``, ``length`` ``[...]``, ``ref_grams`` ``[..., n]`` -> ``[...]``."""
        denom = ref_grams
        if self.metric == "bleu":
            hyp = (length[..., None] - torch.arange(self.n, device=length.device)).clamp(min=0)
            denom = torch.maximum(hyp, ref_grams)
        return (correct / denom.clamp(min=1)).mean(-1)

    def _metric(self, st):
        """``[B]`` the metric of each row's completion so far: BLEU / 100 or ROUGE-N recall."""
        if self.metric == "bleu":
            return sentence_bleu(st["correct"], st["len"], st["ref_len"])
        return st["correct"][:, -1] / st["ref_grams"][:, -1]

    def score(self, st, logits):
        V = st["base"].numel() - 1  # the model's logits per row
        if logits.shape[1] != V:
            raise ValueError(f"Overlap: logits have {logits.shape[1]} columns, the call was set up for {V}")
        idx, bit = [], []
        for j, k in enumerate(self.orders):
            live = st["rem"][j] > 0  # [B, G]
            if k > 1:
                live &= (st["pre"][j] == st["hist"][:, None, self.n - k:]).all(-1)
            st["match"][j] = live  # kept for update()
            ok = torch.where(st["start"][:, None], st["ent_start"][j], st["ent_mid"][j])  # [B, E]
            live_e = live.gather(1, st["ent_g"][j]) & ok  # [B, E]
            idx.append(torch.where(live_e, st["ent_tok"][j], V))  # [B, E] dead entries -> column V
            bit.append(live_e.int() << j)  # [B, E] 0 for dead entries
        idx, bit = torch.cat(idx, 1), torch.cat(bit, 1)  # [B, E_all]
        # which orders each entry's token extends (at most one live entry per order and token),
        # summed in a [B, V+1] buffer that is zero between steps: only the entries are touched
        buf = st["pattern"]
        buf.scatter_add_(1, idx, bit)
        pattern = buf.gather(1, idx).long()  # [B, E_all]
        buf.scatter_(1, idx, 0)
        after = self._phi(st["correct"][:, None, :] + st["bits"][None], st["len"][:, None] + 1,
                          st["ref_grams"][:, None, :])  # [B, 2^n]
        gain = after - st["phi"][:, None]  # [B, 2^n] potential difference of each pattern
        stop = self._metric(st) - st["phi"]  # [B] what stopping now settles
        by_base = torch.stack([torch.zeros_like(stop), gain[:, 0], stop], 1)  # [B, 3]
        out = by_base.index_select(1, st["base"])  # [B, V+1]: every token as pattern 0
        out.scatter_(1, idx, gain.gather(1, pattern))  # the candidates that extend reference n-grams
        return torch.where(st["stopped"][:, None], 0.0, out[:, :V])  # [B, V]; column V had the dead entries

    def update(self, st, tokens, alive):
        alive = alive & ~st["stopped"]  # [B] a row that chose EOS is done: nothing after it counts
        cls = torch.where(st["start"], st["first"][tokens], st["canon"][tokens])  # [B]
        adds = st["text"][tokens] & alive  # [B] the token adds a counted word piece
        for j, k in enumerate(self.orders):
            used = st["match"][j] & (st["last"][j] == cls[:, None]) & adds[:, None]  # [B, G]
            st["rem"][j] -= used.long()
            st["correct"][:, k - 1] += used.any(-1).float()
        st["len"] += adds.long()
        if self.n > 1:
            st["hist"] = torch.where(adds[:, None], torch.cat([st["hist"][:, 1:], cls[:, None]], 1), st["hist"])
        st["phi"] = self._phi(st["correct"], st["len"], st["ref_grams"])
        st["start"] = torch.where(alive & ~st["special"][tokens], st["break"][tokens], st["start"])
        st["settled"] |= alive & st["settle"][tokens]
        st["stopped"] |= alive & st["eos"][tokens]

    def terminal(self, st):
        return torch.where(st["settled"], 0.0, self._metric(st) - st["phi"])  # [B]
