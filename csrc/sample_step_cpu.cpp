// The fused decode step on CPU: logits in, one token per row out.
//
// Why this file exists: on CPU, HF's sort-based top-k/top-p is 21% of a decode step of
// the default model at batch 8 and 36% at batch 32 (DESIGN.md, "The decode step"), and
// the torch reference (proxdecode/step.py, the SPEC) still launches ~40 small ops and
// evaluates Philox in int64 tensor arithmetic. Here a row costs two passes of plain C++
// over its logits (validity + scaling, then the log-sum-exp the policy log-prob needs) and
// one over the scaled copy (top-k's heap scan), rows run in parallel (at::parallel_for),
// the vocabulary is never sorted, and exact Gumbel noise is computed only for the tokens
// that can still win.
//
// It reproduces proxdecode.step.sample_step:
//   * validity: a row whose max is NaN/+inf, or that has no finite logit, is invalid and
//     computed on zeros, as the reference does;
//   * the same arithmetic, in float32 and in the same order, wherever a floating-point
//     comparison decides membership: repetition penalty (x*rp / x/rp), z/T, top-p's
//     "mass ranked strictly above < p" with the cumulative sum accumulated in double and
//     rounded to float at each step (what torch.cumsum does on CPU), min-p's
//     "v >= vmax + log(min_p)", steering "s + steer*reward";
//   * the same draws: Philox4x32-10 keyed on (seed lo, seed hi), counter (token, step, 0, 0),
//     so the same seeds give the same tokens; Gumbel-max over -log(-log(u));
//   * the same greedy tie rule (lowest token id) and torch.argmax's rules (first
//     position wins, NaN is the largest) for the sampled pick.
//
// One deliberate rule where the reference leaves a choice: among tied values, the lower
// token id ranks first (a stable descending order). torch.topk and the non-stable
// torch.sort on CPU order ties arbitrarily, so on a tie at the k-th slot, or at the
// top-p cut inside a tie group, the reference may keep a different (equally valid) id.
// The tests compare against the reference with stable sorts patched in, and against the
// plain reference on tie-free rows.
//
// Top-p's probabilities decide membership, so they follow torch.softmax on CPU bit for bit
// where that is possible: SLEEF's expf (ported below, with the same FMAs), the float32
// sum in the lane order of ATen's vec::reduce_all (8 lanes under AVX2, 16 under AVX512),
// and a multiply by the float32 reciprocal of that sum. That holds for top-p after top-k,
// whose softmax runs over the k sorted values we have. Top-p alone is the exception: the
// reference's softmax runs over the whole sorted row, and its float32 lane sums drop the
// many tiny terms (at V = 49,152 the denominator comes out ~2e-5 too small), so matching
// it would need the full sort this file exists to avoid. There the denominator is summed
// in double (exact to ~1e-16), and the cut can differ from the reference's in a row whose
// cumulative mass lands within that ~2e-5 of top_p.
//
// Elsewhere exp/log need not match torch's bits: glibc's expf/logf where one value decides
// something (the Gumbel noise), a Cephes polynomial (~1 ulp, branch-free so that GCC
// vectorises it) for sums over the vocabulary, accumulated in double. Log-probs agree to
// fp32 rounding, and a sampled token differs only if two perturbed scores are within an
// ulp of each other.
//
// Shapes: B rows, V vocabulary; see `sample_step` at the end for the argument list.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

// Polynomial steps of the vectorised exp/log below: one FMA where the CPU has it (faster;
// these values only feed sums and a filter, never a bit-exact comparison), else mul + add.
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define PD_MADD(a, b, c) std::fma((a), (b), (c))
#else
#define PD_MADD(a, b, c) ((a) * (b) + (c))
#endif

