"""TextBlob sentiment as a proximal reward for every candidate token.

The seed's reward is ``TextBlob(text).sentiment.polarity``: TextBlob's PatternAnalyzer
splits the text into words, scores the words of its lexicon (``en-sentiment.xml``, plus
the "-ly" adverbs ``textblob.en`` derives from its adjectives), and averages over the
*assessments*: a lexicon word opens one, unless the previous lexicon word was an adverb
("RB": "very", "really"), which re-scores the open one as ``clamp(p * intensity)`` ("very
good" = 0.7 * 1.3 = 0.91); "no"/"not"/"never" before it (kept across one-letter words) make
it ``-0.5 * p`` ("not good" = -0.35) and invert its intensity; each "!" multiplies the last
one by 1.25; emoticons open one. Words outside the lexicon count for nothing.

``Sentiment`` runs that state machine on the device, one small state per row, and scores
every candidate as a potential difference ``Phi(prefix + a) - Phi(prefix)``, where ``Phi``
is the polarity of the text so far (0 with no assessment). A row's rewards therefore sum
to the polarity of its completion, and a step is a [B, U] computation over the ``U`` (a few
hundred) distinct token descriptions, a [B, V] gather, and a [B, W] scatter for the
glued tokens that spell on a lexicon word (W: at most ~90 children of a trie node).

Tokens are not words. TextBlob's words are the whitespace-separated chunks of the text,
lower-cased, with its punctuation marks (``.,;:!?()[]...``) split off their ends and quotes
split off everywhere; a chunk's inner punctuation stays in the word ("well-known", "3.5").
The byte-level BPE gives a word as one or more tokens (" good"; "Ter" + "ribly"; "well" +
"-" + "known"), so here:

- a token starting with whitespace (or a quote) starts a new chunk; a token glued to the
  previous one (no space between) continues its chunk;
- the chunk's word is *pending*: ``Phi`` reads it as if the text ended there, and a glued
  word token replaces it. Which word it becomes is looked up in a trie of the canonical
  tokenizations of every unit TextBlob scores (lexicon words, "no"/"not"/"never",
  emoticons) in the spellings ``w``, `` w``, ``W``, `` W`` and upper case, so "Ter" +
  "ribly" is "terribly", " R" + "UDE" is "rude" and " :" + "(" is a frown; a continuation
  the trie does not know is a word outside the lexicon (" good" + "ies" = "goodies",
  worth nothing, as in TextBlob);
- punctuation glued after the word is pending too: a word glued after it merges the chunk
  into one unknown word, as TextBlob does ("good,bad"; "well-known", but "well-off" is in
  the lexicon and the trie follows it); "!" boosts and emoticons count as TextBlob counts
  them. TextBlob's quote split makes "n't" no negation ("isn't good" = 0.7), here too.

Known gaps, where the text is spelled with tokens other than the canonical ones or where
TextBlob is odd (``test_documented_gaps`` pins examples of each):

- a lexicon word spelled with other tokens than its canonical ones (" terr" + "ible"), or
  in mixed case ("hAppY"), counts as unknown;
- emoticons with a quote (":'(") and the sarcasm mark "(!)" are not read as units; an
  emoticon inside a single punctuation token after "!" ("!:)") takes the boost;
- TextBlob's contraction split turns "don" of "don't" into "do" + "n";
- a leading "." (".good", "...terrible") is split off here but not by TextBlob, where the
  whole chunk is one unknown word: here the word counts;
- emoticons glued to other text in one chunk: followed by more punctuation in the same
  token (":)!", ":))"), glued to a word ("good:)", ":)good"), or their first character
  glued before a word (":good", "*excellent", which TextBlob reads as the word); TextBlob
  also joins emoticon characters across single spaces (": )", "< 3") and matches them
  case-sensitively (":D" yes, ":d" no), where this table lower-cases them.
``tests/test_rewards_sentiment.py`` measures agreement with TextBlob itself on sentences and
on the real model's continuations.
"""

from __future__ import annotations

import torch

from .base import Reward, token_strings

