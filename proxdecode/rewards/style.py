"""Style rules from the seed write-up: vocabulary richness, length, word lists, grammar.

The seed (section 3.1) lists rule rewards for "grammar", "vocabulary richness" and
punctuation; each is a vector over the vocabulary here, set up once from the tokens'
own texts (``token_strings``) so that a step never decodes text:

- ``Repetition``: distinct-n on *tokens* (a penalty with the default weight -1);
- ``Length``: a token budget, ``min_tokens`` / ``max_tokens``;
- ``WordList``: banned (negative weight) or encouraged (positive) words, a token table;
  it also serves as the seed's punctuation reward (``WordList(["!"], whole_words=False)``
  counts '!' exactly); ``EndsWith`` in ``rules`` is the sentence-final punctuation rule;
- ``Capitalization``: a grammar proxy, upper-case sentence starts.

Tokens are not words, and each family says how it deals with that: ``Repetition`` and
``Length`` are defined on tokens (their oracles count tokens; the tests measure how
token-level distinct-n follows word-level distinct-n), ``Capitalization`` runs a
character automaton through each token's text, so it is exact up to characters split
across byte-level tokens, and ``WordList`` scores the tokens that spell a listed word,
with a documented fallback for words no single token spells. All of them skip special
tokens (EOS adds no text and is never a repeat or a word), as ``base`` says.
"""

from __future__ import annotations

import torch

from .base import Reward, token_strings


def _pad_vocab(tab: torch.Tensor, vocab: int, value=0) -> torch.Tensor:
    """A ``[..., V_tok]`` table widened to the model's ``vocab`` logits (padding rows)."""
    extra = vocab - tab.shape[-1]
    return torch.nn.functional.pad(tab, (0, extra), value=value) if extra > 0 else tab[..., :vocab]


def _prompt_tokens(ctx, special: torch.Tensor):
    """The prompts' kept tokens, left-aligned: ``([B, P] ids, -1 after each row's end; [B] counts)``.

    Padding (``prompt_mask`` 0) and special tokens are dropped, vectorised (no loop over rows).
    """
    ids = ctx.prompt_ids.to(ctx.device).long()
    keep = ~special[ids]
    if ctx.prompt_mask is not None:
        keep &= ctx.prompt_mask.to(ctx.device).bool()
    B, P = ids.shape
    col = torch.where(keep, keep.long().cumsum(1) - 1, P)  # column P is a dump
    out = torch.full((B, P + 1), -1, dtype=torch.long, device=ctx.device)
    out.scatter_(1, col, torch.where(keep, ids, -1))
    return out[:, :P], keep.sum(1)


