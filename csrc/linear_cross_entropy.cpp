// Fused linear cross-entropy on CPU: cross_entropy(hidden @ weight^T, targets) over row blocks, so
// the [N, V] logits never exist; the semantics are linear_cross_entropy_eager's
// (chunksft/ops/linear_cross_entropy.py).
//
// Per block of rows: logits [rows, V] fp32 = one GEMM into a reused buffer; a row pass computes
// ce = logsumexp - logit[target] and the argmax and, when gradients are wanted, overwrites the logits with
// coef * (softmax - onehot); two GEMMs turn that into the block's rows of d hidden and its
// contribution to d weight. Peak extra memory: one logits block plus the fp32 weight gradient.

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "kernels.h"

namespace chunksft {
namespace {

// One row of logits x[0, V): returns ce = logsumexp(x) - x[target] and sets *argmax to the first index
// of the row max (torch.argmax's tie rule); with grad, x becomes coef * (softmax(x) - onehot(target)).
CHUNKSFT_SIMD_CLONES
float cross_entropy_row(float* x, int64_t V, int64_t target, bool grad, float coef, int64_t* argmax) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < V; ++j) mx = x[j] > mx ? x[j] : mx;
  int64_t arg = 0;
  while (arg < V - 1 && x[arg] != mx) ++arg;
  *argmax = arg;
  const float gap = mx - x[target];  // ce = logsumexp - x[target] = gap + log(sum of exp(x - mx))
  float sum = 0.0f;
  if (grad) {  // keep each exp in place: the gradient below rescales them instead of recomputing them
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < V; ++j) {
      x[j] = exp_approx(x[j] - mx);
      sum += x[j];
    }
    const float scale = coef / sum;
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) x[j] *= scale;
    x[target] -= coef;
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < V; ++j) sum += exp_approx(x[j] - mx);
  }
  return gap + std::log(sum);
}

}  // namespace

// hidden: [N, H] float; weight: [V, H] float; targets: int64 [N] (valid ids on `rows`); rows: int64
// [R] the rows that carry a loss; coef: optional fp32 [R], the weight of each row's ce in the
// differentiated sum; block: rows per logits block.
// Returns (ce fp32 [R], argmax int64 [R], grad_hidden [N, H] in hidden's dtype (zero off `rows`),
// grad_weight fp32 [V, H]); the gradients are undefined tensors without coef.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_blocked(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets, const at::Tensor& rows,
    const std::optional<at::Tensor>& coef, int64_t block) {
  TORCH_CHECK(hidden.device().is_cpu() && weight.device().is_cpu() && hidden.dim() == 2 && weight.dim() == 2 &&
                  hidden.size(1) == weight.size(1),
              "linear_cross_entropy (cpp): hidden [N, H] and weight [V, H] CPU tensors expected, got ",
              hidden.sizes(), " and ", weight.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong && rows.scalar_type() == at::kLong,
              "linear_cross_entropy (cpp): targets and rows must be int64");
  TORCH_CHECK(block > 0, "linear_cross_entropy (cpp): block must be positive");
  const int64_t R = rows.numel(), V = weight.size(0);
  const bool grad = coef.has_value();
  // fp32 compute: a no-op for fp32 weights; half-precision weights are upcast once per call.
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const at::Tensor rows_c = rows.contiguous();
  const at::Tensor row_targets = targets.index_select(0, rows_c).contiguous();
  at::Tensor ce = at::empty({R}, hidden.options().dtype(at::kFloat));
  at::Tensor argmax = at::empty({R}, hidden.options().dtype(at::kLong));
  at::Tensor grad_hidden, grad_weight, coef_c;
  if (grad) {
    coef_c = coef->to(at::kFloat).contiguous();
    TORCH_CHECK(coef_c.numel() == R, "linear_cross_entropy (cpp): coef must have one entry per row");
    grad_hidden = at::zeros_like(hidden);
    grad_weight = at::zeros({V, weight.size(1)}, w.options());
  }
  at::Tensor logits = at::empty({std::min(block, R), V}, w.options());
  for (int64_t start = 0; start < R; start += block) {
    const int64_t n = std::min(block, R - start);
    const at::Tensor idx = rows_c.narrow(0, start, n);
    const at::Tensor h = hidden.index_select(0, idx).to(at::kFloat);
    at::Tensor blk = logits.narrow(0, 0, n);
    at::mm_out(blk, h, w.t());
    float* x = blk.data_ptr<float>();
    float* ce_out = ce.data_ptr<float>() + start;
    int64_t* argmax_out = argmax.data_ptr<int64_t>() + start;
    const int64_t* tgt = row_targets.data_ptr<int64_t>() + start;
    const float* cf = grad ? coef_c.data_ptr<float>() + start : nullptr;
    at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        TORCH_CHECK(tgt[i] >= 0 && tgt[i] < V, "linear_cross_entropy (cpp): target ", tgt[i], " out of range [0, ", V, ")");
        ce_out[i] = cross_entropy_row(x + i * V, V, tgt[i], grad, grad ? cf[i] : 0.0f, argmax_out + i);
      }
    });
    if (grad) {
      grad_hidden.index_copy_(0, idx, at::mm(blk, w).to(hidden.scalar_type()));
      grad_weight.addmm_(blk.t(), h);
    }
  }
  return {ce, argmax, grad_hidden, grad_weight};
}

}  // namespace chunksft