_QUOTES = "'\"‘’“”"  # TextBlob's find_tokens pads these with spaces: always their own words
_BASE = ("S", "C", "lp", "li", "ln", "m", "mly", "n")  # the assessment state, [B] each
_WORD = ("word", "known", "p", "i", "mod", "ly", "neg", "len", "emo")  # a word's description
_PUNCT = ("k", "nres", "mres", "pemo", "ep")  # a run of punctuation words, summarised
_BOOL = {"ln", "m", "mly", "n", "word", "known", "mod", "ly", "neg", "emo", "nres", "mres", "pemo"}
_NOWORD = (0, 0, 0.0, 1.0, 0, 0, 0, 0, 0)
_TABLES: dict[int, tuple[object, dict]] = {}


def _fin(lp, ln):
    """An assessment's final polarity: negated ones count -0.5 times."""
    return torch.where(ln, -0.5 * lp, lp)


def _phi(b):
    """Polarity: mean over assessments, 0 with none."""
    last = torch.where(b["C"] > 0, _fin(b["lp"], b["ln"]), 0.0)
    return (b["S"] + last) / b["C"].clamp(min=1.0)


def _word(b, d):
    """TextBlob's ``assessments`` loop for one word (all tensors broadcast together).

    ``S`` sums the closed assessments, ``C`` counts all; the last one is open: polarity
    ``lp``, intensity ``li``, negated ``ln``. ``m``: a modifier waits (``mly``: it ends in
    "ly"); ``n``: a negation waits. An emoticon is an unknown word that opens an assessment.
    """
    S, C, lp, li, ln, m, mly, n = (b[k] for k in _BASE)
    kn, un, emo = d["word"] & d["known"], d["word"] & ~d["known"], d["word"] & d["emo"]
    new = kn & ~m  # a lexicon word opens an assessment unless a modifier waits
    n1 = d["neg"] | (n & (d["len"] <= 1))  # unknown: a negation waits across 1-letter words
    trig = un & n1 & m & mly  # "really not": the negation applies to the "-ly" modifier
    opens = new | emo
    S2 = torch.where(opens & (C > 0), S + _fin(lp, ln | trig), S)
    lp2 = torch.where(kn, torch.where(new, d["p"], (d["p"] * li).clamp(-1.0, 1.0)), torch.where(emo, d["p"], lp))
    li2 = torch.where(kn, torch.where(n, 1.0 / d["i"], d["i"]), torch.where(emo, 1.0, li))
    return dict(S=S2, C=C + opens.float(), lp=lp2, li=li2,
                ln=torch.where(kn, (ln & ~new) | n, (ln | trig) & ~emo),
                m=torch.where(kn, d["mod"], torch.where(un, m & (trig | (d["len"] <= 2)), m)),
                mly=torch.where(kn, d["ly"], mly),
                n=torch.where(kn, d["neg"], torch.where(un, n1 & ~trig, n)))


def _punct(b, p):
    """A run of punctuation words: resets, an emoticon's assessment, then its "!" boosts."""
    S, C, lp, li, ln, m, mly, n = (b[k] for k in _BASE)
    emo = p["pemo"]
    S2 = torch.where(emo & (C > 0), S + _fin(lp, ln), S)
    C2 = C + emo.float()
    lp2 = torch.where(emo, p["ep"], lp)
    lp2 = torch.where(C2 > 0, (lp2 * torch.pow(1.25, p["k"])).clamp(-1.0, 1.0), lp2)
    return dict(S=S2, C=C2, lp=lp2, li=torch.where(emo, 1.0, li), ln=ln & ~emo,
                m=m & ~p["mres"], mly=mly, n=n & ~p["nres"])


def _fields(rows, names):
    rows = torch.tensor(rows, dtype=torch.float64)
    return {f: rows[:, j].bool() if f in _BOOL else rows[:, j].float() for j, f in enumerate(names)}


