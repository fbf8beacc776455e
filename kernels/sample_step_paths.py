"""The per-row pieces of the Triton decode step (``sample_step.py`` holds the kernel, its
launcher and the design: read its docstring first).

Split from the kernel by what they are: ``@triton.jit`` functions the one kernel inlines.
Helpers (scaled scores, log-sum-exp, thresholds), the tile path for top-k <= 256 (a lower
bound on the k-th value from the lane maxima, then rank and mass on the compacted tile),
and the general path (sort-free threshold searches for top-k and top-p, then one pass that
picks). Each works on one row's pointers and scalars; none launches anything.
"""

import triton
import triton.language as tl

from proxdecode.step import TIE_ROOM as _TIE_ROOM

TIE_ROOM = tl.constexpr(_TIE_ROOM)  # ties at the k-th value top-k keeps past the k-th

try:  # libdevice's logf matches CUDA's logf (what torch uses); absent in the interpreter
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - very old triton
    libdevice = None


# ----------------------------------------------------------------------------- helpers
@triton.jit
def _scores(logits_row, seen_row, offs, V, rp, inv_rp, temp, sup_ptr, S,
            PENALTY: tl.constexpr, RP_RECIP: tl.constexpr, SUPPRESS: tl.constexpr):
    """One chunk: raw logits ``z`` (fp32) and processed scores ``s`` (-inf off the row).

    NaN and +inf become 0 in ``s``'s input so an invalid row cannot poison the searches
    (its outputs are junk anyway); for a valid row this is the identity.
    """
    in_row = offs < V
    z = tl.load(logits_row + offs, mask=in_row, other=float("-inf")).to(tl.float32)
    zc = tl.where((z != z) | (z == float("inf")), 0.0, z)
    s = zc
    if PENALTY:  # HF: divide positive, multiply negative logits of seen tokens
        seen = tl.load(seen_row + offs, mask=in_row, other=0) != 0
        if RP_RECIP:  # torch on CUDA divides by a Python scalar as a * fp32(1 / b)
            shrunk = zc * inv_rp
        else:
            shrunk = tl.math.div_rn(zc, rp)
        s = tl.where(seen, tl.where(zc < 0, zc * rp, shrunk), zc)
    if SUPPRESS:
        for i in range(S):
            s = tl.where(offs == tl.load(sup_ptr + i), float("-inf"), s)
    s = tl.math.div_rn(s, temp)  # IEEE division, as torch's z / T
    s = tl.where(in_row, s, float("-inf"))
    return z, zc, s