class Repetition(Reward):
    """Repeated token n-grams: the seed's "vocabulary richness" as distinct-n.

    A candidate ``a`` scores +1 when the n-gram (the row's last ``n - 1`` completion tokens,
    ``a``) already occurred in the completion, else 0; the default weight -1 makes it a
    penalty (the full reward stack's ``Repetition(weight=-0.5)``). A row's rewards therefore sum to
    ``#n-grams - #distinct n-grams`` of its completion, i.e. ``(1 - distinct-n) * #n-grams``.
    Oracle: that count in plain Python on the completion's token ids, special tokens
    removed (``test_rewards_rules._repeats``).

    Tokens, not words: n-grams are of token ids. A word split over tokens ("App" "les")
    is several unigrams, and " the" / "The" / " The" are different tokens, so token-level
    repeats follow word-level ones closely but not exactly. Measured on 14 prose texts
    (``tests/test_rewards_rules.py``): Pearson 0.997 for n = 1 and n = 2 against repeats of
    words and punctuation marks (``\\w+|[^\\w\\s]``), 0.96 / 0.94 against ``text.split()``
    words; the misses are a text's first word (no leading space: "A" vs " A") and case.
    Special tokens (EOS, chat markers) are dropped from the history and always score 0:
    they are never repeats, and n-grams run across them.

    ``include_prompt=True`` also counts n-grams seen in the prompt (and those spanning the
    prompt/completion boundary) as already seen: the sum is then the number of
    completion-ending n-grams that occurred earlier in prompt + completion.

    State: ``n = 1`` keeps a ``[B, V]`` bool "seen" table (one scatter per step). ``n >= 2``
    keeps the token history ``[B, n - 1 + P + T]`` (static when ``max_new_tokens`` is known)
    and each step compares every earlier (n-1)-gram with the current context and scatters
    the tokens that followed a match into ``[B, V]``: O(B * (P + T) * n) work a step, no
    Python loop over rows or vocabulary.
    """

    default_name = "repetition"

    def __init__(self, n: int = 1, weight: float = -1.0, include_prompt: bool = False,
                 name: str | None = None):
        super().__init__(weight, name)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Repetition: n must be an int >= 1, got {n!r}")
        self.n = n
        self._flags(include_prompt=include_prompt)

    def bind(self, tokenizer) -> None:
        _, self._special = token_strings(tokenizer)

    def init(self, ctx):
        B, dev, V = ctx.batch, ctx.device, ctx.vocab
        special = _pad_vocab(self._special, V, True).to(dev)
        use_prompt = self.include_prompt and ctx.prompt_ids is not None
        if use_prompt:
            prompt, kept = _prompt_tokens(ctx, special)
        st = {"special": special}
        if self.n == 1:
            seen = torch.zeros(B, V + 1, dtype=torch.bool, device=dev)
            if use_prompt:  # -1 (past a row's end) lands in the dump column V
                seen.scatter_(1, torch.where(prompt >= 0, prompt, V), True)
            st["seen"] = seen[:, :V].contiguous()
            return st
        P = prompt.shape[1] if use_prompt else 0
        room = ctx.max_new_tokens or 64  # grown on demand when the call's length is unknown
        hist = torch.full((B, self.n - 1 + P + room), -1, dtype=torch.long, device=dev)
        if use_prompt:
            hist[:, self.n - 1: self.n - 1 + P] = prompt
        st.update(hist=hist, length=kept if use_prompt else torch.zeros(B, dtype=torch.long, device=dev),
                  room=room)
        return st

    def score(self, st, logits):
        if self.n == 1:
            return st["seen"].float()
        n, hist, length = self.n, st["hist"], st["length"]
        B, H = hist.shape
        # real token i sits at column n-1+i; the context (last n-1 tokens) at columns length..length+n-2
        ctx = hist.gather(1, length[:, None] + torch.arange(n - 1, device=hist.device))  # [B, n-1]
        win = hist.unfold(1, n, 1)  # [B, H-n+1, n]: window s covers columns s..s+n-1
        s = torch.arange(win.shape[1], device=hist.device)
        # the window is all real tokens (s >= n-1) and its last token came before now (s <= length-1)
        valid = (s[None, :] >= n - 1) & (s[None, :] < length[:, None])
        match = (win[:, :, : n - 1] == ctx[:, None, :]).all(-1) & valid  # [B, S]
        V = st["special"].shape[0]
        nxt = torch.where(match, win[:, :, n - 1], V)
        rep = torch.zeros(B, V + 1, dtype=torch.bool, device=hist.device).scatter_(1, nxt, True)
        return rep[:, :V].float()

    def update(self, st, tokens, alive):
        mark = alive & ~st["special"][tokens]  # [B]
        if self.n == 1:
            rows = torch.arange(tokens.shape[0], device=tokens.device)
            st["seen"][rows, tokens] |= mark
            return
        # room: a host-side count of free columns (each step appends at most one token a row),
        # grown when a caller runs past max_new_tokens. Not under torch.compile: the compiled
        # step runs inside generate, which never does, and a count changing every step would
        # make a new graph every step.
        if not torch.compiler.is_compiling():
            if st["room"] == 0:
                grow = max(64, st["hist"].shape[1])
                st["hist"] = torch.nn.functional.pad(st["hist"], (0, grow), value=-1)
                st["room"] = grow
            st["room"] -= 1
        col = (self.n - 1 + st["length"])[:, None]
        old = st["hist"].gather(1, col)
        st["hist"].scatter_(1, col, torch.where(mark[:, None], tokens[:, None], old))
        st["length"] += mark


