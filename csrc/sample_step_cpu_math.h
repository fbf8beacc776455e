// The arithmetic of the CPU decode step (sample_step_cpu.cpp): Philox4x32-10 draws as
// proxdecode/philox.py makes them, the Gumbel perturbation, and the exp/log/sum variants
// the step needs: branch-free Cephes polynomials that GCC vectorises for sums over the
// vocabulary, a port of SLEEF's expf and ATen's lane-order float sum where top-p must
// follow torch.softmax bit for bit. Why each is what it is: the header of sample_step_cpu.cpp.
// Included by that one translation unit; everything is in an unnamed namespace.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

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

}  // namespace
}  // namespace proxdecode
