"""Linear cross-entropy: `cross_entropy(hidden @ weight.T, targets)` without the [N, V] logits.

The eager reference materialises the fp32 logits (the specification). The fused backends walk the
rows that carry a loss in blocks of `rows_per_block(V)` rows (the C++ path: twice as many,
`CPP_BLOCK_ELEMENTS`): per block the fp32 logits [rows, V] are computed by one matmul, a row-wise
kernel turns them in place into the loss and the logit gradient `coef * (softmax - onehot)`, and two
matmuls turn that into the block's hidden gradient and its contribution to the weight gradient.
Peak extra memory is one block of logits plus the fp32 weight gradient, instead of several [N, V]
fp32 tensors.

For "mean" / "sum" the gradients are computed during the forward (grad_output is a scalar applied
in backward), so the logits are computed once; for "none" the backward recomputes them.

`return_stats=True` also returns, from the same pass over the logits, what a training objective reads
besides the loss (`LinearCEStats`: the unweighted per-row CE and the argmax), so that no second
vocabulary matmul is needed. Then the rows walked are all non-ignored rows, zero-weight ones included
(they get their stats and contribute nothing to the loss or the gradients).

backends: "chunked" (the row kernel in PyTorch; the CPU memory-saving path) and "triton" (the row
kernel in Triton: one program per row, online logsumexp over vocab blocks, then the gradient
written in place). Under ZeRO-3 the caller gathers the LM-head weight around the call
(`deepspeed.zero.GatheredParameters`), the same as for a plain matmul.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from chunksft.ops import _cpp
from chunksft.ops._backend import register_cpp, resolve_backend
from chunksft.ops._triton import kernel, lazy_jit

REDUCTIONS = ("mean", "sum", "none")


class LinearCEStats(NamedTuple):
    """Per-row statistics of the logits (no grad). ce: fp32 [N], logsumexp(logits_i) - logits_i[target_i],
    unweighted; argmax: int64 [N], the first index of the row's largest logit (torch.argmax's rule).
    Rows whose target is ignore_index have ce 0 and argmax -1 (their logits are not computed)."""

    ce: torch.Tensor
    argmax: torch.Tensor


def _row_weights(targets: torch.Tensor, token_weights: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """fp32 [N]: token weight (1 by default), 0 on ignored targets."""
    keep = targets != ignore_index
    weights = torch.ones_like(targets, dtype=torch.float32) if token_weights is None else token_weights.float()
    return torch.where(keep, weights, torch.zeros_like(weights))


def linear_cross_entropy_eager(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                               token_weights: torch.Tensor | None = None, ignore_index: int = -100,
                               reduction: str = "mean", return_stats: bool = False):
    """Reference: fp32 logits + cross-entropy, weighted per token.

    hidden: [N, H] (any float dtype); weight: [V, H]; targets: int64 [N]; token_weights: optional float [N].
    ce_i = logsumexp(logits_i) - logits_i[target_i], w_i = token_weights_i (1 if None), 0 where ignored.
    reduction "none": fp32 [N] w_i * ce_i; "sum": sum_i w_i ce_i; "mean": sum_i w_i ce_i / sum_i w_i
    (the weighted mean over non-ignored tokens; NaN when no token counts, like F.cross_entropy).
    return_stats: also return `LinearCEStats` (ce_i where not ignored else 0, logits_i.argmax() where
    not ignored else -1), as `(loss, stats)`.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    logits = hidden.float() @ weight.float().T
    keep = targets != ignore_index
    ce = F.cross_entropy(logits, targets.masked_fill(~keep, 0), reduction="none")
    weights = _row_weights(targets, token_weights, ignore_index)
    loss = ce * weights
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / weights.sum()
    if not return_stats:
        return loss
    stats = LinearCEStats(torch.where(keep, ce.detach(), 0.0), logits.detach().argmax(dim=-1).masked_fill(~keep, -1))
    return loss, stats


# ----------------------------------------------------------------------------------------------
# Row kernels: logits [rows, V] fp32 -> (ce fp32 [rows], argmax int64 [rows]); with coef, the logits
# become coef * (softmax - onehot)
# ----------------------------------------------------------------------------------------------