@triton.jit
def _log(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:
        return libdevice.log(x)
    else:
        return tl.log(x)


@triton.jit
def _lse_add(m, acc, x):
    """Per-lane online log-sum-exp: fold ``x`` into (running max ``m``, scaled sum ``acc``)."""
    m_new = tl.maximum(m, x)
    empty = m_new == float("-inf")
    acc = tl.where(empty, 0.0, acc * tl.exp(m - m_new) + tl.exp(x - m_new))
    return m_new, acc


@triton.jit
def _lse_finish(m, acc):
    top = tl.max(m, 0)
    total = tl.sum(tl.where(m == float("-inf"), 0.0, acc * tl.exp(m - top)), 0)
    return top + tl.log(total)


@triton.jit
def _thresholds(lo, hi, first, NT: tl.constexpr):
    """``NT`` ascending thresholds inside ``(lo, hi)``: geometric below ``hi`` on the first
    pass (distances (hi - lo) / 4, / 16, ...), evenly spaced afterwards."""
    j = tl.arange(0, NT).to(tl.float32)
    even = lo + (hi - lo) * ((j + 1.0) / (NT + 1.0))
    geo = hi - (hi - lo) * tl.exp2(-2.0 * (j + 1.0))
    return tl.where(first, geo, even)


@triton.jit
def _narrow(t, cnt, ok, lo, hi, cnt_lo, cnt_hi):
    """One pass of a threshold search: the bracket ``[lo, hi)`` closes on the highest
    threshold ``t`` that still holds (``ok``) and the lowest that does not, with their
    counts; also whether no float is left between them."""
    lo = tl.maximum(lo, tl.max(tl.where(ok, t, lo), 0))
    cnt_lo = tl.minimum(cnt_lo, tl.min(tl.where(ok, cnt, cnt_lo), 0))
    hi = tl.minimum(hi, tl.min(tl.where(ok, hi, t), 0))
    cnt_hi = tl.maximum(cnt_hi, tl.max(tl.where(ok, cnt_hi, cnt), 0))
    mid = lo + (hi - lo) * 0.5
    return lo, hi, cnt_lo, cnt_hi, (mid <= lo) | (mid >= hi)


@triton.jit
def _topk_mask(s, thr, need, carry):
    """Top-k membership of one chunk: ``s > thr``, or a tie at ``thr`` among the first
    ``need`` ties in id order (``carry`` = ties seen in earlier chunks)."""
    finite = s > float("-inf")
    tie = ((s == thr) & finite).to(tl.int32)
    rank = carry + tl.cumsum(tie, 0) - tie
    keep = finite & ((s > thr) | ((tie != 0) & (rank < need)))
    return keep, carry + tl.sum(tie, 0)


@triton.jit
def _kth_lower_bound(x, k, hi0, NTL: tl.constexpr, ROUNDS: tl.constexpr):
    """A value ``L`` with ``count(x >= L) >= k``, close to the k-th largest of ``x``
    ([N] in registers); -inf when fewer than k entries are finite."""
    finite = x > float("-inf")
    n = tl.sum(finite.to(tl.int32), 0)
    lo = tl.min(tl.where(finite, x, float("inf")), 0)
    hi = hi0
    for _ in tl.static_range(ROUNDS):
        j = tl.arange(0, NTL).to(tl.float32)
        t = lo + (hi - lo) * ((j + 1.0) / NTL)  # [NTL], the last one is hi
        cnt = tl.sum((x[:, None] >= t[None, :]).to(tl.int32), 0)  # [NTL]
        ok = cnt >= k
        lo = tl.maximum(lo, tl.max(tl.where(ok, t, lo), 0))
        hi = tl.min(tl.where(ok, hi, t), 0)
    return tl.where(n >= k, lo, float("-inf"))


@triton.jit
def _steer_and_pick(v, ids, keep, reward_row, steer, seed, step, dense_row, V, REWARD: tl.constexpr,
                    DO_SAMPLE: tl.constexpr, DENSE: tl.constexpr, LIBDEVICE: tl.constexpr):
    """Steering and the pick over candidates ``ids`` with scores ``v``, kept where ``keep``
    (both paths end here: the tile's compacted list, or one chunk of the row).

    Returns the steered scores (``v + steer * R`` where kept, -inf elsewhere; stored to the
    dense row when ``DENSE``), the best key (Gumbel-perturbed with ``u = philox(seed, step,
    id)``, or the score itself when greedy), the lowest id holding it (``V`` if none) and its
    steered score.
    """
    score = v
    if REWARD:
        r = tl.load(reward_row + ids, mask=keep, other=0.0)
        score = v + steer * r
    score = tl.where(keep, score, float("-inf"))
    if DO_SAMPLE:
        u = tl.rand(seed, ids.to(tl.int64) + (step.to(tl.int64) << 32))
        key = tl.where(keep, score - _log(-_log(u, LIBDEVICE), LIBDEVICE), float("-inf"))
    else:
        key = score
    best = tl.max(key, 0)
    tok = tl.min(tl.where(keep & (key == best), ids, V), 0)
    score_tok = tl.max(tl.where(ids == tok, score, float("-inf")), 0)
    if DENSE:
        tl.store(dense_row + ids, score, mask=keep)
    return score, best, tok, score_tok


# ----------------------------------------------------------------------------- tile path
@triton.jit
def _tile_pick(sv_row, si_row, c, k, m_s, top_p, log_min_p, reward_row, steer, seed, step,
               dense_row, V, CAP: tl.constexpr, JB: tl.constexpr, TOPP: tl.constexpr,
               MINP: tl.constexpr, REWARD: tl.constexpr, DO_SAMPLE: tl.constexpr,
               DENSE: tl.constexpr, LIBDEVICE: tl.constexpr):
    """Top-k / top-p / min-p, steering and the pick on the ``c <= CAP`` compacted candidates.

    Returns (token or V if none, its steered score, log-sum-exp of the kept scores).
    """
    j = tl.arange(0, CAP)
    live = j < c
    v = tl.load(sv_row + j, mask=live, other=float("-inf"))  # [CAP]
    ids = tl.load(si_row + j, mask=live, other=V)  # [CAP] int32
    rank = tl.zeros([CAP], dtype=tl.int32)
    greater = tl.zeros([CAP], dtype=tl.int32)
    mass_above = tl.zeros([CAP], dtype=tl.float32)
    for jb in range(0, CAP, JB):
        jj = jb + tl.arange(0, JB)
        live_j = jj < c
        vj = tl.load(sv_row + jj, mask=live_j, other=float("-inf"))  # [JB]
        idj = tl.load(si_row + jj, mask=live_j, other=V)
        gt = (vj[None, :] > v[:, None]) & live_j[None, :]  # [CAP, JB]: j's value is larger
        above = gt | ((vj[None, :] == v[:, None]) & (idj[None, :] < ids[:, None]) & live_j[None, :])
        rank += tl.sum(above.to(tl.int32), 1)  # above: j ranks before i (value desc, id asc)
        greater += tl.sum(gt.to(tl.int32), 1)
        if TOPP:
            ej = tl.where(live_j, tl.exp(vj - m_s), 0.0)
            mass_above += tl.sum(tl.where(above, ej[None, :], 0.0), 1)
    keep = live & (greater < k) & (rank < k + TIE_ROOM)  # >= the k-th value; ties up to the room
    if TOPP:  # everything ranked above a top-k member is a top-k member: mass_above is exact
        z_k = tl.sum(tl.where(keep, tl.exp(v - m_s), 0.0), 0)
        limit = tl.where(top_p >= 1.0, float("inf"), top_p * z_k)  # p >= 1: top-p is off
        keep = keep & (mass_above < limit)
    if MINP:
        keep = keep & (v >= m_s + log_min_p)
    score, _best, tok, score_tok = _steer_and_pick(v, ids, keep, reward_row, steer, seed, step, dense_row, V,
                                                   REWARD, DO_SAMPLE, DENSE, LIBDEVICE)  # [CAP], scalars
    top = tl.max(score, 0)
    lse = top + tl.log(tl.sum(tl.where(keep, tl.exp(score - top), 0.0), 0))
    return tok, score_tok, lse


# ----------------------------------------------------------------------------- general path
@triton.jit
def _topk_search(logits_row, seen_row, V, rp, inv_rp, temp, sup_ptr, S, k, m_s, s_min, n_fin,
                 SUB: tl.constexpr, NT: tl.constexpr, MAX_ITERS: tl.constexpr,
                 PENALTY: tl.constexpr, RP_RECIP: tl.constexpr, SUPPRESS: tl.constexpr):
    """The k-th largest ``s`` (``thr``) and how many ties at ``thr`` top-k takes (``need``:
    all of them, as HF, up to ``TIE_ROOM`` past the k-th).

    Invariant: ``count(s >= lo) >= k > count(s >= hi)``. Ends when ``count(s >= lo) == k``
    (then every ``s >= lo`` is in) or when no float lies between lo and hi (then lo is
    the k-th value and ``count(s > lo) = count(s >= hi)``). Without an exact count, lo is
    then moved up to the largest ``s`` below hi: ties at the k-th value put it there, and
    where that value is 0 the floats between lo and it (down to the denormals) are too
    many for the passes to close the bracket, which left every tie above ``thr``.
    """
    lo = s_min
    hi = m_s + tl.maximum(tl.abs(m_s) * 1e-6, 1e-30)
    cnt_lo = n_fin
    cnt_hi = n_fin * 0
    it = 0
    done = (cnt_lo == k).to(tl.int32)
    while (it < MAX_ITERS) & (done == 0):
        t = _thresholds(lo, hi, it == 0, NT)  # [NT]
        cnt = tl.zeros([NT], dtype=tl.int32)
        for start in range(0, V, SUB):
            offs = start + tl.arange(0, SUB)
            _z, _zc, s = _scores(logits_row, seen_row, offs, V, rp, inv_rp, temp, sup_ptr, S,
                                 PENALTY, RP_RECIP, SUPPRESS)
            cnt += tl.sum((s[:, None] >= t[None, :]).to(tl.int32), 0)  # [SUB, NT] -> [NT]
        lo, hi, cnt_lo, cnt_hi, closed = _narrow(t, cnt, cnt >= k, lo, hi, cnt_lo, cnt_hi)
        done = ((cnt_lo == k) | closed).to(tl.int32)
        it += 1
    need = tl.where(cnt_lo == k, k, k + TIE_ROOM - cnt_hi)  # ties at thr: HF's all, up to the room
    if cnt_lo != k:  # the k-th value is the largest s below hi: count(s > it) = count(s >= hi)
        top = tl.full([SUB], float("-inf"), tl.float32)
        for start in range(0, V, SUB):
            offs = start + tl.arange(0, SUB)
            _z, _zc, s = _scores(logits_row, seen_row, offs, V, rp, inv_rp, temp, sup_ptr, S,
                                 PENALTY, RP_RECIP, SUPPRESS)
            top = tl.maximum(top, tl.where(s < hi, s, float("-inf")))
        lo = tl.max(top, 0)
    return lo, need


@triton.jit
def _topp_search(logits_row, seen_row, V, rp, inv_rp, temp, sup_ptr, S, thr, need, top_p, m_s,
                 s_min, SUB: tl.constexpr, NT: tl.constexpr, MAX_ITERS: tl.constexpr,
                 PENALTY: tl.constexpr, RP_RECIP: tl.constexpr, SUPPRESS: tl.constexpr):
    """``(thr, need)``: top-p keeps the candidates ``s > thr`` and the first ``need`` in id
    order of those equal to ``thr`` (``_topk_mask``'s rule, over the candidates).

    ``M(t)`` = mass of candidates ``s > t``; a candidate ``v`` is kept iff
    ``M(v) < p * Z``. Invariant: ``M(lo) >= p Z > M(hi)``, so the lowest kept value lies
    in ``(lo, hi]``; stop when that interval holds one candidate or one float. In the
    second case every candidate in it equals ``hi``: a tie the cut may go through. Ranked
    by id, the j-th has ``M(hi) + j e^(hi - max)`` above it, so the first ``need`` =
    ``ceil((p Z - M(hi)) / e^(hi - max))`` stay, as in the reference's order. (A search
    that ran out of passes keeps its whole bracket: ``thr = lo``, ``need = 0``.)
    """
    base = tl.where(thr > float("-inf"), thr, s_min)  # every candidate is >= base
    lo = base - tl.maximum(tl.abs(base) * 1e-6, 1e-30)
    hi = m_s
    cnt_lo = tl.zeros([], dtype=tl.int32)
    cnt_hi = tl.zeros([], dtype=tl.int32)
    mass_hi = tl.zeros([], dtype=tl.float32)  # M(hi): nothing lies above the max
    target = tl.zeros([], dtype=tl.float32)
    it = 0
    done = 0
    closed = tl.zeros([], dtype=tl.int1)
    while (it < MAX_ITERS) & (done == 0):
        t = _thresholds(lo, hi, it == 0, NT)  # [NT]
        mass = tl.zeros([NT], dtype=tl.float32)
        cnt = tl.zeros([NT], dtype=tl.int32)
        z_all = tl.zeros([SUB], dtype=tl.float32)
        n_all = tl.zeros([SUB], dtype=tl.int32)
        carry = tl.zeros([], dtype=tl.int32)
        for start in range(0, V, SUB):
            offs = start + tl.arange(0, SUB)
            _z, _zc, s = _scores(logits_row, seen_row, offs, V, rp, inv_rp, temp, sup_ptr, S,
                                 PENALTY, RP_RECIP, SUPPRESS)
            cand, carry = _topk_mask(s, thr, need, carry)
            e = tl.where(cand, tl.exp(s - m_s), 0.0)  # [SUB]
            gt = (s[:, None] > t[None, :]) & cand[:, None]  # [SUB, NT]
            mass += tl.sum(tl.where(gt, e[:, None], 0.0), 0)
            cnt += tl.sum(gt.to(tl.int32), 0)
            z_all += e
            n_all += cand.to(tl.int32)
        target = top_p * tl.sum(z_all, 0)
        cnt_lo = tl.where(it == 0, tl.sum(n_all, 0), cnt_lo)
        ok = mass >= target
        mass_hi = tl.maximum(mass_hi, tl.max(tl.where(ok, 0.0, mass), 0))  # M at the new hi
        lo, hi, cnt_lo, cnt_hi, closed = _narrow(t, cnt, ok, lo, hi, cnt_lo, cnt_hi)
        done = ((cnt_lo - cnt_hi <= 1) | closed).to(tl.int32)
        it += 1
    step_hi = tl.exp(hi - m_s)  # the mass of one candidate at hi
    need_hi = tl.ceil(tl.minimum((target - mass_hi) / step_hi, 1e9)).to(tl.int32)  # >= 1: M(hi) < p Z
    return tl.where(closed, hi, lo), tl.where(closed, need_hi, 0)


@triton.jit
def _general_pick(logits_row, seen_row, V, rp, inv_rp, temp, sup_ptr, S, k, m_s, s_min, n_fin,
                  top_p, log_min_p, reward_row, steer, seed, step, dense_row,
                  BLOCK: tl.constexpr, SUB: tl.constexpr, NT: tl.constexpr,
                  MAX_ITERS: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, MINP: tl.constexpr,
                  PENALTY: tl.constexpr, RP_RECIP: tl.constexpr, SUPPRESS: tl.constexpr,
                  REWARD: tl.constexpr, DO_SAMPLE: tl.constexpr, DENSE: tl.constexpr,
                  LIBDEVICE: tl.constexpr):
    """Threshold searches over the row, then one pass that steers and picks.

    Returns (token or V if none, its steered score, log-sum-exp of the kept scores).
    """
    thr = tl.full([], float("-inf"), tl.float32)
    need = tl.zeros([], dtype=tl.int32)
    if TOPK:
        if n_fin > k:  # otherwise every finite value is in the top k
            thr, need = _topk_search(logits_row, seen_row, V, rp, inv_rp, temp, sup_ptr, S, k,
                                     m_s, s_min, n_fin, SUB, NT, MAX_ITERS,
                                     PENALTY, RP_RECIP, SUPPRESS)
    thr_p = tl.full([], float("-inf"), tl.float32)
    need_p = tl.zeros([], dtype=tl.int32)
    if TOPP:
        if (top_p < 1.0) & (n_fin > 0):
            thr_p, need_p = _topp_search(logits_row, seen_row, V, rp, inv_rp, temp, sup_ptr, S, thr, need,
                                         top_p, m_s, s_min, SUB, NT, MAX_ITERS,
                                         PENALTY, RP_RECIP, SUPPRESS)

    lane_m = tl.full([BLOCK], float("-inf"), tl.float32)
    lane_acc = tl.zeros([BLOCK], dtype=tl.float32)
    best = tl.full([], float("-inf"), tl.float32)
    best_id = tl.full([], 0, tl.int32) + V
    best_score = tl.full([], float("-inf"), tl.float32)
    carry = tl.zeros([], dtype=tl.int32)
    carry_p = tl.zeros([], dtype=tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        _z, _zc, s = _scores(logits_row, seen_row, offs, V, rp, inv_rp, temp, sup_ptr, S,
                             PENALTY, RP_RECIP, SUPPRESS)
        cand, carry = _topk_mask(s, thr, need, carry)
        if TOPP:
            cand_p, carry_p = _topk_mask(tl.where(cand, s, float("-inf")), thr_p, need_p, carry_p)
            cand = cand & cand_p
        if MINP:
            cand = cand & (s >= m_s + log_min_p)
        score, c_best, c_id, c_score = _steer_and_pick(s, offs, cand, reward_row, steer, seed, step, dense_row,
                                                       V, REWARD, DO_SAMPLE, DENSE, LIBDEVICE)  # [BLOCK], scalars
        lane_m, lane_acc = _lse_add(lane_m, lane_acc, score)
        take = c_best > best  # strict: an earlier chunk (lower ids) wins a tie
        best = tl.where(take, c_best, best)
        best_id = tl.where(take, c_id, best_id)
        best_score = tl.where(take, c_score, best_score)
    return best_id, best_score, _lse_finish(lane_m, lane_acc)