namespace proxdecode {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---------------------------------------------------------------------------------------
// Philox4x32-10, exactly as proxdecode/philox.py (and Triton's tl.rand).

constexpr uint32_t kMulA = 0xD2511F53u;
constexpr uint32_t kMulB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
// The Python constant 4.6566127342e-10 rounded to float32, as torch does for a scalar.
const float kUniformScale = static_cast<float>(4.6566127342e-10);

// Uniform in [0, 1) for (key = (k0, k1), counter = (token, step, 0, 0)); first output word,
// sign folded as Triton's uint_to_uniform_float: int32 x < 0 -> -x - 1 (== ~x).
inline float philox_uniform(uint32_t k0, uint32_t k1, uint32_t step, uint32_t token) {
  uint32_t c0 = token, c1 = step, c2 = 0, c3 = 0;
  for (int r = 0; r < 10; ++r) {
    const uint64_t pb = static_cast<uint64_t>(c2) * kMulB;
    const uint64_t pa = static_cast<uint64_t>(c0) * kMulA;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  int32_t x = static_cast<int32_t>(c0);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * kUniformScale;
}

// u[j] for tokens ids[j], j < n: a loop GCC vectorises (vpmuludq for the 32x32->64 products).
void philox_draws(uint32_t k0, uint32_t k1, uint32_t step, const int32_t* ids, int64_t n,
                  float* u) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) u[j] = philox_uniform(k0, k1, step, static_cast<uint32_t>(ids[j]));
}

// The Gumbel-perturbed score, in the reference's order: s - log(-log(u)).
inline float perturb(float score, float u) { return score - std::log(-std::log(u)); }

// An upper bound on -log(-log(u)) for u <= 0.99999994 (the largest draw): 16.64, plus room
// for rounding. A candidate with score + kGumbelMax below the best perturbed score so far
// cannot win, so its draw is never evaluated.
constexpr double kGumbelMax = 16.75;

// torch.argmax's rule for a running maximum: a larger value, or the first NaN, wins; an
// equal value at a later position does not.
inline bool beats(float x, float best) { return x > best || (std::isnan(x) && !std::isnan(best)); }

