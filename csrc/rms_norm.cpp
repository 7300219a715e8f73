// RMSNorm on CPU, forward and backward in one pass over the rows each; the semantics are
// rms_norm_eager's (chunksft/ops/rms_norm.py):
//
//   r_i  = 1 / sqrt(mean_j x_ij^2 + eps)            (kept from the forward for the backward)
//   y_ij = x_ij r_i w_j
//   dx_ij = r_i (g_ij w_j - x_ij r_i^2 c_i),   c_i = mean_j g_ij w_j x_ij
//   dw_j  = sum_i g_ij x_ij r_i
//
// Rows are split over ATen's intra-op threads; each thread sums its rows' dw into its own slot, and
// the slots are added at the end.

#include <cmath>
#include <tuple>

#include "kernels.h"

namespace chunksft {
namespace {

// Rows per parallel task: enough elements (64k) that a task outweighs starting a parallel region,
// so the refinement head's [M*C, d] norms (a few 10k elements) stay on the calling thread.
int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(D, 1)); }

CHUNKSFT_SIMD_CLONES
void rms_norm_rows(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t D, float eps) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* xi = x + i * D;
    float* yi = y + i * D;
    float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
    for (int64_t j = 0; j < D; ++j) squares += xi[j] * xi[j];
    const float r = 1.0f / std::sqrt(squares / static_cast<float>(D) + eps);
    rstd[i] = r;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) yi[j] = xi[j] * r * w[j];
  }
}

CHUNKSFT_SIMD_CLONES
void rms_norm_rows_backward(const float* g, const float* x, const float* w, const float* rstd, float* dx, float* dw,
                            int64_t rows, int64_t D) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* gi = g + i * D;
    const float* xi = x + i * D;
    float* dxi = dx + i * D;
    const float r = rstd[i];
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < D; ++j) dot += gi[j] * w[j] * xi[j];
    const float c = dot * r * r / static_cast<float>(D);
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) {
      dxi[j] = r * (gi[j] * w[j] - xi[j] * c);
      dw[j] += gi[j] * xi[j] * r;
    }
  }
}

void check_rows(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(),
              "rms_norm (cpp): contiguous fp32 CPU rows [R, D] expected, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 1 && weight.size(0) == x.size(1) &&
                  weight.is_contiguous(),
              "rms_norm (cpp): fp32 weight [D] expected for rows ", x.sizes(), ", got ", weight.sizes());
}

}  // namespace

// x: fp32 [R, D] contiguous; weight: fp32 [D]. Returns (y fp32 [R, D], rstd fp32 [R]).
std::tuple<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rows(x, weight);
  const int64_t R = x.size(0), D = x.size(1);
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty({R}, x.options());
  const float* X = x.data_ptr<float>();
  const float* W = weight.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  float* S = rstd.data_ptr<float>();
  at::parallel_for(0, R, row_grain(D), [&](int64_t lo, int64_t hi) {
    rms_norm_rows(X + lo * D, W, Y + lo * D, S + lo, hi - lo, D, static_cast<float>(eps));
  });
  return {y, rstd};
}

// grad_y, x: fp32 [R, D] contiguous; weight: fp32 [D]; rstd: the forward's fp32 [R].
// Returns (grad_x fp32 [R, D], grad_weight fp32 [D]).
std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                     const at::Tensor& weight, const at::Tensor& rstd) {
  check_rows(x, weight);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == at::kFloat && grad_y.is_contiguous() &&
                  rstd.scalar_type() == at::kFloat && rstd.numel() == x.size(0),
              "rms_norm (cpp): grad_y like x ", x.sizes(), " and rstd [R] expected, got ", grad_y.sizes(), " and ",
              rstd.sizes());
  const int64_t R = x.size(0), D = x.size(1);
  at::Tensor dx = at::empty_like(x);
  at::Tensor partial = at::zeros({at::get_num_threads(), D}, x.options());
  const float* G = grad_y.data_ptr<float>();
  const float* X = x.data_ptr<float>();
  const float* W = weight.data_ptr<float>();
  const float* S = rstd.data_ptr<float>();
  float* DX = dx.data_ptr<float>();
  float* P = partial.data_ptr<float>();
  at::parallel_for(0, R, row_grain(D), [&](int64_t lo, int64_t hi) {
    rms_norm_rows_backward(G + lo * D, X + lo * D, W, S + lo, DX + lo * D, P + at::get_thread_num() * D, hi - lo, D);
  });
  return {dx, partial.sum(0)};
}

}  // namespace chunksft
