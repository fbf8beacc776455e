// The fused decode step as a CUDA kernel: one thread block per row, no sort.
//
// STATUS: built, never run: no machine it was written on had a GPU. Where nvcc is on the
// PATH, `make test` compiles it for sm_80 and sm_90 (CUDA 13 here: 56 registers, no spill)
// and links it with its binding into a module that imports
// (tests/test_sample_step_cuda_build.py). Its contract is proxdecode.step.sample_step's,
// and it is meant to be checked against it on a GPU (tests/test_sample_step_cpp.py's
// oracle, with the inputs on CUDA; benchmarks/gpu.sh does one such check) before anything
// relies on it; the Triton step (kernels/) is the CUDA path in use.
//
// Why a second GPU implementation beside Triton: it is the same algorithm as the CPU
// file (csrc/sample_step_cpu.cpp) in the shape a GPU wants, for builds without Triton and
// as the reference for a future CUDA-graph-friendly step. The design is the CPU step's:
// sorting-free selection by threshold search, block reductions, the same Philox.
//
// Per row (block), passes over the row's V values, all reads mostly from L2:
//   A  the logits: validity (max, NaN), s = penalised z / T into a [B, V] scratch, max(s)
//   B  log-sum-exp of the raw logits (policy log-probs)
//   top-k: a radix select (4 digit passes of 8 bits on an order-preserving uint32 key)
//      finds the k-th key K; every key >= K is kept, as HF keeps ties, up to kTieRoom
//      past the k-th (past that, the lowest ids: an ordered block scan)
//   top-p: softmax mass over the candidates, then a radix descent on the same key that
//      follows the mass instead of the count: it finds the lowest kept key, i.e. the last
//      candidate whose mass ranked strictly above it is < p; ties again by lowest id
//   min-p: a threshold, s >= max + log(min_p)
//   C  steering and the pick: max of the scores, Gumbel-max (Philox draws as in
//      proxdecode/philox.py) or argmax, sum of exp for the log-prob; optional dense scores.
//
// Differences from the reference a GPU makes: sums are reduced in another order, and the
// top-p mass is summed in double, so the cut can move where the reference's float32
// softmax puts a candidate's mass-above within its own rounding (~1e-7 after top-k, ~2e-5
// over a 49k vocabulary) of p; a tie between two *perturbed* scores goes to the lower id
// (the reference: the earlier list position), which has probability zero in practice.
// Tie rule for equal logits: lower id first, as the CPU step. A row with nothing left to
// sample (valid = False) returns token 0, where the reference returns another junk id.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