def _build(tokenizer) -> dict:
    """CPU tables for one tokenizer: token descriptions and kinds, and the trie of forms."""
    from textblob._text import EMOTICONS, PUNCTUATION
    from textblob.en import sentiment as tb

    lex = {w: tb[w] for w in tb.keys()}  # (loads the lexicon lazily)
    negations = set(tb.negations)
    emoticons = {e.lower(): p for (_, p), es in EMOTICONS.items() for e in es}
    split = set(PUNCTUATION) | set(_QUOTES) | {"."}
    strings, special = token_strings(tokenizer)
    V = len(strings)
    special = special.clone()  # also the added special tokens decode(skip_special_tokens=True) drops
    special[[i for i, a in getattr(tokenizer, "added_tokens_decoder", {}).items() if a.special and i < V]] = True

    def describe(w):  # _WORD fields of one lower-cased TextBlob word
        if w in lex:
            p, _, i = lex[w][None]
            return (1, 1, p, i, "RB" in lex[w], w.endswith("ly"), w in negations, min(len(w), 3), 0)
        emo = not w.isalpha() and len(w) <= 5 and w not in PUNCTUATION and w in emoticons
        return (1, 0, emoticons[w] if emo else 0.0, 1.0, 0, 0, w in negations, min(len(w), 3), emo)

    word_rows, punct_rows, kinds = [], [], []  # kinds: starts a chunk, glued word, glued punct, ends in
    # whitespace, holds punctuation
    for t, s in enumerate(strings):
        body = s[1:] if s[:1] == " " else s
        if special[t]:  # adds no text: changes nothing, scores 0
            word_rows.append(_NOWORD)
            punct_rows.append((0, 0, 0, 0, 0.0))
            kinds.append((0, 0, 0, 0, 0))
            continue
        if body.isalnum():  # the common case, 48k of 49k tokens: one word, maybe after a space
            word_rows.append(describe(body.lower()))
            punct_rows.append((0, 0, 0, 0, 0.0))
            kinds.append((s[0] == " ", s[0] != " ", 0, 0, 0))
            continue
        for q in _QUOTES:
            s = s.replace(q, f" {q} ")
        words = " ".join(tb.tokenizer(s)).lower().split()
        emo = [w for w in words if describe(w)[-1]]
        core = [w for w in words if w not in emo and any(c not in split for c in w)]
        rest = [w for w in words if w not in core]
        word_rows.append(describe(core[-1]) if core else _NOWORD)
        punct_rows.append((sum(w == "!" for w in rest), any(len(w.strip("'")) > 1 for w in rest),
                           any(len(w) > 2 for w in rest), bool(emo), emoticons[emo[0]] if emo else 0.0))
        first = s.lstrip()[:1]
        starts = s[:1].isspace() or not first  # glued punctuation holding a word ("_%") merges like a word
        kinds.append((starts, not starts and (first not in split or bool(core)),
                      not starts and first in split and not core, s[-1:].isspace(), bool(rest)))
    _, gluew, gluep, ends_ws, punct = torch.tensor(kinds, dtype=torch.bool).unbind(1)  # [V] each

    # trie of the canonical spellings of every form TextBlob scores as a unit; node n is
    # description row V + n, node N is "none"
    units = [w for w in set(lex) | negations if not any(c.isspace() or c in _QUOTES for c in w)]
    forms = {f for w in units for c in {w, w.capitalize(), w.upper()} for f in (c, " " + c)}
    forms |= {f for es in EMOTICONS.values() for e in es for c in {e, e.lower()} for f in (c, " " + c)
              if not any(q in c for q in _QUOTES)}
    forms = sorted(forms)
    # through the tokenizer's own call, which sets padding per call: its fast backend alone keeps
    # the padding of the caller's last tok(..., padding=True) and would pad every form
    spelled = tokenizer(forms, add_special_tokens=False, padding=False, truncation=False)["input_ids"]
    kids: list[dict[int, int]] = []
    root: dict[int, int] = {}
    node_rows, complete = [], []
    for ids in spelled:
        level = root
        for j, t in enumerate(ids):
            if t not in level:
                level[t] = len(kids)
                kids.append({})  # forms are ASCII: their token texts concatenate exactly
                w = "".join(strings[i] for i in ids[: j + 1]).strip().lower()
                node_rows.append(describe(w))
                complete.append(w in lex or w in negations or bool(node_rows[-1][-1]))
            level = kids[level[t]]
    N = len(kids)
    # edges grouped by parent (CSR): node n's children are edges start[n] .. start[n] + deg[n] - 1;
    # edge E is padding (token 0, child "none")
    edges = torch.tensor([(a, c) for k in kids for a, c in k.items()] + [(0, N)], dtype=torch.long)  # [E + 1, 2]
    deg = torch.tensor([len(k) for k in kids] + [0], dtype=torch.long)  # [N + 1]
    start = torch.cumsum(deg, 0) - deg
    edge_tok, edge_kid = edges.unbind(1)
    root_node = torch.full((V,), N, dtype=torch.long)  # [V]
    root_node[list(root)] = torch.tensor(list(root.values()), dtype=torch.long)
    root_node[special] = N
    complete = torch.tensor(complete + [False])  # [N + 1]

    # description rows: V tokens, N trie nodes, then unknown words of 2 and 3+ letters, empty
    unk = [(1, 0, 0.0, 1.0, 0, 0, 0, n, 0) for n in (2, 3)]
    D = _fields(word_rows + node_rows + unk + [_NOWORD], _WORD)
    P = _fields(punct_rows, _PUNCT)
    # the distinct (description, punctuation) pairs of tokens, for the [B, U] score
    both = torch.stack([D[f][:V].double() for f in _WORD] + [P[f].double() for f in _PUNCT] + [gluew.double()], 1)
    uniq, uidx = torch.unique(both, dim=0, return_inverse=True)  # [U, 15], [V]
    U = {f: uniq[:, j].bool() if f in _BOOL else uniq[:, j].float() for j, f in enumerate(_WORD + _PUNCT)}
    U["gluew"] = uniq[:, -1].bool()
    return dict(D=D, P=P, U=U, uidx=uidx, gluew=gluew, gluep=gluep, ends_ws=ends_ws, punct=punct,
                text=~special, root=root_node, start=start, deg=deg, edge_tok=edge_tok, edge_kid=edge_kid,
                edge_adopt=gluew[edge_tok] | complete[edge_kid], slots=torch.arange(int(deg.max())),
                V=V, N=N)


