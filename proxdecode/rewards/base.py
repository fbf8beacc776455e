"""Reward families and the set that runs them inside the decode loop.

A proximal reward R(s_t, a) is needed for *every* candidate token ``a`` at every step, so a
family is written as a function from a small per-row device state to a ``[B, V]`` tensor,
never as a call on decoded text. Families come in four kinds, and the kind
decides where the work happens:

- ``"table"``: a fixed value per token. All tables are folded, weighted, into one
  ``[V]`` vector once per ``generate`` call; a step adds it with no other work.
- ``"state"``: depends on the row's history through a device state ``[B, ...]`` that
  ``update`` advances with the chosen tokens.
- ``"model"``: a log-prob from the policy's logits (or a reference model's).
- ``"text"``: a Python function of decoded text, run on the finished rows, off the hot
  path (``text.TextReward``); recorded, never steering.

Recorded rewards: the reward of step ``t`` is ``R(s_t, a_t)`` of the chosen token, and a
family's ``terminal`` value is added on the row's last step. Families that reproduce a
text-level rule shape it with a potential (Ng, Harada & Russell, 1999): per-step rewards
``Phi(s_{t+1}) - Phi(s_t)``, so steering sees the signal early and the rewards of a row
still sum to the rule's value on the final text.

Rewards score the *completion* (the generated tokens, special tokens skipped), as TRL's
reward functions do; the prompt is context, not output.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

_STRINGS_CACHE: dict[int, tuple[object, list[str], torch.Tensor]] = {}


class RewardError(ValueError):
    """A reward failed on a finished rollout. ``rollout`` holds everything else it computed
    (the failing families' components are NaN), so no generation work is lost."""

    def __init__(self, message: str, rollout=None):
        super().__init__(message)
        self.rollout = rollout


def finite_number(value) -> float | None:
    """``value`` as a float when it is a finite real number (a Python or numpy scalar, any
    ``numbers.Real``, or a 0-d real tensor; never a bool), else None."""
    if isinstance(value, torch.Tensor):
        real = value.ndim == 0 and value.dtype != torch.bool and not value.dtype.is_complex
    else:
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def token_strings(tokenizer) -> tuple[list[str], torch.Tensor]:
    """Each token id decoded alone, and a ``[V]`` bool mask of special tokens (cached)."""
    hit = _STRINGS_CACHE.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1], hit[2]
    V = len(tokenizer)
    strings = tokenizer.batch_decode([[i] for i in range(V)], clean_up_tokenization_spaces=False)
    special = torch.zeros(V, dtype=torch.bool)
    # all_special_ids misses added tokens flagged special outside the named slots
    # (SmolLM2's <repo_name>, <file_sep>, ... ids 3-16)
    ids = set(tokenizer.all_special_ids)
    ids |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    special[[i for i in ids if i < V]] = True
    _STRINGS_CACHE[id(tokenizer)] = (tokenizer, strings, special)
    return strings, special