namespace proxdecode_cuda {

constexpr int kThreads = 512;
constexpr long long kTieRoom = 64;  // proxdecode.step.TIE_ROOM
constexpr int kWarps = kThreads / 32;

struct Params {
  int64_t B, V;
  int dtype;  // 0 float32, 1 bfloat16, 2 float16
  const void* logits;           // [B, V]
  const int64_t* seeds;         // [B]
  uint32_t step;
  bool do_sample;
  const float* temperature;     // [B]
  int64_t top_k;                // 0 < top_k < V enables
  bool use_top_p;
  const float* top_p;           // [B]
  bool use_min_p;
  const float* min_p;           // [B]
  float penalty;                // applied where seen, when seen != nullptr
  const uint8_t* seen;          // [B, V] or null
  const int64_t* suppress;      // [S] or null; negative ids wrap, out-of-range ids are ignored
  int64_t n_suppress;
  const float* reward;          // [B, V] or null (steer == 0)
  float steer;
  float* s_buf;                 // [B, V] scratch
  int64_t* tokens;              // [B]
  float* logprobs;              // [B]
  float* policy_logprobs;       // [B]
  bool* valid;                  // [B]
  float* scores;                // [B, V] or null
};

// ---------------------------------------------------------------------------------------
// Philox4x32-10 (as proxdecode/philox.py and Triton's tl.rand) and the uniform mapping.

__device__ __forceinline__ float philox_uniform(uint32_t k0, uint32_t k1, uint32_t step, uint32_t token) {
  uint32_t c0 = token, c1 = step, c2 = 0, c3 = 0;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi_b = __umulhi(c2, 0xCD9E8D57u), lo_b = c2 * 0xCD9E8D57u;
    const uint32_t hi_a = __umulhi(c0, 0xD2511F53u), lo_a = c0 * 0xD2511F53u;
    c0 = hi_b ^ c1 ^ k0;
    c1 = lo_b;
    c2 = hi_a ^ c3 ^ k1;
    c3 = lo_a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  int32_t x = static_cast<int32_t>(c0);
  x = x < 0 ? ~x : x;
  // __fmul_rn: no contraction into anything else; the constant is the Python float rounded
  return __fmul_rn(static_cast<float>(x), 4.6566127342e-10f);
}

// ---------------------------------------------------------------------------------------
// Helpers.

template <typename T>
__device__ __forceinline__ float load(const void* p, int64_t i);
template <>
__device__ __forceinline__ float load<float>(const void* p, int64_t i) {
  return static_cast<const float*>(p)[i];
}
template <>
__device__ __forceinline__ float load<__nv_bfloat16>(const void* p, int64_t i) {
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
template <>
__device__ __forceinline__ float load<__half>(const void* p, int64_t i) {
  return __half2float(static_cast<const __half*>(p)[i]);
}

// An order-preserving key: a > b (floats, no NaN) <=> key(a) > key(b), and equal floats
// (-0 and +0 too, as torch compares them) share one key; -inf is the smallest.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t u = __float_as_uint(x + 0.0f);  // -0 + 0 = +0: one key for the equal zeros
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct Shared {
  float f[kWarps];
  double d[kWarps];
  int i[kWarps];
  unsigned int hist[256];
  double mass[256];
  float bcast_f[4];
  double bcast_d[2];
  long long bcast_i[4];
};

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ int warp_or(int v) {
  for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block reductions; every thread gets the result. (Max ignores NaN: callers track NaN apart.)
__device__ float block_max(float v, Shared& sh) {
  v = warp_max(v);
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  __syncthreads();
  if (l == 0) sh.f[w] = v;
  __syncthreads();
  v = l < kWarps ? sh.f[l] : -INFINITY;
  return warp_max(v);
}
__device__ double block_sum(double v, Shared& sh) {
  v = warp_sum(v);
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  __syncthreads();
  if (l == 0) sh.d[w] = v;
  __syncthreads();
  v = l < kWarps ? sh.d[l] : 0.0;
  return warp_sum(v);
}
__device__ int block_or(int v, Shared& sh) {
  v = warp_or(v);
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  __syncthreads();
  if (l == 0) sh.i[w] = v;
  __syncthreads();
  v = l < kWarps ? sh.i[l] : 0;
  return warp_or(v);
}

// The `need`-th (1-based) id, in increasing order, among ids i < V with pred(i): an ordered
// block scan over tiles of kThreads ids. Returns V if there are fewer than `need`.
template <typename Pred>
__device__ int64_t nth_id(int64_t V, int64_t need, Pred pred, Shared& sh) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    sh.bcast_i[0] = V;  // the answer
    sh.bcast_i[1] = 0;  // matches before this tile
  }
  __syncthreads();
  for (int64_t base = 0; base < V; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool f = i < V && pred(i);
    const unsigned int ballot = __ballot_sync(0xffffffffu, f);
    if (l == 0) sh.i[w] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int k = 0; k < kWarps; ++k) {
      before += k < w ? sh.i[k] : 0;
      total += sh.i[k];
    }
    const long long running = sh.bcast_i[1];
    const int rank = before + __popc(ballot & ((1u << l) - 1u));
    if (f && running + rank + 1 == need) sh.bcast_i[0] = i;
    __syncthreads();
    if (threadIdx.x == 0) sh.bcast_i[1] = running + total;
    __syncthreads();
    if (sh.bcast_i[1] >= need) break;  // uniform: every thread reads the same value
  }
  const int64_t out = sh.bcast_i[0];
  __syncthreads();
  return out;
}