def _children(t, node):
    """``[B, W]`` children of each row's trie node: token, child node, adopted; padded."""
    slot = t["slots"][None, :]
    idx = torch.where(slot < t["deg"][node][:, None], t["start"][node][:, None] + slot, t["edge_tok"].numel() - 1)
    return t["edge_tok"][idx], t["edge_kid"][idx], t["edge_adopt"][idx]


class Sentiment(Reward):
    """TextBlob polarity of the completion, shaped per token (see the module docstring).

    Each candidate scores ``Phi(prefix + a) - Phi(prefix)`` with ``Phi`` the TextBlob
    polarity of the completion so far, so a row's rewards sum to the polarity of its
    text (no terminal reward: ``Phi`` of the empty text is 0). Oracle:
    ``TextBlob(text).sentiment.polarity`` on the completion decoded without special tokens.

    Row state (``[B]`` each): the assessments of the closed words (``_BASE``); the pending
    chunk: its word (``core``, a description row), its trie node (``node``) and the
    punctuation glued after it (``tk`` "!" count, ``tn``/``tm`` resets, ``temo``/``tep`` an
    emoticon, ``tany`` any); ``open``: the last token did not end in whitespace.
    """

    default_name = "sentiment"

    def bind(self, tokenizer) -> None:
        hit = _TABLES.get(id(tokenizer))
        if hit is None or hit[0] is not tokenizer:
            hit = _TABLES[id(tokenizer)] = (tokenizer, _build(tokenizer))
        self._t, self._on = hit[1], {}

    def init(self, ctx):
        dev = ctx.device
        if dev not in self._on:  # the tables (a few MB) move once per device
            self._on[dev] = {k: ({f: x.to(dev) for f, x in v.items()} if isinstance(v, dict) else
                                 v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in self._t.items()}
        tab = self._on[dev]
        f = lambda v, dtype=torch.float32: torch.full((ctx.batch,), v, dtype=dtype, device=dev)  # noqa: E731
        st = dict(tab=tab, S=f(0.0), C=f(0.0), lp=f(0.0), li=f(1.0), tk=f(0.0), tep=f(0.0),
                  core=f(tab["V"] + tab["N"] + 2, torch.long), node=f(tab["N"], torch.long))  # empty, none
        for k in ("ln", "m", "mly", "n", "tn", "tm", "temo", "tany", "open"):
            st[k] = f(False, torch.bool)
        return st

    def _pending(self, st):
        """``b0``: the state before the pending word; ``b1``: with it and its punctuation."""
        D = st["tab"]["D"]
        b0 = {k: st[k] for k in _BASE}
        trail = {"k": st["tk"], "nres": st["tn"], "mres": st["tm"], "pemo": st["temo"], "ep": st["tep"]}
        b1 = _punct(_word(b0, {f: D[f][st["core"]] for f in _WORD}), trail)  # [B] each
        return b0, b1

    def score(self, st, logits):
        t = st["tab"]
        b0, b1 = self._pending(st)
        st["b1"] = b1  # update() closes the pending word with it
        phi1 = _phi(b1)[:, None]  # [B, 1]: Phi(prefix)
        # every token as a new word or as punctuation after the pending word: [B, U]
        bu = {k: v[:, None] for k, v in b1.items()}
        phi_u = _phi(_punct(_word(bu, t["U"]), t["U"]))
        # a word token glued to the pending word makes it an unknown word ...
        live = st["open"] & (st["core"] != t["V"] + t["N"] + 2)  # [B]
        phi_e = _phi(b0)  # [B]: an unknown word that is no negation changes no assessment
        phi_u = torch.where(live[:, None] & t["U"]["gluew"], phi_e[:, None], phi_u) - phi1
        out = phi_u.index_select(1, t["uidx"])  # [B, V]: the only full-width op
        # ... unless the trie spells on: a lexicon word, an emoticon, or a prefix of one [B, W]
        toks, kid, adopt = _children(t, st["node"])
        bk = {k: v[:, None] for k, v in b0.items()}
        phi_k = _phi(_word(bk, {f: t["D"][f][t["V"] + kid] for f in _WORD})) - phi1
        adopt = live[:, None] & adopt
        return out.scatter_add_(1, toks, torch.where(adopt, phi_k - out.gather(1, toks), 0.0))

    def chosen(self, st, tokens, alive, logits):
        before = self._pending(st)[1]
        st["b1"] = before
        self.update(st, tokens, alive)
        return _phi(self._pending(st)[1]) - _phi(before)  # [B]

    def update(self, st, tokens, alive):
        t, D, P = st["tab"], st["tab"]["D"], st["tab"]["P"]
        V, N = t["V"], t["N"]
        pad = tokens >= V  # the model's padding rows past the tokenizer: no text
        tokens = tokens.clamp(max=V - 1)
        text = alive & ~pad & t["text"][tokens]
        live = st["open"] & (st["core"] != V + N + 2)
        glued = text & live & (t["gluew"][tokens] | t["gluep"][tokens])
        new = text & ~glued
        toks, kid, adopts = _children(t, st["node"])  # [B, W]
        hits = (toks == tokens[:, None]) & (kid < N)
        child = torch.where(hits.any(1), torch.where(hits, kid, 0).sum(1), N)  # [B]
        adopt = glued & (hits & adopts).any(1)  # the trie's node becomes the word
        ext = glued & ~adopt & t["gluew"][tokens]  # an unknown word, longer
        trl = glued & ~adopt & ~ext  # punctuation after the word
        b1 = st.pop("b1", None) or self._pending(st)[1]
        for k in _BASE:  # a new chunk closes the pending one
            st[k] = torch.where(new, b1[k], st[k])
        merged = D["len"][st["core"]] + D["len"][tokens] + st["tany"].float()
        root = t["root"][tokens]
        core_new = torch.where(root < N, V + root, torch.where(D["word"][tokens], tokens, V + N + 2))
        core_ext = torch.where(merged <= 2, V + N, V + N + 1)
        st["core"] = torch.where(new, core_new, torch.where(adopt, V + child,
                                                            torch.where(ext, core_ext, st["core"])))
        st["node"] = torch.where(new, root, torch.where(glued, child, st["node"]))
        # the pending run of punctuation: the token's own (fresh), added on (trl), cleared when
        # the trie holds the token, else unchanged (dead rows, special tokens)
        fresh = (new & (root == N)) | ext
        clear = adopt | (new & (root < N))

        def run(old, own, add):
            return torch.where(fresh, own, torch.where(trl, add, torch.where(clear, torch.zeros_like(old), old)))

        st["tk"] = run(st["tk"], P["k"][tokens], st["tk"] + P["k"][tokens])
        for k, f in (("tn", "nres"), ("tm", "mres"), ("temo", "pemo")):
            st[k] = run(st[k], P[f][tokens], st[k] | P[f][tokens])
        st["tep"] = run(st["tep"], P["ep"][tokens], torch.where(P["pemo"][tokens], P["ep"][tokens], st["tep"]))
        st["tany"] = run(st["tany"], t["punct"][tokens], torch.ones_like(st["tany"]))
        st["open"] = torch.where(text, ~t["ends_ws"][tokens], st["open"])
