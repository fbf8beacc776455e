// The fused decode step on CPU: logits in, one token per row out.
//
// Why this file exists: on CPU, HF's sort-based top-k/top-p is a large share of a decode
// step of the default model (`make bench-step` times HF's processors against this step), and
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
// Top-k keeps every value tied with the k-th, as HF does, up to kTieRoom past the k-th.
// One deliberate rule where the reference leaves a choice: among tied values, the lower
// token id ranks first (a stable descending order). torch.topk and the non-stable
// torch.sort on CPU order ties arbitrarily, so where a tie overflows top-k's room, or at
// the top-p cut inside a tie group, the reference may keep a different (equally valid) id.
// The tests compare against the reference with stable sorts patched in, and against the
// plain reference on tie-free rows.
//
// Top-p's probabilities decide membership, so they follow torch.softmax on CPU bit for bit
// where that is possible: SLEEF's expf (ported in sample_step_cpu_math.h, with the same
// FMAs), the float32 sum in the lane order of ATen's vec::reduce_all (8 lanes under AVX2,
// 16 under AVX512), and a multiply by the float32 reciprocal of that sum. That holds for top-p after top-k,
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
// Shapes: B rows, V vocabulary; see `sample_step` at the end for the argument list. The
// arithmetic (Philox, exp/log, sums) is in sample_step_cpu_math.h, the candidate set (top-k,
// top-p, the Gumbel-max pick) in sample_step_cpu_candidates.h; this file is one row's step
// and the binding.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "sample_step_cpu_math.h"        // Philox, the Gumbel noise, exp/log, torch's lane-order sum
#include "sample_step_cpu_candidates.h"  // the workspace, top-k, top-p, the Gumbel-max pick

namespace proxdecode {
namespace {

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
      add_top_k_ties(s, V, list);
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
      // probs = softmax(list) as torch computes it: after top-k, over the reference's
      // k + room values (those past the set are 0) with torch's summation order; top-p
      // alone, over the whole row, whose sum is z_all.
      const int64_t n_ref = use_top_k ? std::min<int64_t>(V, a.top_k + kTieRoom) : n;
      float* prob = w.cv.data();  // [n_ref]
      for (int64_t j = 0; j < n; ++j) prob[j] = sleef_expf(sc[j] - vmax);  // -inf -> 0
      std::fill(prob + n, prob + n_ref, 0.0f);
      const float total = use_top_k ? torch_reduce_sum(prob, n_ref, a.lanes) : static_cast<float>(z_all);
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
      // lowest id among the list entries equal to the best (all of them when it is -inf:
      // a row with nothing to sample, valid False; its junk id can differ from the
      // reference's, whose top-k list also holds non-candidates past the tie room)
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