// ---------------------------------------------------------------------------------------
// The kernel.

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_step_kernel(Params p) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x, V = p.V;
  const int tid = threadIdx.x;
  float* s = p.s_buf + b * V;
  const float Tm = p.temperature[b];
  const uint8_t* seen = p.seen ? p.seen + b * V : nullptr;
  const float* reward = p.reward ? p.reward + b * V : nullptr;
  const int64_t off = b * V;

  // A. validity and s.
  float m = -INFINITY, smax = -INFINITY;
  int bad = 0;
  for (int64_t i = tid; i < V; i += kThreads) {
    const float x = load<T>(p.logits, off + i);
    bad |= isnan(x);
    m = fmaxf(m, x);
    float y = x;
    if (seen && seen[i]) y = x < 0.0f ? __fmul_rn(x, p.penalty) : __fdiv_rn(x, p.penalty);
    const float si = __fdiv_rn(y, Tm);
    s[i] = si;
    smax = fmaxf(smax, si);
  }
  bad = block_or(bad, sh);
  m = block_max(m, sh);
  smax = block_max(smax, sh);
  const bool valid0 = !bad && isfinite(m);
  if (!valid0) {  // the reference computes an invalid row on zeros
    smax = __fdiv_rn(0.0f, Tm);
    for (int64_t i = tid; i < V; i += kThreads) s[i] = smax;
  }
  __syncthreads();
  int hit = 0;
  for (int64_t j = tid; j < p.n_suppress; j += kThreads) {
    int64_t id = p.suppress[j];
    id = id < 0 ? id + V : id;
    if (id >= 0 && id < V) {
      hit |= s[id] >= smax;
      s[id] = -INFINITY;
    }
  }
  hit = block_or(hit, sh);  // (its barriers also publish the -inf writes)
  if (hit) {
    float v = -INFINITY;
    for (int64_t i = tid; i < V; i += kThreads) v = fmaxf(v, s[i]);
    smax = block_max(v, sh);
  }

  // B. log-sum-exp of the raw logits.
  float policy_lse;
  if (valid0) {
    float acc = 0.0f;
    for (int64_t i = tid; i < V; i += kThreads) acc += expf(load<T>(p.logits, off + i) - m);
    policy_lse = static_cast<float>(log(block_sum(acc, sh)) + static_cast<double>(m));
  } else {
    policy_lse = static_cast<float>(log(static_cast<double>(V)));
  }

  // Top-k: the k-th largest key, and the id cut among the keys equal to it.
  const bool use_top_k = p.top_k > 0 && p.top_k < V;
  uint32_t k_key = 0;            // keep key > k_key, or key == k_key and id <= k_cut
  int64_t k_cut = V;
  if (use_top_k) {
    uint32_t prefix = 0, mask = 0;
    long long remaining = p.top_k;
    unsigned int count_eq = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int d = tid; d < 256; d += kThreads) sh.hist[d] = 0;
      __syncthreads();
      for (int64_t i = tid; i < V; i += kThreads) {
        const uint32_t key = order_key(s[i]);
        if ((key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        int digit = 0;
        for (int d = 255; d >= 0; --d) {
          if (remaining <= sh.hist[d]) {
            digit = d;
            break;
          }
          remaining -= sh.hist[d];
        }
        sh.bcast_i[2] = digit;
        sh.bcast_i[3] = remaining;
      }
      __syncthreads();
      const uint32_t digit = static_cast<uint32_t>(sh.bcast_i[2]);
      remaining = sh.bcast_i[3];
      count_eq = sh.hist[digit];
      prefix |= digit << shift;
      mask |= 255u << shift;
      __syncthreads();
    }
    k_key = prefix;
    // Ties at the k-th key: all of them as HF keeps them, up to kTieRoom past the k-th
    // (then the lowest ids), as the torch reference's top-k list holds k + kTieRoom.
    const long long take = remaining + kTieRoom;
    if (static_cast<long long>(count_eq) > take)
      k_cut = nth_id(V, take, [&](int64_t i) { return order_key(s[i]) == k_key; }, sh);
  }
  auto in_top_k = [&](int64_t i, uint32_t key) {
    return !use_top_k || key > k_key || (key == k_key && i <= k_cut);
  };

  // Top-p: mass ranked strictly above < p, over the candidates (finite and in the top k).
  uint32_t p_key = 0;            // keep key > p_key, or key == p_key and id <= p_cut
  int64_t p_cut = V;
  if (p.use_top_p && smax > -INFINITY) {
    const float top_p = p.top_p[b];
    double z = 0.0;
    for (int64_t i = tid; i < V; i += kThreads) {
      const float si = s[i];
      if (si > -INFINITY && in_top_k(i, order_key(si))) z += expf(si - smax);
    }
    z = block_sum(z, sh);
    const double inv_z = 1.0 / z;
    uint32_t prefix = 0, mask = 0;
    double above = 0.0;
    bool none_kept = false;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int d = tid; d < 256; d += kThreads) {
        sh.hist[d] = 0;
        sh.mass[d] = 0.0;
      }
      __syncthreads();
      for (int64_t i = tid; i < V; i += kThreads) {
        const float si = s[i];
        const uint32_t key = order_key(si);
        if (si > -INFINITY && (key & mask) == prefix && in_top_k(i, key)) {
          const uint32_t d = (key >> shift) & 255u;
          atomicAdd(&sh.hist[d], 1u);
          atomicAdd(&sh.mass[d], static_cast<double>(expf(si - smax)) * inv_z);
        }
      }
      __syncthreads();
      if (tid == 0) {  // the lowest non-empty digit whose first element still has mass above < p
        int digit = -1;
        double run = above, at = above;
        for (int d = 255; d >= 0; --d) {
          if (sh.hist[d] == 0) continue;
          if (!(run < top_p)) break;
          digit = d;
          at = run;
          run += sh.mass[d];
        }
        sh.bcast_i[2] = digit;  // -1 only when p <= 0 (outside the contract): keep nothing
        sh.bcast_d[0] = at;
      }
      __syncthreads();
      if (sh.bcast_i[2] < 0) {
        none_kept = true;
        break;
      }
      const uint32_t digit = static_cast<uint32_t>(sh.bcast_i[2]);
      above = sh.bcast_d[0];
      prefix |= digit << shift;
      mask |= 255u << shift;
      __syncthreads();
    }
    p_key = prefix;
    if (none_kept) {
      p_key = 0xFFFFFFFFu;  // no key is above it, and no id is <= -1
      p_cut = -1;
    } else {
      // keys equal to p_key share one probability: keep the first r (by id) with above + r*pe < p
      if (tid == 0) {
        const unsigned int n_eq = sh.hist[p_key & 255u];
        const double pe = static_cast<double>(expf(__uint_as_float(
                              (p_key & 0x80000000u) ? (p_key & 0x7fffffffu) : ~p_key) - smax)) * inv_z;
        long long r = 0;
        while (r < n_eq && above + static_cast<double>(r) * pe < top_p) ++r;
        sh.bcast_i[2] = n_eq;
        sh.bcast_i[3] = r;
      }
      __syncthreads();
      const long long n_eq = sh.bcast_i[2], keep_eq = sh.bcast_i[3];
      __syncthreads();
      if (keep_eq < n_eq)
        p_cut = nth_id(V, keep_eq, [&](int64_t i) {
          const uint32_t key = order_key(s[i]);
          return key == p_key && in_top_k(i, key);
        }, sh);
    }
  }
  const float min_thr = p.use_min_p ? smax + logf(p.min_p[b]) : -INFINITY;
  auto kept = [&](int64_t i, float si) {
    if (!(si > -INFINITY) || !(si >= min_thr)) return false;
    const uint32_t key = order_key(si);
    if (!in_top_k(i, key)) return false;
    return !p.use_top_p || key > p_key || (key == p_key && i <= p_cut);
  };

  // C. Scores, their max (and Gumbel-max or argmax), the log-softmax sum.
  const uint64_t seed = static_cast<uint64_t>(p.seeds[b]);
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  float best = -INFINITY, pick_val = -INFINITY;
  int64_t pick = V;
  for (int64_t i = tid; i < V; i += kThreads) {
    const float si = s[i];
    if (!kept(i, si)) {
      if (p.scores) p.scores[off + i] = -INFINITY;
      continue;
    }
    const float sc = reward ? si + __fmul_rn(p.steer, reward[i]) : si;
    if (p.scores) p.scores[off + i] = sc;
    best = fmaxf(best, sc);
    const float key = p.do_sample ? sc - logf(-logf(philox_uniform(k0, k1, p.step, static_cast<uint32_t>(i)))) : sc;
    if (key > pick_val || (key == pick_val && i < pick)) {  // ids ascend per thread: lowest wins
      pick_val = key;
      pick = i;
    }
  }
  best = block_max(best, sh);
  // block argmax of (pick_val desc, pick asc)
  {
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, pick_val, o);
      const long long oi = __shfl_xor_sync(0xffffffffu, static_cast<long long>(pick), o);
      if (ov > pick_val || (ov == pick_val && oi < pick)) {
        pick_val = ov;
        pick = oi;
      }
    }
    const int w = tid / 32, l = tid % 32;
    __syncthreads();
    __shared__ long long warp_pick[kWarps];
    if (l == 0) {
      sh.f[w] = pick_val;
      warp_pick[w] = pick;
    }
    __syncthreads();
    if (tid == 0) {
      for (int k = 1; k < kWarps; ++k)
        if (sh.f[k] > sh.f[0] || (sh.f[k] == sh.f[0] && warp_pick[k] < warp_pick[0])) {
          sh.f[0] = sh.f[k];
          warp_pick[0] = warp_pick[k];
        }
      sh.bcast_i[0] = warp_pick[0];
      sh.bcast_f[0] = sh.f[0];
    }
    __syncthreads();
    pick = sh.bcast_i[0];
    pick_val = sh.bcast_f[0];
    __syncthreads();
  }
  double sum = 0.0;
  if (best > -INFINITY && best < INFINITY) {
    for (int64_t i = tid; i < V; i += kThreads) {
      const float si = s[i];
      if (kept(i, si)) sum += expf((reward ? si + __fmul_rn(p.steer, reward[i]) : si) - best);
    }
  }
  sum = block_sum(sum, sh);

  if (tid == 0) {
    const bool finite = best > -INFINITY && best < INFINITY;
    // nothing kept (or every perturbed score -inf): the reference's first list position
    const int64_t token = pick < V && pick_val > -INFINITY ? pick : 0;
    float lp = NAN;
    if (finite) {
      const float st = s[token];
      const float sc = kept(token, st) ? (reward ? st + __fmul_rn(p.steer, reward[token]) : st) : -INFINITY;
      lp = sc - static_cast<float>(static_cast<double>(best) + log(sum));
    }
    p.tokens[b] = token;
    p.logprobs[b] = lp;
    p.valid[b] = valid0 && isfinite(lp);
    p.policy_logprobs[b] = (valid0 ? load<T>(p.logits, off + token) : 0.0f) - policy_lse;
  }
}

}  // namespace proxdecode_cuda

