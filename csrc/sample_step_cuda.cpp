// ATen binding of the CUDA decode step (csrc/sample_step_cuda.cu).
//
// STATUS: built, never run (against a CPU build of torch, whose headers and libraries are
// enough here: this file uses no CUDA header; the stream comes from Python as a raw handle;
// tests/test_sample_step_cuda_build.py links it with the kernel and imports the module).
// See the header of sample_step_cuda.cu. proxdecode.cpp.sample_step_cuda is the Python entry.
//
// Same arguments as the CPU binding (csrc/sample_step_cpu.cpp), all tensors on one CUDA
// device, plus `stream`: torch.cuda.current_stream().cuda_stream, so the kernel is ordered
// with the caller's work and nothing synchronises. Out-of-range suppress ids are ignored
// (checking them would need a device-to-host copy).

#include <torch/extension.h>

#include <cstdint>
#include <optional>
#include <vector>

int proxdecode_sample_step_cuda_launch(
    int64_t B, int64_t V, int dtype, const void* logits, const int64_t* seeds, uint32_t step,
    bool do_sample, const float* temperature, int64_t top_k, bool use_top_p, const float* top_p,
    bool use_min_p, const float* min_p, float penalty, const uint8_t* seen, const int64_t* suppress,
    int64_t n_suppress, const float* reward, float steer, float* s_buf, int64_t* tokens,
    float* logprobs, float* policy_logprobs, bool* valid, float* scores, void* stream);

namespace {

void check_on(const at::Tensor& t, const at::Tensor& like, const char* name, at::ScalarType dtype,
              at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype && t.is_contiguous() && t.sizes() == shape, name,
              " must be a contiguous ", dtype, " tensor of shape ", shape, ", got ", t.scalar_type(), " ",
              t.sizes());
}

}  // namespace

// (tokens [B] int64, logprobs [B] f32, policy_logprobs [B] f32, valid [B] bool,
//  scores [B, V] f32 when return_scores else an empty tensor)
std::vector<at::Tensor> sample_step_cuda(const at::Tensor& logits, const at::Tensor& seeds, int64_t step,
                                         bool do_sample, const at::Tensor& temperature, int64_t top_k,
                                         bool use_top_p, const at::Tensor& top_p, bool use_min_p,
                                         const at::Tensor& min_p, double repetition_penalty,
                                         const std::optional<at::Tensor>& seen,
                                         const std::optional<at::Tensor>& suppress,
                                         const std::optional<at::Tensor>& reward, double steer,
                                         bool return_scores, int64_t stream) {
  TORCH_CHECK(logits.is_cuda() && logits.dim() == 2 && logits.is_contiguous(),
              "logits must be a contiguous CUDA tensor of shape [B, V]");
  const auto dt = logits.scalar_type();
  const int dtype = dt == at::kFloat ? 0 : dt == at::kBFloat16 ? 1 : dt == at::kHalf ? 2 : -1;
  TORCH_CHECK(dtype >= 0, "logits must be float32, bfloat16 or float16, got ", dt);
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V > 0 && V < (int64_t{1} << 31), "vocabulary size must be in [1, 2**31), got ", V);
  check_on(seeds, logits, "seeds", at::kLong, {B});
  check_on(temperature, logits, "temperature", at::kFloat, {B});
  check_on(top_p, logits, "top_p", at::kFloat, {B});
  check_on(min_p, logits, "min_p", at::kFloat, {B});
  const uint8_t* seen_ptr = nullptr;
  if (seen.has_value() && seen->defined() && seen->numel() && repetition_penalty != 1.0) {
    check_on(*seen, logits, "seen", at::kBool, {B, V});
    seen_ptr = reinterpret_cast<const uint8_t*>(seen->data_ptr<bool>());
  }
  const int64_t* sup_ptr = nullptr;
  int64_t n_sup = 0;
  if (suppress.has_value() && suppress->defined() && suppress->numel()) {
    check_on(*suppress, logits, "suppress", at::kLong, {suppress->numel()});
    sup_ptr = suppress->data_ptr<int64_t>();
    n_sup = suppress->numel();
  }
  const float* reward_ptr = nullptr;
  if (reward.has_value() && reward->defined() && reward->numel() && steer != 0.0) {
    check_on(*reward, logits, "reward", at::kFloat, {B, V});
    reward_ptr = reward->data_ptr<float>();
  }
  auto opts = logits.options();
  at::Tensor tokens = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor logprobs = at::empty({B}, opts.dtype(at::kFloat));
  at::Tensor policy = at::empty({B}, opts.dtype(at::kFloat));
  at::Tensor valid = at::empty({B}, opts.dtype(at::kBool));
  at::Tensor s_buf = at::empty({B, V}, opts.dtype(at::kFloat));  // the scaled logits, per row
  at::Tensor scores = return_scores ? at::empty({B, V}, opts.dtype(at::kFloat)) : at::empty({0}, opts.dtype(at::kFloat));
  const int err = proxdecode_sample_step_cuda_launch(
      B, V, dtype, logits.data_ptr(), seeds.data_ptr<int64_t>(), static_cast<uint32_t>(static_cast<uint64_t>(step)),
      do_sample, temperature.data_ptr<float>(), top_k, use_top_p, top_p.data_ptr<float>(), use_min_p,
      min_p.data_ptr<float>(), static_cast<float>(repetition_penalty), seen_ptr, sup_ptr, n_sup, reward_ptr,
      static_cast<float>(steer), s_buf.data_ptr<float>(), tokens.data_ptr<int64_t>(), logprobs.data_ptr<float>(),
      policy.data_ptr<float>(), valid.data_ptr<bool>(), return_scores ? scores.data_ptr<float>() : nullptr,
      reinterpret_cast<void*>(static_cast<intptr_t>(stream)));
  TORCH_CHECK(err == 0, "proxdecode: the CUDA step failed to launch (cudaError ", err, ")");
  return {tokens, logprobs, policy, valid, scores};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "proxdecode's fused decode step on CUDA (see csrc/sample_step_cuda.cu; built, never run on a GPU)";
  m.def("sample_step", &sample_step_cuda, "the decode step on CUDA", pybind11::arg("logits"),
        pybind11::arg("seeds"), pybind11::arg("step"), pybind11::arg("do_sample"), pybind11::arg("temperature"),
        pybind11::arg("top_k"), pybind11::arg("use_top_p"), pybind11::arg("top_p"), pybind11::arg("use_min_p"),
        pybind11::arg("min_p"), pybind11::arg("repetition_penalty"), pybind11::arg("seen"),
        pybind11::arg("suppress"), pybind11::arg("reward"), pybind11::arg("steer"),
        pybind11::arg("return_scores"), pybind11::arg("stream"));
}