// log(x) for x in {0} U [FLT_MIN, inf]: Cephes logf (~1 ulp), branch-free so loops vectorise;
// only a filter in front of the exact glibc logf (see gumbel_argmax).
inline float log_approx(float x) {
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  const int32_t e0 = ((bits >> 23) & 0xff) - 126;
  const float m0 = __builtin_bit_cast(float, (bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  const bool small = m0 < 0.707106781186547524f;
  const float fe = static_cast<float>(small ? e0 - 1 : e0);
  const float twice = m0 + m0, m = small ? twice - 1.0f : m0 - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = PD_MADD(y, m, -1.1514610310e-1f);
  y = PD_MADD(y, m, 1.1676998740e-1f);
  y = PD_MADD(y, m, -1.2420140846e-1f);
  y = PD_MADD(y, m, 1.4249322787e-1f);
  y = PD_MADD(y, m, -1.6668057665e-1f);
  y = PD_MADD(y, m, 2.0000714765e-1f);
  y = PD_MADD(y, m, -2.4999993993e-1f);
  y = PD_MADD(y, m, 3.3333331174e-1f);
  y = y * m * z;
  y = y + -2.12194440e-4f * fe;
  y = y + -0.5f * z;
  float r = m + y;
  r = r + 0.693359375f * fe;
  r = x == 0.0f ? kNegInf : r;
  return x == std::numeric_limits<float>::infinity() ? x : r;
}

// ---------------------------------------------------------------------------------------
// exp(x) for sums over the vocabulary: Cephes expf (~1 ulp), branch-free so loops vectorise
// (every select below has both arms computed: GCC if-converts nothing that might trap).
// x is never NaN nor above 0 here (always v - max); every sum it feeds holds exp(0) = 1.

inline float exp_sum_term(float x) {
  constexpr float kLo = -87.33654475f;
  const float lo = x < kLo ? kLo : x;  // selects, not fmin/fmax: those are NaN-aware libm calls
  const float xc = lo > 88.3762626647949f ? 88.3762626647949f : lo;
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = PD_MADD(y, r, 1.3981999507e-3f);
  y = PD_MADD(y, r, 8.3334519073e-3f);
  y = PD_MADD(y, r, 4.1665795894e-2f);
  y = PD_MADD(y, r, 1.6666665459e-1f);
  y = PD_MADD(y, r, 5.0000001201e-1f);
  y = PD_MADD(y, r * r, r) + 1.0f;
  const float scale = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
  return y * scale;  // exp(max(x, kLo)): below it (and for -inf) 1.2e-38, nothing in a sum >= 1
}

// ---------------------------------------------------------------------------------------
// torch.softmax's arithmetic on CPU (ATen's _vec_softmax_lastdim), for the top-p decision.

// SLEEF's xexpf as Sleef_expf8_u10 / Sleef_expf16_u10 compute it (AVX2/AVX512, with FMA):
// q = rint(d/ln2), s = d - q*ln2 in two FMA steps, a degree-5 minimax polynomial, and the
// scale by 2^q in two halves. 0 below -104, +inf above 100.
inline float sleef_expf(float d) {
  if (d != d) return d;
  if (d < -104.0f) return 0.0f;
  if (d > 100.0f) return std::numeric_limits<float>::infinity();
  const int32_t q = static_cast<int32_t>(std::nearbyint(d * 1.442695040888963407359924681001892137426645954152985934135449f));
  const float qf = static_cast<float>(q);
  float s = std::fma(qf, -0.693145751953125f, d);
  s = std::fma(qf, -1.428606765330187045e-06f, s);
  float u = std::fma(0.000198527617612853646278381f, s, 0.00139304355252534151077271f);
  u = std::fma(u, s, 0.00833336077630519866943359f);
  u = std::fma(u, s, 0.0416664853692054748535156f);
  u = std::fma(u, s, 0.166666671633720397949219f);
  u = std::fma(u, s, 0.5f);
  u = 1.0f + std::fma(s * s, u, s);
  auto pow2i = [](int32_t e) {
    const int32_t bits = (e + 127) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  };
  const int32_t h = q >> 1;
  u = u * pow2i(h);
  return u * pow2i(q - h);
}

// vec::reduce_all<float>(+) over x[0..n) with `lanes`-wide vectors: lane accumulators over
// full chunks, a partial tail added to lanes [0, r) only, then the lanes folded pairwise
// (lane i with i + lanes/2, then i + lanes/4, ...). Below one vector: left to right.
float torch_reduce_sum(const float* x, int64_t n, int lanes) {
  if (n <= 0) return 0.0f;
  if (n < lanes) {
    float acc = x[0];
    for (int64_t i = 1; i < n; ++i) acc = acc + x[i];
    return acc;
  }
  float acc[16];
  for (int l = 0; l < lanes; ++l) acc[l] = x[l];
  int64_t d = lanes;
  for (; d < n - n % lanes; d += lanes)
    for (int l = 0; l < lanes; ++l) acc[l] = acc[l] + x[d + l];
  for (int64_t l = 0; l < n - d; ++l) acc[l] = acc[l] + x[d + l];
  for (int h = lanes / 2; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) acc[l] = acc[l] + acc[l + h];
  return acc[0];
}

// ---------------------------------------------------------------------------------------
// Candidates.

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

// ---------------------------------------------------------------------------------------
// One row.

struct Args {
  int64_t V = 0;
  bool do_sample = true;
  int64_t top_k = 0;       // 0 < top_k < V enables
  bool use_top_p = false;  // the reference's `use_top_p`: a tensor, or a float < 1
  bool use_min_p = false;
  bool use_penalty = false;
  float penalty = 1.0f;    // float32, as torch applies a Python scalar to a float tensor
  bool use_reward = false;
  float steer = 0.0f;
  uint32_t step = 0;
  int lanes = 8;           // floats per vector in torch's CPU kernels: 8 (AVX2), 16 (AVX512)
  const int64_t* seeds = nullptr;        // [B]
  const float* temperature = nullptr;    // [B]
  const float* top_p = nullptr;          // [B]
  const float* min_p = nullptr;          // [B]
  const bool* seen = nullptr;            // [B, V] or null
  const int64_t* suppress = nullptr;     // [S], already wrapped into [0, V)
  int64_t n_suppress = 0;
  const float* reward = nullptr;         // [B, V] or null
  int64_t* tokens = nullptr;             // [B]
  float* logprobs = nullptr;             // [B]
  float* policy_logprobs = nullptr;      // [B]
  bool* valid = nullptr;                 // [B]
  float* scores = nullptr;               // [B, V] or null
};

void step_row(const float* z, int64_t b, const Args& a, Workspace& w) {
  const int64_t V = a.V;

  // 1. One pass over the logits: validity (the row max: NaN and +inf make it non-finite, so
  //    does an all -inf row) and s = penalised z / T with its max, computed as if the row
  //    were valid; an invalid row is redone on zeros below, as the reference computes it.
  float* s = w.s.data();  // [V]
  const float T = a.temperature[b];
  const float rp = a.penalty;
  // bool loads defeat GCC's vectoriser; the same bytes as uint8 do not
  const uint8_t* seen = a.use_penalty ? reinterpret_cast<const uint8_t*>(a.seen) + b * V : nullptr;
  float m = kNegInf, smax = kNegInf;
  int bad = 0;
  if (seen) {
#pragma omp simd reduction(max : m, smax) reduction(| : bad)
    for (int64_t i = 0; i < V; ++i) {
      const float x = z[i];
      bad |= x != x;
      m = x > m ? x : m;
      const float up = x * rp, down = x / rp;
      const float p = x < 0.0f ? up : down;
      const float si = (seen[i] ? p : x) / T;
      s[i] = si;
      smax = si > smax ? si : smax;
    }
  } else {
#pragma omp simd reduction(max : m, smax) reduction(| : bad)
    for (int64_t i = 0; i < V; ++i) {
      const float x = z[i];
      bad |= x != x;
      m = x > m ? x : m;
      const float si = x / T;
      s[i] = si;
      smax = si > smax ? si : smax;
    }
  }
  const bool valid0 = !bad && std::isfinite(m);
  if (!valid0) {  // zeros: the penalty leaves 0 as it is (0 * rp and 0 / rp are 0)
    smax = 0.0f / T;
    std::fill(s, s + V, smax);
  }
  bool hit_max = false;  // suppressed ids -inf; the max again if one of them held it
  for (int64_t j = 0; j < a.n_suppress; ++j) {
    hit_max |= s[a.suppress[j]] >= smax;
    s[a.suppress[j]] = kNegInf;
  }
  if (hit_max) {
    smax = kNegInf;
#pragma omp simd reduction(max : smax)
    for (int64_t i = 0; i < V; ++i) smax = s[i] > smax ? s[i] : smax;
  }

  // 2. log-sum-exp of the raw logits (zeros on an invalid row), for policy_logprobs.
  float policy_lse;
  if (valid0) {
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < V; ++i) acc += exp_sum_term(z[i] - m);
    policy_lse = static_cast<float>(std::log(acc) + static_cast<double>(m));
  } else {
    policy_lse = static_cast<float>(std::log(static_cast<double>(V)));
  }

  const uint64_t seed = static_cast<uint64_t>(a.seeds[b]);
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const float* reward = a.use_reward ? a.reward + b * V : nullptr;
  float* dense = a.scores ? a.scores + b * V : nullptr;
  const bool use_top_k = a.top_k > 0 && a.top_k < V;

  int64_t token = 0;
  float logprob = kNaN;

  if (use_top_k || a.use_top_p) {
    // 3a. A sorted candidate list: the top k, or the top-p prefix.  [n]
    std::vector<Entry>& list = w.list;
    double z_all = 0.0;
    if (use_top_k) {
      select_top_k(s, V, a.top_k, list);
    } else if (smax > kNegInf) {
      select_top_p(s, V, smax, a.top_p[b], w, list, z_all);
    } else {
      list.clear();  // nothing finite: every score is -inf, as in the reference
    }
    const int64_t n = static_cast<int64_t>(list.size());
    float* sc = w.e.data();  // the scores, [n]; e is free again after select_top_p
    int32_t* ids = w.ids.data();
    for (int64_t j = 0; j < n; ++j) {
      sc[j] = list[j].v;
      ids[j] = list[j].id;
    }
    const float vmax = n ? sc[0] : kNegInf;  // the list's max is its first entry
    float* keep = w.keep.data();
    for (int64_t j = 0; j < n; ++j) keep[j] = sc[j] > kNegInf ? 1.0f : 0.0f;

    if (a.use_top_p && vmax > kNegInf) {
      // probs = softmax(list) as torch computes it: after top-k, over the k values with
      // torch's summation order; top-p alone, over the whole row, whose sum is z_all.
      float* prob = w.cv.data();  // [n]
      for (int64_t j = 0; j < n; ++j) prob[j] = sleef_expf(sc[j] - vmax);  // -inf -> 0
      const float total = use_top_k ? torch_reduce_sum(prob, n, a.lanes) : static_cast<float>(z_all);
      const float inv = 1.0f / total;
      const float p = a.top_p[b];
      double cum = 0.0;  // torch.cumsum on CPU: a double accumulator, float outputs
      for (int64_t j = 0; j < n; ++j) {
        const float pj = prob[j] * inv;
        cum += pj;
        const float above = static_cast<float>(cum) - pj;
        if (!(above < p)) keep[j] = 0.0f;
      }
    }
    if (a.use_min_p) {
      const float thr = vmax + std::log(a.min_p[b]);
      for (int64_t j = 0; j < n; ++j)
        if (!(sc[j] >= thr)) keep[j] = 0.0f;
    }
    // 4a. Steer inside the set; log-softmax statistics.
    float smax2 = kNegInf;
    bool any_nan = false;
    for (int64_t j = 0; j < n; ++j) {
      float v = sc[j];
      if (reward) v = v + a.steer * reward[ids[j]];
      sc[j] = keep[j] != 0.0f ? v : kNegInf;
      any_nan |= std::isnan(sc[j]);
      smax2 = sc[j] > smax2 ? sc[j] : smax2;
    }
    if (any_nan) smax2 = kNaN;
    double sum = 0.0;
    if (std::isfinite(smax2))
      for (int64_t j = 0; j < n; ++j)
        if (sc[j] > kNegInf) sum += std::exp(sc[j] - smax2);
    const float lse2 = static_cast<float>(static_cast<double>(smax2) + std::log(sum));

    // 5a. Pick a list position.
    int64_t pos = 0;
    if (a.do_sample) {
      pos = std::max<int64_t>(0, gumbel_argmax(sc, ids, n, any_nan, k0, k1, a.step, w.u.data(), w.g.data()));
    } else if (std::isnan(smax2)) {
      pos = 0;  // scores == NaN matches nothing: the reference's argmin returns position 0
    } else {
      // lowest id among the list entries equal to the best (all of them when it is -inf)
      int32_t best_id = std::numeric_limits<int32_t>::max();
      for (int64_t j = 0; j < n; ++j) {
        if (sc[j] == smax2 && ids[j] < best_id) {
          best_id = ids[j];
          pos = j;
        }
      }
      if (smax2 == kNegInf && !use_top_k) pos = -1;  // the reference's list is all V: id 0
    }
    if (pos < 0 || n == 0) {
      token = 0;
      logprob = kNaN;
    } else {
      token = ids[pos];
      logprob = std::isfinite(smax2) ? sc[pos] - lse2 : kNaN;
    }
    if (dense) {
      std::fill(dense, dense + V, kNegInf);
      for (int64_t j = 0; j < n; ++j) dense[ids[j]] = sc[j];
    }
  } else {
    // 3b. No ordering needed: every token is a candidate (min-p may drop some).  [V]
    const float thr = a.use_min_p ? smax + std::log(a.min_p[b]) : kNegInf;
    float* sc = dense ? dense : w.e.data();
    float smax2 = kNegInf;
    int any_nan = 0;
    if (reward) {
#pragma omp simd
      for (int64_t i = 0; i < V; ++i) {
        const float x = s[i], r = reward[i];
        const float v = x + a.steer * r;
        sc[i] = x > kNegInf && x >= thr ? v : kNegInf;
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < V; ++i) {
        const float x = s[i];
        sc[i] = x > kNegInf && x >= thr ? x : kNegInf;
      }
    }
#pragma omp simd reduction(max : smax2) reduction(| : any_nan)
    for (int64_t i = 0; i < V; ++i) {
      const float y = sc[i];
      any_nan |= y != y;
      smax2 = y > smax2 ? y : smax2;
    }
    double sum = 0.0;
    if (!any_nan && smax2 > kNegInf && smax2 < std::numeric_limits<float>::infinity()) {
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < V; ++i) sum += exp_sum_term(sc[i] - smax2);
    }
    const bool finite = !any_nan && std::isfinite(smax2);
    const float lse2 = static_cast<float>(static_cast<double>(smax2) + std::log(sum));
    if (any_nan) {
      // greedy: max is NaN, nothing equals it, argmin -> position 0; sampling: first NaN
      token = 0;
      if (a.do_sample)
        for (int64_t i = 0; i < V; ++i)
          if (std::isnan(sc[i])) {
            token = i;
            break;
          }
    } else if (!(smax2 > kNegInf)) {
      token = 0;  // every score -inf: the first position / the lowest id
    } else {
      int64_t first_max = 0;
      while (!(sc[first_max] == smax2)) ++first_max;
      if (!a.do_sample) {
        token = first_max;
      } else {
        // Gumbel-max, drawing only for tokens that can still beat the max's perturbed score.
        const float p0 = perturb(smax2, philox_uniform(k0, k1, a.step, static_cast<uint32_t>(first_max)));
        // below `t` a score cannot reach p0 even with the largest noise (rounding included)
        const double bound = static_cast<double>(p0);
        const float t = static_cast<float>(bound - kGumbelMax - 1e-6 * std::fabs(bound) - 1e-3);
        int32_t* ids = w.ids.data();
        float* cand = w.cv.data();
        int64_t n = 0;
        for (int64_t i = 0; i < V; ++i) {  // branch-free compaction
          const float x = sc[i];
          ids[n] = static_cast<int32_t>(i);
          cand[n] = x;
          n += (x >= t) & (x > kNegInf);
        }
        const int64_t j = gumbel_argmax(cand, ids, n, false, k0, k1, a.step, w.u.data(), w.g.data());
        token = j < 0 ? 0 : ids[j];
      }
    }
    logprob = finite ? sc[token] - lse2 : kNaN;
  }

  // 6. Emit.
  a.tokens[b] = token;
  a.logprobs[b] = logprob;
  a.valid[b] = valid0 && std::isfinite(logprob);
  a.policy_logprobs[b] = (valid0 ? z[token] : 0.0f) - policy_lse;
}