// Host launcher (declared in sample_step_cuda.cpp). dtype: 0 float32, 1 bfloat16, 2 float16.
// Returns the cudaError_t of the launch (0 on success); nothing is synchronised.
int proxdecode_sample_step_cuda_launch(
    int64_t B, int64_t V, int dtype, const void* logits, const int64_t* seeds, uint32_t step,
    bool do_sample, const float* temperature, int64_t top_k, bool use_top_p, const float* top_p,
    bool use_min_p, const float* min_p, float penalty, const uint8_t* seen, const int64_t* suppress,
    int64_t n_suppress, const float* reward, float steer, float* s_buf, int64_t* tokens,
    float* logprobs, float* policy_logprobs, bool* valid, float* scores, void* stream) {
  using namespace proxdecode_cuda;
  Params p{B, V, dtype, logits, seeds, step, do_sample, temperature, top_k, use_top_p, top_p,
           use_min_p, min_p, penalty, seen, suppress, n_suppress, reward, steer, s_buf, tokens,
           logprobs, policy_logprobs, valid, scores};
  if (B == 0) return 0;
  const dim3 grid(static_cast<unsigned int>(B)), block(kThreads);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: sample_step_kernel<float><<<grid, block, 0, st>>>(p); break;
    case 1: sample_step_kernel<__nv_bfloat16><<<grid, block, 0, st>>>(p); break;
    case 2: sample_step_kernel<__half><<<grid, block, 0, st>>>(p); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}
