// The candidate set of the CPU decode step (sample_step_cpu.cpp), without sorting the
// vocabulary: the per-thread workspace, top-k by a heap scan (then the rest of its tie),
// top-p by a bisection on the probability mass, and the Gumbel-max pick that evaluates
// exact draws only for the candidates that can still win. Included by that one
// translation unit.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "sample_step_cpu_math.h"

namespace proxdecode {
namespace {

struct Entry {
  float v;
  int32_t id;
};

// The candidate order: larger value first, lower id first among ties (a stable descending
// sort). A strict weak order on finite and -inf values (s never holds NaN for a valid row:
// logits are finite or -inf there, T > 0 and the penalty > 0).
inline bool ranks_before(const Entry& a, const Entry& b) {
  return a.v > b.v || (a.v == b.v && a.id < b.id);
}

// Per-thread scratch, kept across calls (OpenMP threads persist), so the hot loop never
// allocates. Each buffer is [V].
struct Workspace {
  std::vector<float> z;       // the row as float32 (bf16/fp16 logits)
  std::vector<float> s;       // penalised, temperature-scaled logits
  std::vector<float> e;       // exp(s - max) (top-p), then the scores
  std::vector<float> keep;    // 1 kept, 0 dropped (list path)
  std::vector<float> u, g;    // draws, approximate perturbed scores
  std::vector<float> cv, ce;  // candidates: value, exp (top-p bisection); probs; scores
  std::vector<int32_t> ci;    //             id
  std::vector<int32_t> ids;   // list / candidate token ids
  std::vector<Entry> list;
  void reserve(int64_t V) {
    if (static_cast<int64_t>(s.size()) >= V) return;
    for (auto* b : {&z, &s, &e, &keep, &u, &g, &cv, &ce}) b->resize(V);
    ids.resize(V);
    ci.resize(V);
    list.reserve(V);
  }
};

// Gumbel-max over candidates j < n in list order (scores sc[j], token ids[j]): the position
// torch.argmax(sc - log(-log(u))) returns, or -1 when every perturbed score is -inf (the
// caller's position 0). With no NaN score (has_nan false), a vectorised pass computes every
// perturbed score with the polynomial logs; only candidates within a safe margin of that
// approximate maximum (errors are ~1e-6, the margin 1e-3) are recomputed exactly with
// glibc's logf, in order, so the result is the exact argmax with the reference's rules.
// Scratch: u (the draws) and g, each [n].
int64_t gumbel_argmax(const float* sc, const int32_t* ids, int64_t n, bool has_nan, uint32_t k0,
                      uint32_t k1, uint32_t step, float* u, float* g) {
  philox_draws(k0, k1, step, ids, n, u);
  int64_t pos = -1;
  float best = kNegInf;  // the reference's position 0 holds -inf unless beaten
  if (has_nan) {         // NaN wins in torch.argmax: take the plain exact loop
    for (int64_t j = 0; j < n; ++j) {
      if (sc[j] == kNegInf) continue;
      const float x = perturb(sc[j], u[j]);
      if (beats(x, best)) {
        best = x;
        pos = j;
      }
    }
    return pos;
  }
  float amax = kNegInf;
#pragma omp simd reduction(max : amax)
  for (int64_t j = 0; j < n; ++j) {
    const float uj = u[j], sj = sc[j];
    const float nl = -log_approx(uj);
    const float x = sj - log_approx(nl);
    const float y = uj > 0.0f ? x : kNegInf;  // log(-log(0)) = +inf: the reference's -inf
    g[j] = y;
    amax = y > amax ? y : amax;
  }
  if (!(amax > kNegInf)) return -1;
  const float floor = amax - (1e-3f + 1e-5f * std::fabs(amax));
  for (int64_t j = 0; j < n; ++j) {
    if (!(g[j] >= floor)) continue;
    const float x = perturb(sc[j], u[j]);
    if (beats(x, best)) {
      best = x;
      pos = j;
    }
  }
  return pos;
}

// Top-k by (value desc, id asc) without sorting the row: a k-entry heap whose top is the
// worst kept entry. Ids arrive in increasing order, so a later entry beats the worst only
// with a strictly larger value; a 32-wide block whose max does not beat it is skipped with
// one vectorised max. On random or real logits the heap changes O(k log(V/k)) times, so
// the scan costs little more than reading the row. Output: out[0..k) sorted, best first.
void select_top_k(const float* s, int64_t V, int64_t k, std::vector<Entry>& out) {
  out.clear();
  if (k * 16 >= V) {  // a large k: selection over all pairs beats a heap of that size
    for (int64_t i = 0; i < V; ++i) out.push_back({s[i], static_cast<int32_t>(i)});
    std::nth_element(out.begin(), out.begin() + (k - 1), out.end(), ranks_before);
    out.resize(k);
    std::sort(out.begin(), out.end(), ranks_before);
    return;
  }
  for (int64_t i = 0; i < k; ++i) out.push_back({s[i], static_cast<int32_t>(i)});
  Entry* h = out.data();
  std::make_heap(h, h + k, ranks_before);  // h[0]: the entry that ranks last
  float floor = h[0].v;
  constexpr int64_t kBlock = 32;
  for (int64_t i0 = k; i0 < V; i0 += kBlock) {
    const int64_t i1 = std::min(V, i0 + kBlock);
    float bmax = kNegInf;
#pragma omp simd reduction(max : bmax)
    for (int64_t i = i0; i < i1; ++i) bmax = s[i] > bmax ? s[i] : bmax;
    if (!(bmax > floor)) continue;
    for (int64_t i = i0; i < i1; ++i) {
      if (s[i] > floor) {
        std::pop_heap(h, h + k, ranks_before);
        h[k - 1] = {s[i], static_cast<int32_t>(i)};
        std::push_heap(h, h + k, ranks_before);
        floor = h[0].v;
      }
    }
  }
  std::sort_heap(h, h + k, ranks_before);  // ascending under ranks_before: best first
}

// Top-k keeps every value tied with the k-th, as HF's TopKLogitsWarper does, up to
// kTieRoom past the k-th (proxdecode.step.TIE_ROOM: the reference's list holds k + room).
// select_top_k keeps the lowest ids of a tie, so the rest of the tie at the list's last
// value lies after the list's last id; appended in id order, the list stays sorted.
constexpr int64_t kTieRoom = 64;

void add_top_k_ties(const float* s, int64_t V, std::vector<Entry>& out) {
  if (out.empty() || !(out.back().v > kNegInf)) return;  // -inf ties are never candidates
  const float t = out.back().v;
  int64_t room = kTieRoom;
  constexpr int64_t kBlock = 32;
  for (int64_t i0 = out.back().id + 1; i0 < V && room > 0; i0 += kBlock) {
    const int64_t i1 = std::min(V, i0 + kBlock);
    float bmax = kNegInf;
#pragma omp simd reduction(max : bmax)
    for (int64_t i = i0; i < i1; ++i) bmax = s[i] > bmax ? s[i] : bmax;
    if (!(bmax >= t)) continue;
    for (int64_t i = i0; i < i1 && room > 0; ++i) {
      if (s[i] == t) {
        out.push_back({s[i], static_cast<int32_t>(i)});  // s[i], not t: -0 ties +0
        --room;
      }
    }
  }
}

// Top-p without top-k, without sorting V values.
//
// The reference sorts the row, takes softmax, and keeps position j while
// cumsum_j - p_j < top_p. Positions past the first prefix whose mass reaches top_p are all
// dropped, so only that prefix matters, and a cumulative sum over a prefix of the sorted
// order equals the reference's cumsum there. We find a value threshold `lo` whose top set
// {s >= lo} holds mass >= top_p + margin by bisection on the value (each step one masked,
// vectorised sum of exp over the current candidates; candidates are compacted once they
// are few), then sort only that set. The margin (1e-4, far above the ~1e-7 by which our
// sums and torch's may differ) makes sure every position outside the set has
// cumsum - p >= top_p in the reference too. When top_p + margin >= 1 the set is every
// finite logit (a full sort: rare, and the reference's own cost).
//
// Also returns z_all = sum over the row of exp(s - smax): the softmax denominator.
constexpr double kTopPMargin = 1e-4;

void select_top_p(const float* s, int64_t V, float smax, float top_p, Workspace& w,
                  std::vector<Entry>& out, double& z_all) {
  out.clear();
  float* e = w.e.data();
  double z = 0.0;
  float smin = std::numeric_limits<float>::infinity();
  int64_t finite = 0;
#pragma omp simd reduction(+ : z, finite) reduction(min : smin)
  for (int64_t i = 0; i < V; ++i) {
    const float x = s[i];
    const float ei = exp_sum_term(x - smax);
    e[i] = ei;
    z += ei;
    const bool f = x > kNegInf;
    finite += f;
    const float xf = f ? x : std::numeric_limits<float>::infinity();
    smin = xf < smin ? xf : smin;
  }
  z_all = z;
  const double target = (static_cast<double>(top_p) + kTopPMargin) * z;
  if (!(target < z)) {
    for (int64_t i = 0; i < V; ++i)
      if (s[i] > kNegInf) out.push_back({s[i], static_cast<int32_t>(i)});
    std::sort(out.begin(), out.end(), ranks_before);
    return;
  }
  // Invariant: mass(s >= lo) >= target > mass(s >= hi); {s >= lo} is the candidate set.
  float lo = smin, hi = smax;
  auto mass_at_least = [&](float t, int64_t& count) {
    double m = 0.0;
    int64_t c = 0;
#pragma omp simd reduction(+ : m, c)
    for (int64_t i = 0; i < V; ++i) {
      const bool in = s[i] >= t;
      const float ei = e[i];
      m += in ? ei : 0.0f;
      c += in;
    }
    count = c;
    return m;
  };
  int64_t count = 0;
  if (mass_at_least(hi, count) >= target) {  // the max alone (or its ties) is enough
    lo = hi;
  } else {
    count = finite;
    // Phase 1: bisection over the whole row while the candidate set is large.
    constexpr int64_t kCompactBelow = 4096;
    for (int it = 0; it < 48 && count > kCompactBelow; ++it) {
      const float mid = lo + (hi - lo) * 0.5f;
      if (!(mid > lo && mid < hi)) break;
      int64_t c = 0;
      if (mass_at_least(mid, c) >= target) {
        lo = mid;
        count = c;
      } else {
        hi = mid;
      }
    }
  }
  // Phase 2: compact {s >= lo} and keep bisecting on the few candidates.
  float* cv = w.cv.data();
  float* ce = w.ce.data();
  int32_t* ci = w.ci.data();
  int64_t n = 0;
  for (int64_t i = 0; i < V; ++i) {  // branch-free compaction
    cv[n] = s[i];
    ce[n] = e[i];
    ci[n] = static_cast<int32_t>(i);
    n += s[i] >= lo;
  }
  constexpr int64_t kSortBelow = 64;
  for (int it = 0; it < 48 && n > kSortBelow && lo < hi; ++it) {
    const float mid = lo + (hi - lo) * 0.5f;
    if (!(mid > lo && mid < hi)) break;
    double m = 0.0;
#pragma omp simd reduction(+ : m)
    for (int64_t j = 0; j < n; ++j) {
      const float ej = ce[j];
      m += cv[j] >= mid ? ej : 0.0f;
    }
    if (m >= target) {
      lo = mid;
      int64_t k = 0;
      for (int64_t j = 0; j < n; ++j) {
        if (cv[j] >= mid) {
          cv[k] = cv[j];
          ce[k] = ce[j];
          ci[k] = ci[j];
          ++k;
        }
      }
      n = k;
    } else {
      hi = mid;
    }
  }
  for (int64_t j = 0; j < n; ++j) out.push_back({cv[j], ci[j]});
  std::sort(out.begin(), out.end(), ranks_before);
}

}  // namespace
}  // namespace proxdecode