class Reward:
    """One weighted reward family. Subclasses set ``kind`` and implement its hooks.

    Hooks (``B`` rows, ``V`` vocabulary; all on the logits' device, no host sync):
        bind(tokenizer): build CPU tables once, when the family joins a ``Rewards``.
        table() -> [V]: kind "table" only.
        init(ctx) -> state: kinds "state" and "model"; ``ctx`` is a ``RewardContext``
            (batch, device, the ``[B, P]`` prompts and their mask, the vocabulary width, how
            many prompts the rows repeat, the call's EOS ids).
        score(state, logits) -> [B, V]: unweighted reward of every candidate.
        update(state, tokens, alive) -> None: advance the state in place with ``[B]`` tokens;
            called after the same step's ``score`` when one ran (it may reuse what ``score``
            kept, and must not rely on it otherwise).
        chosen(state, tokens, alive, logits) -> [B]: the unweighted reward of the chosen
            ``tokens`` (what ``score(...)`` would give at them), then ``update``. It is the
            path taken when nothing steers: only the ``[B]`` chosen tokens need a reward then,
            and a family that can get it without the ``[B, V]`` pass overrides this (e.g. as
            ``Phi(after) - Phi(before)``); the default runs ``score`` and gathers.
        terminal(state) -> [B] or None: added on the row's last step.

    ``traceable``: True when ``score``, ``update`` and ``chosen`` are tensor ops only (no
    host sync, no branch on tensor values, no model call), so ``generate(compile=...)`` can
    trace them into its compiled step; a family that runs a model or Python on the way says
    False, and the step then runs eager beside the compiled forward.
    """

    kind = "state"
    default_name = "reward"
    traceable = True

    def __init__(self, weight: float = 1.0, name: str | None = None):
        self.weight = finite_number(weight)
        if self.weight is None:
            raise ValueError(f"{type(self).__name__}: weight must be a finite real number (Python, numpy "
                             f"or a 0-d tensor), got {weight!r}")
        self.name = name or self.default_name

    def _flags(self, **flags: bool) -> None:
        """Set boolean options, refusing anything but True or False (a string "no" is truthy)."""
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"{type(self).__name__}: {key} must be True or False, got {value!r}")
            setattr(self, key, value)

    def bind(self, tokenizer) -> None:
        pass

    def table(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a token-table reward")

    def init(self, ctx: "RewardContext") -> dict:
        return {}

    def score(self, state: dict, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement score()")

    def update(self, state: dict, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        pass

    def chosen(self, state: dict, tokens: torch.Tensor, alive: torch.Tensor,
               logits: torch.Tensor) -> torch.Tensor:
        d = self.score(state, logits)  # [B, V'], V' <= V: the model's padding rows score 0
        r = torch.nn.functional.pad(d, (0, logits.shape[1] - d.shape[1])).gather(1, tokens[:, None])[:, 0]  # [B]
        self.update(state, tokens, alive)
        return r

    def terminal(self, state: dict) -> torch.Tensor | None:
        return None


@dataclass
class RewardContext:
    """What a family's ``init`` may look at: the shape and the prompts of one call."""

    batch: int
    device: torch.device
    vocab: int  # logits per row (the tokenizer's size plus any padding rows)
    prompt_ids: torch.Tensor | None = None  # [B, P] int64, left-padded
    prompt_mask: torch.Tensor | None = None  # [B, P] 0 on padding
    max_new_tokens: int = 0  # steps this call may run
    linear: str = "torch"  # how a reference model's linear layers run: the policy's choice
    prompts: int | None = None  # prompts before num_return_sequences (rows b*k..b*k+k-1 share one); None: batch
    eos_token_ids: tuple[int, ...] = ()  # the call's EOS ids (choosing one ends the row)

    def eos_mask(self) -> torch.Tensor:
        """``[vocab]`` bool on the CPU: True at the call's EOS ids."""
        eos = torch.zeros(self.vocab, dtype=torch.bool)
        eos[list(self.eos_token_ids)] = True
        return eos


@dataclass
class _Bound:
    names: list[str]
    table: torch.Tensor | None  # [V] weighted sum of all token tables
    tables: torch.Tensor | None  # [F_table, V] weighted, for per-component reads
    table_pos: torch.Tensor  # [F_table] int64 component index of each table row (device)
    live: list[tuple[int, Reward]]  # (component index, family) of state/model kinds
    text: list[tuple[int, Reward]]  # (component index, family) of the text kind
    tokenizer: object


class Rewards:
    """A weighted set of reward families for one tokenizer.

    Args:
        tokenizer: the tokenizer of the model to decode with.
        families: ``Reward`` instances; names must be unique (they key
            ``Rollout.reward_components``).
    """

    def __init__(self, tokenizer, families):
        families = list(families)
        if not families:
            raise ValueError("Rewards needs at least one reward family")
        for f in families:
            if not isinstance(f, Reward):
                raise TypeError(f"Rewards: {f!r} is not a proxdecode reward family")
        names = [f.name for f in families]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"Rewards: duplicate reward names {dupes}; pass name= to tell them apart")
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.families = families
        for f in families:
            f.bind(tokenizer)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.families]

    def start(self, model_vocab: int, batch: int, device, tokenizer=None,
              prompt_ids=None, prompt_mask=None, max_new_tokens: int = 0, linear: str = "torch", *,
              prompts: int | None = None, eos_token_ids: tuple[int, ...] | None = None) -> "RewardRun":
        """Check this set fits the model, and make the per-call device state.

        ``prompts``: the number of prompts before ``num_return_sequences`` repeated each
        (None: ``batch``, one row each); ``eos_token_ids``: the ids that end a row in this
        call (None: the tokenizer's EOS)."""
        if prompts is None:
            prompts = batch
        elif isinstance(prompts, bool) or not isinstance(prompts, int) or prompts < 1 or batch % prompts:
            raise ValueError(f"Rewards.start: prompts must be an int >= 1 dividing the batch of {batch} rows, "
                             f"got {prompts!r}")
        if eos_token_ids is None:
            eos = self.tokenizer.eos_token_id
            eos_token_ids = () if eos is None else (eos,)
        eos_token_ids = tuple(eos_token_ids)
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < model_vocab for i in eos_token_ids):
            raise ValueError(f"Rewards.start: eos_token_ids must be token ids in [0, {model_vocab}), "
                             f"got {eos_token_ids!r}")
        if tokenizer is not None and tokenizer is not self.tokenizer \
                and tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError("rewards were built for another tokenizer than the one passed to generate")
        if self.vocab_size > model_vocab or model_vocab - self.vocab_size > 256:
            raise ValueError(f"rewards were built for a tokenizer of {self.vocab_size} tokens; the model "
                             f"has {model_vocab} logits (allowed: equal, or up to 256 padding rows)")
        tables, pos, live, text = [], [], [], []
        for i, f in enumerate(self.families):
            if f.kind == "table":
                t = f.table().float()
                tables.append(torch.nn.functional.pad(t, (0, model_vocab - t.numel())) * f.weight)
                pos.append(i)
            elif f.kind == "text":
                text.append((i, f))
            else:
                live.append((i, f))
        stacked = torch.stack(tables).to(device) if tables else None
        bound = _Bound(self.names, stacked.sum(0) if tables else None, stacked,
                       torch.tensor(pos, dtype=torch.long, device=device), live, text, self.tokenizer)
        ctx = RewardContext(batch, torch.device(device), model_vocab, prompt_ids, prompt_mask,
                            max_new_tokens, linear, prompts, eos_token_ids)
        return RewardRun(bound, [f.init(ctx) for _, f in live], model_vocab)