class Length(Reward):
    """A token budget: -1 for stopping before ``min_tokens``, -1 per token past ``max_tokens``.

    The length is the number of non-special tokens chosen so far (special tokens add no
    text and do not count). Per candidate ``a``:

    - ``min_tokens``: a special token (EOS and the tokenizer's other special tokens, which
      end turns in chat models) chosen while the length is below ``min_tokens`` scores -1;
      a row that ended short *without* one (out of ``max_new_tokens``, or a stop string)
      gets the -1 as its terminal reward instead, so every too-short completion costs -1
      exactly once;
    - ``max_tokens``: any token but the call's EOS (``generate``'s ``eos_token_id``; the
      tokenizer's when the call names none) chosen once the length has reached
      ``max_tokens`` scores -1 (EOS scores 0 there), so steering favours stopping and a row
      pays one per extra token. Other special tokens are not free past the budget: they add
      no text, but emitting them forever is no way to stop. An EOS id that is text (".")
      counts and pays as text.

    The call's EOS ends the row: whatever a caller records for it after that (another EOS,
    more text) scores 0. A row whose only special token is its final EOS (the engine's
    case) sums to ``-[L < min_tokens] - max(0, L - max_tokens)`` for its ``L`` completion
    tokens.
    Oracle: that expression in plain Python on the token count (the tests also cover
    special tokens chosen mid-row: each one before ``min_tokens`` costs -1). Tokens are
    the unit on purpose; a budget in words would be ``TextReward``'s job.
    """

    default_name = "length"

    def __init__(self, min_tokens: int | None = None, max_tokens: int | None = None,
                 weight: float = 1.0, name: str | None = None):
        super().__init__(weight, name)
        for arg, v in (("min_tokens", min_tokens), ("max_tokens", max_tokens)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"Length: {arg} must be None or an int >= 0, got {v!r}")
        if min_tokens is None and max_tokens is None:
            raise ValueError("Length: give min_tokens, max_tokens or both (both are None)")
        if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
            raise ValueError(f"Length: min_tokens ({min_tokens}) > max_tokens ({max_tokens})")
        self.min_tokens, self.max_tokens = min_tokens, max_tokens

    def bind(self, tokenizer) -> None:
        _, self._special = token_strings(tokenizer)

    def init(self, ctx):
        B, dev = ctx.batch, ctx.device
        special = _pad_vocab(self._special, ctx.vocab, False)  # [V]
        text = _pad_vocab(~self._special, ctx.vocab, False)  # [V] padding rows: neither
        eos = ctx.eos_mask()  # [V] the call's EOS ids
        return {"special": special.to(dev), "text": text.to(dev), "eos": eos.to(dev),
                "over": ((special | text) & ~(eos & special)).to(dev),  # [V] charged past max_tokens
                "count": torch.zeros(B, dtype=torch.long, device=dev),
                "last_special": torch.zeros(B, dtype=torch.bool, device=dev),
                "stopped": torch.zeros(B, dtype=torch.bool, device=dev)}  # [B] chose the call's EOS

    def score(self, st, logits):
        count = st["count"][:, None]
        out = torch.zeros(count.shape[0], st["special"].shape[0], device=count.device)
        if self.min_tokens is not None:
            out -= ((count < self.min_tokens) & st["special"][None, :]).float()
        if self.max_tokens is not None:
            out -= ((count >= self.max_tokens) & st["over"][None, :]).float()
        return torch.where(st["stopped"][:, None], 0.0, out)  # [B, V]

    def update(self, st, tokens, alive):
        alive = alive & ~st["stopped"]  # [B] nothing after the row's EOS counts
        sp = st["special"][tokens]
        st["count"] += alive & st["text"][tokens]
        st["last_special"] = torch.where(alive, sp, st["last_special"])
        st["stopped"] |= alive & st["eos"][tokens]

    def terminal(self, st):
        if self.min_tokens is None:
            return None
        return -((st["count"] < self.min_tokens) & ~st["last_special"]).float()