// The row's logits as float32: a view for fp32, a copy into the workspace otherwise.
template <typename scalar_t>
const float* row_as_float(const scalar_t* x, int64_t V, Workspace& w) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return x;
  } else {
    float* z = w.z.data();
    for (int64_t i = 0; i < V; ++i) z[i] = static_cast<float>(x[i]);
    return z;
  }
}

Workspace& thread_workspace(int64_t V) {
  thread_local Workspace w;
  w.reserve(V);
  return w;
}

void check_rows(const at::Tensor& t, int64_t B, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.dim() == 1 && t.size(0) == B &&
                  t.is_contiguous(),
              name, " must be a contiguous CPU ", dtype, " tensor of shape [", B, "]");
}

}  // namespace

// The step. All tensors on CPU and contiguous (the Python wrapper sees to it).
//   logits      [B, V] float32 / bfloat16 / float16
//   seeds       [B] int64;  step: the Philox counter's second word (taken mod 2**32)
//   temperature [B] float32 > 0;  top_k: 0 or >= V disables
//   top_p       [B] float32, used when use_top_p;  min_p [B] float32, used when use_min_p
//   seen        [B, V] bool or None (penalty applied when given and != 1)
//   suppress    [S] int64 or None;  reward [B, V] float32 or None (used when steer != 0)
//   lanes       floats per vector in torch's CPU kernels (8 under AVX2, 16 under AVX512)
// Returns (tokens [B] int64, logprobs [B] f32, policy_logprobs [B] f32, valid [B] bool,
//          scores [B, V] f32 when return_scores else an empty tensor).
std::vector<at::Tensor> sample_step(const at::Tensor& logits, const at::Tensor& seeds, int64_t step,
                                    bool do_sample, const at::Tensor& temperature, int64_t top_k,
                                    bool use_top_p, const at::Tensor& top_p, bool use_min_p,
                                    const at::Tensor& min_p, double repetition_penalty,
                                    const std::optional<at::Tensor>& seen,
                                    const std::optional<at::Tensor>& suppress,
                                    const std::optional<at::Tensor>& reward, double steer,
                                    bool return_scores, int64_t lanes) {
  TORCH_CHECK(logits.dim() == 2 && logits.device().is_cpu() && logits.is_contiguous(),
              "logits must be a contiguous CPU tensor of shape [B, V]");
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "logits must be float32, bfloat16 or float16, got ", dtype);
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V > 0 && V < (int64_t{1} << 31), "vocabulary size must be in [1, 2**31), got ", V);
  check_rows(seeds, B, "seeds", at::kLong);
  check_rows(temperature, B, "temperature", at::kFloat);
  check_rows(top_p, B, "top_p", at::kFloat);
  check_rows(min_p, B, "min_p", at::kFloat);

  Args a;
  a.V = V;
  a.do_sample = do_sample;
  a.top_k = top_k;
  a.use_top_p = use_top_p;
  a.use_min_p = use_min_p;
  a.step = static_cast<uint32_t>(static_cast<uint64_t>(step));
  TORCH_CHECK(lanes == 4 || lanes == 8 || lanes == 16, "lanes must be 4, 8 or 16, got ", lanes);
  a.lanes = static_cast<int>(lanes);
  a.seeds = seeds.data_ptr<int64_t>();
  a.temperature = temperature.data_ptr<float>();
  a.top_p = top_p.data_ptr<float>();
  a.min_p = min_p.data_ptr<float>();
  if (seen.has_value() && seen->defined() && seen->numel() && repetition_penalty != 1.0) {
    TORCH_CHECK(seen->device().is_cpu() && seen->scalar_type() == at::kBool && seen->is_contiguous() &&
                    seen->dim() == 2 && seen->size(0) == B && seen->size(1) == V,
                "seen must be a contiguous CPU bool tensor of shape [B, V]");
    a.use_penalty = true;
    a.penalty = static_cast<float>(repetition_penalty);
    a.seen = seen->data_ptr<bool>();
  }
  std::vector<int64_t> ids;  // suppressed ids, wrapped like index_fill's
  if (suppress.has_value() && suppress->defined() && suppress->numel()) {
    const at::Tensor sup = suppress->to(at::kLong).contiguous().reshape(-1);
    TORCH_CHECK(sup.device().is_cpu(), "suppress must be on the CPU");
    const int64_t* p = sup.data_ptr<int64_t>();
    for (int64_t j = 0; j < sup.numel(); ++j) {
      TORCH_CHECK(p[j] >= -V && p[j] < V, "suppress id ", p[j], " out of range for V = ", V);
      ids.push_back(p[j] < 0 ? p[j] + V : p[j]);
    }
  }
  a.suppress = ids.data();
  a.n_suppress = static_cast<int64_t>(ids.size());
  if (reward.has_value() && reward->defined() && reward->numel() && steer != 0.0) {
    TORCH_CHECK(reward->device().is_cpu() && reward->scalar_type() == at::kFloat && reward->is_contiguous() &&
                    reward->dim() == 2 && reward->size(0) == B && reward->size(1) == V,
                "reward must be a contiguous CPU float32 tensor of shape [B, V]");
    a.use_reward = true;
    a.steer = static_cast<float>(steer);
    a.reward = reward->data_ptr<float>();
  }

  auto opts = logits.options();
  at::Tensor tokens = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor logprobs = at::empty({B}, opts.dtype(at::kFloat));
  at::Tensor policy = at::empty({B}, opts.dtype(at::kFloat));
  at::Tensor valid = at::empty({B}, opts.dtype(at::kBool));
  at::Tensor scores = return_scores ? at::empty({B, V}, opts.dtype(at::kFloat)) : at::empty({0}, opts.dtype(at::kFloat));
  a.tokens = tokens.data_ptr<int64_t>();
  a.logprobs = logprobs.data_ptr<float>();
  a.policy_logprobs = policy.data_ptr<float>();
  a.valid = valid.data_ptr<bool>();
  a.scores = return_scores ? scores.data_ptr<float>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "proxdecode_sample_step", [&] {
    const scalar_t* x = logits.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Workspace& w = thread_workspace(V);
      for (int64_t b = begin; b < end; ++b) step_row(row_as_float(x + b * V, V, w), b, a, w);
    });
  });
  return {tokens, logprobs, policy, valid, scores};
}

