"""RMSNorm over the last dim: `y = x / sqrt(mean(x^2) + eps) * weight`.

Why a kernel: on CPU the forward of `F.rms_norm` is one fused op, but autograd takes its backward apart
into ~10 element-wise ops (pow, mean, rsqrt, mul and their backwards), and the refinement head runs
five differentiated norms per refinement step. The C++ kernel (csrc/rms_norm.cpp) keeps each row's
1 / rms from the forward and does the backward in one pass over the rows: `benchmarks/bench_rms_norm.py`
(fp32, 1 thread) measures forward + backward through autograd at 1.8x eager's speed at the head's
[288, 128], 2.7x at [288, 256], 5-7x at [2048, 1024] (at the head's shapes autograd's per-call overhead
is most of what remains: the kernels take 11 + 24 us at [288, 128]).

Backends: "eager" (the reference, `F.rms_norm`) and "cpp" (fp32 CPU tensors; other dtypes run the
reference). There is no Triton kernel: on CUDA ("triton" / "auto") the reference runs, which is
torch's own fused CUDA kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from chunksft.ops import _cpp
from chunksft.ops._backend import register_cpp, resolve_backend


def rms_norm_eager(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference. x: [..., D] float; weight: [D] (x's dtype); eps: added to the mean square. -> [..., D]."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


class RMSNormFunction(torch.autograd.Function):
    """The C++ forward and backward; x as contiguous fp32 rows [R, D]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, rstd = _cpp.load().rms_norm_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        grad_x, grad_weight = _cpp.load().rms_norm_backward(grad_y.contiguous(), x, weight, rstd)
        return grad_x, grad_weight if ctx.needs_input_grad[1] else None, None


def rms_norm_cpp(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`rms_norm_eager` on the C++ kernel for fp32 CPU tensors; the reference otherwise (other dtypes,
    or the extension unavailable)."""
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or _cpp.load() is None:
        return rms_norm_eager(x, weight, eps)
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    return RMSNormFunction.apply(rows, weight.contiguous(), float(eps)).view(x.shape)


register_cpp("rms_norm")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str = "auto") -> torch.Tensor:
    """RMSNorm of x: [..., D] with weight: [D]; contract `rms_norm_eager`. Gradients flow to x and weight.

    backend: "auto" (cpp on CPU when built, else the reference), "eager", "cpp", "triton" (= the
    reference: no Triton kernel, see the module docstring)."""
    if resolve_backend("rms_norm", backend, x.device) == "cpp":
        return rms_norm_cpp(x, weight, eps)
    return rms_norm_eager(x, weight, eps)