class WordList(Reward):
    """Banned (negative weight) or encouraged (positive weight) words, as a token table.

    A token scores the number of listed words it spells (1 for nearly all), so a row's
    rewards count the listed words it wrote:

    - ``whole_words=True``: a token spells word ``w`` when its text, stripped of
      surrounding whitespace, is ``w`` (" apple", "apple", "\\napple");
      ``ignore_case=True`` compares case-folded text, so " Apple" and "APPLE" count too.
      Oracle: regex matches of ``w`` between non-word characters in the decoded
      completion. The two differ where a token is only part of a longer word (" apple"
      then "wood", "apple" after " crab": counted, though the text has no word "apple"), and
      where the text spells the word with other tokens ("APPLE" is "APP" "LE": missed).
    - ``whole_words=False``: a token scores the occurrences of ``w`` inside its text
      (``text.count(w)``), so "!!" scores 2 for "!". Oracle: ``text.count(w)``; exact for
      one-character words (punctuation), else it misses occurrences across a token boundary.

    Words that no single token spells (in any of the forms "w", " w", and, with
    ``ignore_case``, their lower/Capitalised/UPPER forms) are split by the tokenizer; a
    table can't see the tokens before, so such a word scores on the *first* token of
    each of its spellings ("quokka" is "qu" "ok" "ka" and " quokka" is " qu" "ok" "ka":
    "qu" and " qu" score): that bans or encourages starting the word, and also counts
    other words that start with the same token ("quagga"). ``split_words`` lists them
    after ``bind``; prefer whole-token words, or ``Keywords`` (stateful) for a coverage
    bonus on split words. A word list that spells no token at all raises ``ValueError``.

    Punctuation, the seed's other rule family: ``EndsWith(".")`` is its sentence-final
    rule, and ``WordList(["!", "?"], whole_words=False, weight=...)`` rewards or penalises
    each punctuation mark exactly (every token that contains one), so there is no
    separate punctuation family.
    """

    kind = "table"
    default_name = "words"

    def __init__(self, words, weight: float = 1.0, whole_words: bool = True,
                 ignore_case: bool = False, name: str | None = None):
        super().__init__(weight, name)
        words = [words] if isinstance(words, str) else list(words) if words is not None else []
        if not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(f"WordList: words must be a non-empty list of non-empty strings, got {words!r}")
        self._flags(whole_words=whole_words, ignore_case=ignore_case)
        fold = str.casefold if ignore_case else (lambda x: x)
        self.words = list(dict.fromkeys(w.strip() for w in words))  # in order, no duplicates
        self._keys = list(dict.fromkeys(fold(w) for w in self.words))
        self.split_words: list[str] = []

    def bind(self, tokenizer) -> None:
        strings, special = token_strings(tokenizer)
        fold = str.casefold if self.ignore_case else (lambda x: x)
        table = torch.zeros(len(strings))
        spelled = set()
        if self.whole_words:
            keys = set(self._keys)
            for i, s in enumerate(strings):
                k = fold(s.strip())
                if k in keys and not special[i]:
                    table[i] = 1.0
                    spelled.add(k)
        else:
            for i, s in enumerate(strings):
                if not special[i]:
                    f = fold(s)
                    c = [f.count(k) for k in self._keys]
                    if any(c):
                        table[i] = float(sum(c))
                        spelled.update(k for k, ci in zip(self._keys, c) if ci)
        self.split_words = []
        for w in self.words:
            if fold(w) in spelled:
                continue
            self.split_words.append(w)
            forms = {w} | ({w.lower(), w.capitalize(), w.upper()} if self.ignore_case else set())
            firsts = set()
            for form in forms | {" " + f for f in forms}:
                ids = tokenizer.encode(form, add_special_tokens=False)
                if ids and not special[ids[0]]:
                    firsts.add(ids[0])
            for i in firsts:
                table[i] += 1.0
        if not table.any():
            raise ValueError(f"WordList: words {self.words} spell no token of this tokenizer")
        self._table = table

    def table(self) -> torch.Tensor:
        return self._table


# Capitalization's automaton: MID (nothing pending), END (just after '.', '!' or '?' and
# any closing quotes/brackets), START (a sentence end and whitespace: the next
# non-whitespace character decides).
MID, END, START = 0, 1, 2
_CAP_CACHE: dict[int, tuple[object, torch.Tensor, torch.Tensor]] = {}
_ENDS, _CLOSERS = ".!?", "\"')]\u201d\u2019"