class RewardRun:
    """The device state of one ``generate`` call; the engine's only view of the rewards."""

    def __init__(self, bound: _Bound, states: list[dict], vocab: int):
        self.b, self.states, self.vocab = bound, states, vocab
        self._dense: list[torch.Tensor] = []

    @property
    def names(self) -> list[str]:
        return self.b.names

    @property
    def traceable(self) -> bool:
        """Whether every family on the hot path can be traced into a compiled step."""
        return all(f.traceable for _, f in self.b.live)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, V]`` weighted reward of every candidate token this step (steering needs it;
        without steering the engine skips it and ``record`` takes the families' ``chosen``
        path)."""
        B = logits.shape[0]
        # one [B, V] buffer summed into in place: a new [B, V] tensor per family and term is
        # allocator churn that costs more than the sums (on CPU, page faults when malloc
        # hands such blocks back to the OS between steps)
        total = self.b.table.expand(B, -1).clone() if self.b.table is not None \
            else torch.zeros(B, self.vocab, device=logits.device)
        self._dense = []
        for (_, f), st in zip(self.b.live, self.states):
            d = f.score(st, logits)  # [B, V'], V' <= V (the tokenizer's ids), unweighted
            self._dense.append(d)
            total[:, : d.shape[1]].add_(d, alpha=f.weight)
        return total

    def record(self, tokens: torch.Tensor, alive: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """``[F, B]`` weighted reward of the chosen tokens (0 on dead rows); advances the state.

        Reads this step's ``score`` when it ran, else each family's ``chosen`` path on the
        same ``[B, V]`` ``logits``."""
        out = torch.zeros(len(self.b.names), tokens.shape[0], device=tokens.device)
        if self.b.tables is not None:
            out.index_copy_(0, self.b.table_pos, self.b.tables[:, tokens])  # a device index: no host copy
        dense, self._dense = self._dense, []
        if self.b.live and not dense and logits is None:
            raise ValueError("RewardRun.record: pass this step's logits when score() did not run")
        for j, ((i, f), st) in enumerate(zip(self.b.live, self.states)):
            if dense:
                d = dense[j]  # [B, V']
                v = d.gather(1, tokens.clamp(max=d.shape[1] - 1)[:, None])[:, 0]
                if d.shape[1] < self.vocab:  # a padding row of the model's vocabulary scores 0
                    v = torch.where(tokens < d.shape[1], v, 0.0)
                out[i] = v * f.weight
                f.update(st, tokens, alive)
            else:
                out[i] = f.chosen(st, tokens, alive, logits) * f.weight
        return out * alive

    def finish(self, comps: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Fill the text families' rows of ``comps`` ``[F, B, T]`` from the finished completions
        ``tokens`` ``[B, T]`` (``mask`` False after EOS). Every text family runs; a failing
        one's row is NaN, and once all ran the first failure (``RewardError``) is raised,
        naming the others that failed too."""
        failed: list[tuple[str, RewardError]] = []
        for i, f in self.b.text:
            try:
                comps[i] = f.rewards(self.b.tokenizer, tokens, mask).to(comps.device) * f.weight  # [B, T]
            except RewardError as e:
                comps[i] = float("nan")
                failed.append((f.name, e))
        if len(failed) == 1:
            raise failed[0][1]
        if failed:
            others = ", ".join(repr(name) for name, _ in failed[1:])
            raise RewardError(f"{failed[0][1]}; the text rewards {others} failed too (their components "
                              f"are NaN as well)") from failed[0][1]

    def terminal(self, batch: int, device) -> torch.Tensor:
        """``[F, B]`` weighted terminal rewards from the final state."""
        out = torch.zeros(len(self.b.names), batch, device=device)
        for (i, f), st in zip(self.b.live, self.states):
            t = f.terminal(st)
            if t is not None:
                out[i] = t * f.weight
        return out
