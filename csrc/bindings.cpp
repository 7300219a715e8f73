// Python bindings of the chunksft CPU ops (module chunksft._C when built by setup.py, chunksft_cpp
// when JIT-built by chunksft/ops/_cpp.py). The autograd wiring lives in chunksft/ops/_cpp.py.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

namespace chunksft {
std::tuple<at::Tensor, at::Tensor> chunk_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& prompt_lens,
                                                           const at::Tensor& seq_lens, const at::Tensor& chunk_index,
                                                           int64_t layout, int64_t seq_len, int64_t noisy_len,
                                                           int64_t chunk_size, double scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk_attention_backward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& prompt_lens, const at::Tensor& seq_lens, const at::Tensor& chunk_index,
    int64_t layout, int64_t seq_len, int64_t noisy_len, int64_t chunk_size, double scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_blocked(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets, const at::Tensor& rows,
    const std::optional<at::Tensor>& coef, int64_t block);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> chunk_mask_counter(
    const at::Tensor& input_ids, const at::Tensor& prompt_lens, const at::Tensor& seq_lens, int64_t key,
    int64_t threshold, int64_t lo, int64_t hi, int64_t mask_id, int64_t chunk_size);
std::tuple<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                     const at::Tensor& weight, const at::Tensor& rstd);

// How many of torch's intra-op threads one at::parallel_for of this build runs on. parallel_for is a
// header template: compiled without OpenMP it runs its whole range on the calling thread, and so
// would every op here (chunksft/ops/_cpp.py builds with -fopenmp; tests and `python -m chunksft.env`
// check this number).
int64_t parallel_for_threads() {
  std::vector<int64_t> ran(at::get_num_threads(), 0);
  at::parallel_for(0, static_cast<int64_t>(ran.size()), 1, [&](int64_t, int64_t) { ran[at::get_thread_num()] = 1; });
  return std::accumulate(ran.begin(), ran.end(), int64_t{0});
}
}  // namespace chunksft

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "chunksft CPU kernels (csrc/)";
  m.def("parallel_for_threads", &chunksft::parallel_for_threads,
        "() -> threads one at::parallel_for runs on (torch.get_num_threads() when built with OpenMP)");
  m.def("chunk_attention_forward", &chunksft::chunk_attention_forward,
        "(q, k, v, prompt_lens, seq_lens, chunk_index, layout, L, T, C, scale) -> (out, lse)");
  m.def("chunk_attention_backward", &chunksft::chunk_attention_backward,
        "(dout, q, k, v, out, lse, prompt_lens, seq_lens, chunk_index, layout, L, T, C, scale) -> (dq, dk, dv)");
  m.def("linear_cross_entropy_blocked", &chunksft::linear_cross_entropy_blocked,
        "(hidden, weight, targets, rows, coef or None, block) -> (ce, argmax, grad_hidden, grad_weight)");
  m.def("chunk_mask_counter", &chunksft::chunk_mask_counter,
        "(input_ids, prompt_lens, seq_lens, key, threshold, lo, hi, mask_id, C) -> (ids, labels, chunk_masked, "
        "chunk_index, positions, chunk_rate)");
  m.def("rms_norm_forward", &chunksft::rms_norm_forward, "(x [R, D], weight [D], eps) -> (y, rstd [R])");
  m.def("rms_norm_backward", &chunksft::rms_norm_backward, "(grad_y, x, weight, rstd) -> (grad_x, grad_weight)");
}