def _step_chars(state: int, text: str) -> tuple[int, int]:
    """Run the automaton over ``text`` from ``state``: (score, state after)."""
    score = 0
    for c in text:
        if state == START and not c.isspace():
            score += 1 if c.isupper() else -1 if c.islower() else 0
            state = MID
        if c in _ENDS:
            state = END
        elif state == END:
            state = START if c.isspace() else END if c in _CLOSERS else MID
    return score, state


class Capitalization(Reward):
    """A grammar proxy: sentences start with an upper-case letter.

    A sentence start is the first non-whitespace character after a sentence end — '.',
    '!' or '?', then optionally closing quotes or brackets (``" ' ” ’ ) ]``), then at
    least one whitespace character (so "3.5", "e.g" and ".com" are not sentence ends,
    while "e.g. the" is: abbreviations are the known false positive). With
    ``first=True`` the completion's first non-whitespace character is one too. A sentence
    start scores +1 if it is an upper-case letter, -1 if lower-case, 0 otherwise (digit,
    quote, letters without case). With ``first=False`` the automaton starts from the
    state the prompt's text leaves it in, so a completion after "It rained." is a sentence
    start.

    Per candidate token: a 3-state automaton (mid-sentence / after a sentence-end mark /
    sentence start pending) is run over every token's own text from each state once, at
    ``bind``, into ``[3, V]`` score and next-state tables; a step is one row gather and
    a row's rewards sum to the count of upper- minus lower-case sentence starts. It is
    character-level, so words split over tokens don't matter; the only gap is a character
    split across byte-level tokens (each piece decodes to U+FFFD, which scores 0; a
    multi-byte space so split, U+2028 or U+3000 after ".", also hides the sentence start).
    Special tokens add no text: score 0, state unchanged. Oracle:
    ``re.finditer(r"(?=[.!?][\"')\\]”’]*\\s+(\\S))", text)`` (plus ``^\\s*(\\S)`` when
    ``first``), each match's character scored as above.
    """

    default_name = "capitalization"

    def __init__(self, weight: float = 1.0, first: bool = False, name: str | None = None):
        super().__init__(weight, name)
        self._flags(first=first)

    def bind(self, tokenizer) -> None:
        hit = _CAP_CACHE.get(id(tokenizer))
        if hit is None or hit[0] is not tokenizer:
            hit = _CAP_CACHE[id(tokenizer)] = (tokenizer, *self._tables(tokenizer))
        self._score, self._next = hit[1], hit[2]

    @staticmethod
    def _tables(tokenizer):
        """``[3, V]`` score and next-state of every token from every state (~1 s; cached)."""
        strings, special = token_strings(tokenizer)
        V = len(strings)
        score = torch.zeros(3, V)
        nxt = torch.arange(3)[:, None].repeat(1, V)  # identity, kept for special tokens
        for i, s in enumerate(strings):
            if special[i]:
                continue
            for st in (MID, END, START):
                if st == MID and not any(c in _ENDS for c in s):
                    continue  # most tokens: nothing to score, stays MID
                score[st, i], nxt[st, i] = _step_chars(st, s)
        return score, nxt

    def init(self, ctx):
        dev = ctx.device
        score = _pad_vocab(self._score, ctx.vocab).to(dev)
        nxt = _pad_vocab(self._next, ctx.vocab)  # padding rows: identity, as special tokens
        nxt[:, self._next.shape[1]:] = torch.arange(3)[:, None]
        nxt = nxt.to(dev)
        state = torch.full((ctx.batch,), START if self.first else MID, dtype=torch.long, device=dev)
        if not self.first and ctx.prompt_ids is not None:  # carry the prompt's state over
            ids = ctx.prompt_ids.to(dev).long()
            keep = torch.ones_like(ids, dtype=torch.bool) if ctx.prompt_mask is None \
                else ctx.prompt_mask.to(dev).bool()
            for p in range(ids.shape[1]):  # prompt positions, once per call; rows in parallel
                state = torch.where(keep[:, p], nxt[state, ids[:, p]], state)
        return {"score_tab": score, "next_tab": nxt, "state": state}

    def score(self, st, logits):
        return st["score_tab"][st["state"]]  # [B, V]

    def update(self, st, tokens, alive):
        st["state"] = torch.where(alive, st["next_tab"][st["state"], tokens], st["state"])