def _row_ce_torch(logits: torch.Tensor, targets: torch.Tensor, coef: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    lse = torch.logsumexp(logits, dim=1)
    ce = lse - logits.gather(1, targets[:, None])[:, 0]
    argmax = logits.argmax(dim=1)
    if coef is not None:
        logits.sub_(lse[:, None]).exp_()
        logits[torch.arange(logits.shape[0], device=logits.device), targets] -= 1.0
        logits.mul_(coef[:, None])
    return ce, argmax


@lazy_jit
def _row_ce_kernel(LOGITS, stride_row, TARGETS, COEF, CE, ARGMAX, V, HAS_GRAD: tl.constexpr,
                   BLOCK_V: tl.constexpr):
    """One row per program: pass 1 = online logsumexp and argmax over vocab blocks (per-lane running
    max / sum / index of the lane's first max, so no reduction inside the loop; the row's argmax is the
    lowest index holding the row max, torch.argmax's tie rule); pass 2 (HAS_GRAD) = gradient written
    over the logits."""
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    target = tl.load(TARGETS + row)
    offs = tl.arange(0, BLOCK_V)
    # Finite start: lanes past V read -inf and give exp(-inf - m) = 0 rather than NaN.
    run_max = tl.full([BLOCK_V], -1.0e30, dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_V], dtype=tl.float32)
    run_idx = tl.zeros([BLOCK_V], dtype=tl.int32)
    for start in range(0, V, BLOCK_V):
        x = tl.load(base + start + offs, mask=start + offs < V, other=float("-inf"))
        run_idx = tl.where(x > run_max, start + offs, run_idx)  # strict: a lane keeps its first max
        new_max = tl.maximum(run_max, x)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.exp(x - new_max)
        run_max = new_max
    row_max = tl.max(run_max, axis=0)
    lse = row_max + tl.log(tl.sum(run_sum * tl.exp(run_max - row_max), axis=0))
    tl.store(CE + row, lse - tl.load(base + target))
    tl.store(ARGMAX + row, tl.min(tl.where(run_max == row_max, run_idx, V), axis=0).to(tl.int64))
    if HAS_GRAD:
        coef = tl.load(COEF + row)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            x = tl.load(base + cols, mask=cols < V, other=0.0)
            grad = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
            tl.store(base + cols, grad * coef, mask=cols < V)


ROW_KERNEL_CONFIG = dict(BLOCK_V=4096, num_warps=8, num_stages=1)


def _row_ce_triton(logits: torch.Tensor, targets: torch.Tensor, coef: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    ce = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    argmax = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    if logits.shape[0] == 0:
        return ce, argmax
    kernel(_row_ce_kernel)[(logits.shape[0],)](
        logits, logits.stride(0), targets, coef if coef is not None else ce, ce, argmax, logits.shape[1],
        HAS_GRAD=coef is not None, **ROW_KERNEL_CONFIG)
    return ce, argmax


def aot_specs() -> list[dict]:
    """The row kernel configs the dispatcher can launch (forward-only and with gradient)."""
    fn = kernel(_row_ce_kernel)
    signature = {"LOGITS": "*fp32", "stride_row": "i32", "TARGETS": "*i64", "COEF": "*fp32", "CE": "*fp32", "ARGMAX": "*i64",
                 "V": "i32"}
    return [dict(name=f"linear_cross_entropy.row_ce[grad={grad}]", fn=fn, signature=signature,
                 constexprs=dict(HAS_GRAD=grad, BLOCK_V=ROW_KERNEL_CONFIG["BLOCK_V"]),
                 num_warps=ROW_KERNEL_CONFIG["num_warps"], num_stages=ROW_KERNEL_CONFIG["num_stages"])
            for grad in (False, True)]


# ----------------------------------------------------------------------------------------------
# Row-blocked driver and autograd Function
# ----------------------------------------------------------------------------------------------
RowKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
# A backend's whole blocked pass: (hidden, weight, targets, rows, coef or None, block) -> (ce, argmax,
# grad_hidden, grad_weight), the contract of `_blocked` (PyTorch / Triton rows) and of the C++ kernel
# `linear_cross_entropy_blocked` (csrc/linear_cross_entropy.cpp).
BlockedKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, int],
                         tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]]


