"""float64 references for the tolerance rule (tests/tolerance.py) where an eager reference cannot run
in float64 itself."""
import torch
import torch.nn.functional as F

from chunksft.ops.linear_cross_entropy import linear_cross_entropy_eager


def linear_cross_entropy_fp64(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                              token_weights: torch.Tensor | None = None, ignore_index: int = -100,
                              reduction: str = "mean") -> torch.Tensor:
    """`linear_cross_entropy_eager`'s formula (its docstring) in float64.

    The eager reference computes fp32 logits by contract (`hidden.float()`), so run on float64 copies
    it would still round in fp32; this is the same formula with every step in float64. The tolerance
    rule's baseline check (eager fp32 within sqrt(eps) of this) guards it against drifting from the
    eager formula.
    """
    assert hidden.dtype == weight.dtype == torch.float64
    keep = targets != ignore_index
    logits = hidden @ weight.T
    ce = F.cross_entropy(logits, targets.masked_fill(~keep, 0), reduction="none")
    weights = torch.ones_like(ce) if token_weights is None else token_weights.double()
    loss = ce * torch.where(keep, weights, torch.zeros_like(weights))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / torch.where(keep, weights, torch.zeros_like(weights)).sum()


def linear_cross_entropy_eager_blocked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                                       block: int, token_weights: torch.Tensor | None = None,
                                       ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """The eager reference run on the row blocks of a blocked kernel: the tolerance rule's baseline for it.

    The blocked kernels (C++, chunked PyTorch, Triton row kernel) split the rows that carry a loss
    (non-ignored, non-zero weight) into blocks of `block` and compute each block's hidden gradient as
    one [block, V] @ [V, H] GEMM, so that gradient is a length-V fp32 reduction whose accuracy the
    BLAS picks by the row count: MKL's path for a few rows is up to ~15x less accurate than its path
    for the whole batch (V = 65601, AMD EPYC / AVX2: 8-row blocks 9.0e-6, 1 row 6.9e-6, all 18 rows
    4.9e-7 max abs error of d hidden, the same with exact fp64 softmax inputs). That is the issue 11
    failure (`test_matches_eager_fp32[mean-False]`, 1.2e-5 relative on d hidden against a 1e-5 tuned
    on an Intel Xeon, whose MKL path differs). Eager at the tested precision on the same row blocks
    issues the same GEMM shapes, so its error is what fp32 costs for those shapes on this machine;
    its result is the eager reference's (per-row `linear_cross_entropy_eager`, summed / normalised as
    there). With one block it is the plain eager reference on the rows that carry a loss.
    """
    keep = targets != ignore_index
    weights = torch.ones(targets.shape, dtype=torch.float32) if token_weights is None else token_weights.float()
    weights = torch.where(keep, weights, torch.zeros_like(weights))
    rows = (weights != 0).nonzero(as_tuple=True)[0]
    per_row = torch.zeros(targets.shape, dtype=torch.float32)
    for idx in rows.split(block):
        part = linear_cross_entropy_eager(hidden[idx], weight, targets[idx], ignore_index=ignore_index,
                                          token_weights=None if token_weights is None else token_weights[idx],
                                          reduction="none")
        per_row = per_row.index_put((idx,), part)
    if reduction == "none":
        return per_row
    total = per_row.sum()
    return total if reduction == "sum" else total / weights.sum()