// Philox draws u[b, j] = uniform(seeds[b], step, index[b, j]), for tests against philox.py.
at::Tensor philox_uniform_cpu(const at::Tensor& seeds, int64_t step, const at::Tensor& index) {
  TORCH_CHECK(index.dim() == 2 && seeds.dim() == 1 && seeds.size(0) == index.size(0),
              "seeds [B] and index [B, K] expected");
  const at::Tensor sd = seeds.to(at::kLong).contiguous(), ix = index.to(at::kLong).contiguous();
  const int64_t B = ix.size(0), K = ix.size(1);
  at::Tensor out = at::empty({B, K}, ix.options().dtype(at::kFloat));
  const int64_t* ps = sd.data_ptr<int64_t>();
  const int64_t* pi = ix.data_ptr<int64_t>();
  float* po = out.data_ptr<float>();
  const uint32_t st = static_cast<uint32_t>(static_cast<uint64_t>(step));
  for (int64_t b = 0; b < B; ++b) {
    const uint64_t seed = static_cast<uint64_t>(ps[b]);
    for (int64_t j = 0; j < K; ++j)
      po[b * K + j] = philox_uniform(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), st,
                                     static_cast<uint32_t>(static_cast<uint64_t>(pi[b * K + j])));
  }
  return out;
}

}  // namespace proxdecode

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "proxdecode's fused decode step on CPU (see csrc/sample_step_cpu.cpp)";
  m.def("sample_step", &proxdecode::sample_step, "the decode step (see proxdecode.cpp.sample_step_cpp)",
        pybind11::arg("logits"), pybind11::arg("seeds"), pybind11::arg("step"), pybind11::arg("do_sample"),
        pybind11::arg("temperature"), pybind11::arg("top_k"), pybind11::arg("use_top_p"), pybind11::arg("top_p"),
        pybind11::arg("use_min_p"), pybind11::arg("min_p"), pybind11::arg("repetition_penalty"),
        pybind11::arg("seen"), pybind11::arg("suppress"), pybind11::arg("reward"), pybind11::arg("steer"),
        pybind11::arg("return_scores"), pybind11::arg("lanes") = 8);
  m.def("philox_uniform", &proxdecode::philox_uniform_cpu, "Philox4x32-10 draws, as proxdecode.philox.uniform");
}