def rows_per_block(vocab: int, budget_elements: int = 1 << 25) -> int:
    """Rows whose fp32 logits fit in `budget_elements` (128 MB by default), at least 16. Each block
    costs one read-modify-write pass over the [V, H] fp32 weight gradient, so blocks are not smaller."""
    return max(16, budget_elements // max(vocab, 1))


def _matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with fp32 accumulation and fp32 output (half-precision inputs keep their tensor-core path on CUDA)."""
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return a @ b
    if a.is_cuda and a.dtype == b.dtype:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


def _blocked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
             coef: torch.Tensor | None, block: int, *, row_kernel: RowKernel
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """ce (fp32 [len(rows)]) and argmax (int64 [len(rows)]) of `rows` and, with coef (fp32 [len(rows)]),
    d(sum coef*ce) w.r.t. hidden / weight."""
    ce = torch.empty(rows.numel(), dtype=torch.float32, device=hidden.device)
    argmax = torch.empty(rows.numel(), dtype=torch.int64, device=hidden.device)
    grad_hidden = grad_weight = None
    if coef is not None:
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    # Half-precision weights on CPU have no fp32-output matmul: upcast once per call, not per block.
    w = weight.float() if (not weight.is_cuda and weight.dtype != torch.float32) else weight
    for start in range(0, rows.numel(), block):
        idx = rows[start:start + block]
        h = hidden[idx]
        h_mm = h.to(w.dtype)
        logits = _matmul_fp32(h_mm, w.T)
        ce[start:start + block], argmax[start:start + block] = row_kernel(
            logits, targets[idx], None if coef is None else coef[start:start + block])
        if coef is not None:
            grad_logits = logits if w.dtype == torch.float32 else logits.to(w.dtype)
            grad_hidden[idx] = _matmul_fp32(grad_logits, w).to(hidden.dtype)
            if grad_logits.dtype == torch.float32:
                grad_weight.addmm_(grad_logits.T, h_mm)  # in place: no [V, H] temporary per block
            else:
                grad_weight += _matmul_fp32(grad_logits.T, h_mm)
    return ce, argmax, grad_hidden, grad_weight


def _select_rows(targets: torch.Tensor, token_weights: torch.Tensor | None, ignore_index: int, return_stats: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a blocked backend walks -> (weights fp32 [N] (`_row_weights`), loss_rows int64 (weight != 0),
    rows int64 (the rows to compute: loss_rows, or every non-ignored row with return_stats), safe
    targets int64 [N] (0 on ignored rows)). One host sync per nonzero()."""
    weights = _row_weights(targets, token_weights, ignore_index)
    keep = targets != ignore_index
    loss_rows = (weights != 0).nonzero(as_tuple=True)[0]
    rows = keep.nonzero(as_tuple=True)[0] if return_stats else loss_rows
    return weights, loss_rows, rows, targets.long().masked_fill(~keep, 0)


def _scatter_stats(n: int, rows: torch.Tensor, ce: torch.Tensor, argmax: torch.Tensor) -> LinearCEStats:
    """Per-row results of `rows` -> `LinearCEStats` over all n rows (ce 0 / argmax -1 elsewhere)."""
    full_ce = torch.zeros(n, dtype=torch.float32, device=ce.device)
    full_argmax = torch.full((n,), -1, dtype=torch.int64, device=argmax.device)
    return LinearCEStats(full_ce.index_put_((rows,), ce), full_argmax.index_put_((rows,), argmax))


class LinearCrossEntropyFunction(torch.autograd.Function):
    """-> (loss, stats ce fp32 [N], stats argmax int64 [N]); the stats are non-differentiable. Every
    backend's autograd: `blocked` is its kernel. For "mean" / "sum" the gradients come out of the
    forward pass (logits computed once; grad_output, a scalar, is applied in backward); "none"
    recomputes them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, ignore_index: int, reduction: str,
                blocked: BlockedKernel, block: int, return_stats: bool):
        # Only rows that carry a loss (and, for the stats, zero-weight rows) are touched.
        weights, loss_rows, rows, safe_targets = _select_rows(targets, token_weights, ignore_index, return_stats)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        denom = weights.sum() if reduction == "mean" else torch.ones((), device=hidden.device)
        coef = None
        if need_grad and reduction != "none":
            coef = weights[rows] / denom
        ce, argmax, grad_hidden, grad_weight = blocked(hidden, weight, safe_targets, rows, coef, block)
        stats = _scatter_stats(hidden.shape[0], rows, ce, argmax)
        ctx.mark_non_differentiable(*stats)
        per_row = stats.ce * weights
        ctx.reduction, ctx.blocked, ctx.block, ctx.weight_dtype = reduction, blocked, block, weight.dtype
        if reduction == "none":
            ctx.save_for_backward(hidden, weight, safe_targets, weights, loss_rows)
            return per_row, *stats
        ctx.save_for_backward(grad_hidden, grad_weight)
        total = per_row.sum()
        return total if reduction == "sum" else total / denom, *stats

    @staticmethod
    def backward(ctx, grad_out, _grad_ce, _grad_argmax):
        if ctx.reduction == "none":
            hidden, weight, targets, weights, rows = ctx.saved_tensors
            coef = (grad_out.float() * weights)[rows]
            _, _, grad_hidden, grad_weight = ctx.blocked(hidden, weight, targets, rows, coef, ctx.block)
        else:
            grad_hidden, grad_weight = ctx.saved_tensors
            # Scaled in place: a [V, H] fp32 copy would double the memory this path saves. (A second
            # backward through the same graph then fails loudly on the saved tensors' version.)
            grad_hidden = grad_hidden.mul_(grad_out.to(grad_hidden.dtype))
            grad_weight = grad_weight.mul_(grad_out.float())
        return grad_hidden, grad_weight.to(ctx.weight_dtype), None, None, None, None, None, None, None


def _apply_blocked(hidden, weight, targets, token_weights, ignore_index, reduction, blocked, block, return_stats):
    loss, ce, argmax = LinearCrossEntropyFunction.apply(hidden, weight, targets, token_weights, ignore_index,
                                                        reduction, blocked, block, return_stats)
    return (loss, LinearCEStats(ce, argmax)) if return_stats else loss


def linear_cross_entropy_fused(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                               token_weights: torch.Tensor | None = None, ignore_index: int = -100,
                               reduction: str = "mean", row_kernel: str = "torch",
                               block: int | None = None, return_stats: bool = False):
    """Row-blocked linear cross-entropy (see the module docstring); same contract as the eager reference.

    row_kernel: "torch" (backend "chunked") or "triton". block: rows per block (default `rows_per_block(V)`).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    blocked = partial(_blocked, row_kernel=_row_ce_triton if row_kernel == "triton" else _row_ce_torch)
    return _apply_blocked(hidden, weight, targets, token_weights, ignore_index, reduction, blocked,
                          block or rows_per_block(weight.shape[0]), return_stats)


# The C++ row pass works in place, so its peak is the logits block itself (the PyTorch row kernel
# also allocates temporaries of the block's size): it takes blocks twice as large, which halves the
# passes over the [V, H] weight gradient (622 MB at V = 151936, H = 1024). With 128 MB blocks those
# passes made it 0.92x eager's speed at N = 2048; benchmarks/README.md, linear_cross_entropy_cpu.
CPP_BLOCK_ELEMENTS = 1 << 26


def linear_cross_entropy_cpp(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                             token_weights: torch.Tensor | None = None, ignore_index: int = -100,
                             reduction: str = "mean", return_stats: bool = False):
    """`linear_cross_entropy` on the C++ kernel (csrc/linear_cross_entropy.cpp); the eager reference
    when the extension is unavailable. Same contract as the eager reference."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    ext = _cpp.load()
    if ext is None:
        return linear_cross_entropy_eager(hidden, weight, targets, token_weights=token_weights,
                                          ignore_index=ignore_index, reduction=reduction, return_stats=return_stats)
    return _apply_blocked(hidden, weight, targets, token_weights, ignore_index, reduction,
                          ext.linear_cross_entropy_blocked,
                          rows_per_block(weight.shape[0], budget_elements=CPP_BLOCK_ELEMENTS), return_stats)


register_cpp("linear_cross_entropy")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         token_weights: torch.Tensor | None = None, ignore_index: int = -100,
                         reduction: str = "mean", backend: str = "auto", return_stats: bool = False):
    """Cross-entropy of `hidden @ weight.T` (docs/design.md §2.1). Contract: `linear_cross_entropy_eager`.

    backend: "auto" (triton on CUDA, cpp on CPU when built, else eager), "eager", "triton", "cpp", or
    "chunked" (row-blocked PyTorch: the reference's result without the [N, V] logits; the memory-saving
    choice on CPU). Gradients flow to hidden and weight (not to token_weights).
    return_stats: return `(loss, LinearCEStats)`, the stats from the same pass over the logits.
    """
    resolved = resolve_backend("linear_cross_entropy", backend, hidden.device, extra=("chunked",))
    kwargs = dict(token_weights=token_weights, ignore_index=ignore_index, reduction=reduction,
                  return_stats=return_stats)
    if resolved == "eager":
        return linear_cross_entropy_eager(hidden, weight, targets, **kwargs)
    if resolved == "cpp":
        return linear_cross_entropy_cpp(hidden, weight, targets, **kwargs)
    return linear_cross_entropy_fused(hidden, weight, targets, row_kernel="triton" if resolved == "triton" else "torch",
                                      **kwargs)
