"""float64 references for the tolerance rule (tests/tolerance.py) where an eager reference cannot run
in float64 itself."""
import torch
import torch.nn.functional as F

from chunksft.ops.linear_cross_entropy import LinearCEStats, linear_cross_entropy_eager
from tests.tolerance import assert_close_to_reference, fp64


def linear_cross_entropy_fp64(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                              token_weights: torch.Tensor | None = None, ignore_index: int = -100,
                              reduction: str = "mean", return_stats: bool = False):
    """`linear_cross_entropy_eager`'s formula (its docstring) in float64; with `return_stats`,
    `(loss, LinearCEStats)` as the op returns them (ce in float64).

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
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / torch.where(keep, weights, torch.zeros_like(weights)).sum()
    if not return_stats:
        return loss
    stats = LinearCEStats(ce=torch.where(keep, ce, torch.zeros_like(ce)).detach(),
                          argmax=torch.where(keep, logits.argmax(dim=-1), torch.full_like(targets, -1)))
    return loss, stats


def linear_cross_entropy_eager_blocked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                                       block: int, token_weights: torch.Tensor | None = None,
                                       ignore_index: int = -100, reduction: str = "mean",
                                       return_stats: bool = False) -> torch.Tensor:
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
    return_stats: block the rows the kernels walk when asked for stats, every non-ignored row (zero-weight
    rows included); the result is still the loss only.
    """
    keep = targets != ignore_index
    weights = torch.ones(targets.shape, dtype=torch.float32) if token_weights is None else token_weights.float()
    weights = torch.where(keep, weights, torch.zeros_like(weights))
    rows = (keep if return_stats else weights != 0).nonzero(as_tuple=True)[0]
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


def tied_linear_ce_problem(dtype: torch.dtype = torch.float32, vocab: int = 65_601, hidden_size: int = 16):
    """Small-integer hidden / weight, so every logit is an exact integer in fp32 whatever the GEMM's
    summation order: ties are exact and argmax has one right answer, torch.argmax's first maximal index.

    Rows 0-2 get their maximum on an explicit tie, the two weight rows 2 * hidden_i (logit 2|h|^2 >
    sum|h| >= any other logit): the same Triton lane in two vocab blocks (100, 4196); a lower index in
    a later lane (4100 in lane 4, 8193 in lane 1); the first and the partial last vocab block (7,
    vocab - 1). The other rows tie naturally (many equal integer logits). Row 5 is ignored.
    -> (hidden [8, H], weight [V, H], targets int64 [8], {row: (low, high) tied indices}).
    """
    g = torch.Generator().manual_seed(4)
    hidden = torch.randint(-2, 3, (8, hidden_size), generator=g).float()
    hidden[:3, 0] = 2.0  # nonzero rows
    weight = torch.randint(-1, 2, (vocab, hidden_size), generator=g).float()
    ties = {0: (100, 4196), 1: (4100, 8193), 2: (7, vocab - 1)}
    for row, pair in ties.items():
        weight[list(pair)] = 2 * hidden[row]
    targets = torch.randint(0, vocab, (8,), generator=g)
    targets[5] = -100
    return hidden.to(dtype), weight.to(dtype), targets, ties


def assert_argmax_matches(name: str, argmax: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
                          targets: torch.Tensor, ignore_index: int = -100) -> None:
    """`LinearCEStats.argmax` against the eager reference's (fp32 logits' argmax), exactly, except on rows
    whose top two fp64 logits are within fp32 rounding of each other (`16 * eps * max|logit|`), where
    any index within that distance of the row max is accepted. Ignored rows must hold -1."""
    keep = targets != ignore_index
    assert argmax.dtype == torch.int64 and argmax.shape == targets.shape, name
    assert torch.equal(argmax[~keep], torch.full_like(argmax[~keep], -1)), f"{name}: ignored rows must hold -1"
    logits = hidden.double() @ weight.double().T
    eager = (hidden.float() @ weight.float().T).argmax(dim=-1)
    tol = 16 * torch.finfo(torch.float32).eps * logits.abs().amax(dim=-1)
    top2 = logits.topk(2, dim=-1).values
    near_tie = top2[:, 0] - top2[:, 1] <= tol
    exact = keep & ~near_tie
    assert torch.equal(argmax[exact], eager[exact]), f"{name}: argmax differs from eager on rows without a near tie"
    picked = logits.gather(1, argmax.clamp(min=0)[:, None])[:, 0]
    assert bool((picked >= top2[:, 0] - tol)[keep & near_tie].all()), f"{name}: near-tied row resolved off the top"


def assert_stats_match_eager(stats, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, block: int,
                             ignore_index: int = -100) -> None:
    """`LinearCEStats` of a blocked kernel == the eager reference's: ce fp32 under the tolerance rule (the
    baseline: eager, unweighted, on the kernel's row blocks of `block` rows), argmax
    (`assert_argmax_matches`), ce 0 on ignored rows; the stats carry no grad."""
    ignored = targets == ignore_index
    ref = linear_cross_entropy_eager_blocked(hidden, weight, targets, block=block, ignore_index=ignore_index,
                                             reduction="none")
    ref64 = linear_cross_entropy_fp64(*fp64(hidden, weight), targets, ignore_index=ignore_index, reduction="none")
    assert stats.ce.dtype == torch.float32 and not stats.ce.requires_grad
    assert torch.equal(stats.ce[ignored], torch.zeros(int(ignored.sum()))), "ignored rows must hold ce 0"
    assert_close_to_reference("stats ce", stats.ce, ref, ref64)
    assert_argmax_matches("stats argmax", stats.argmax, hidden, weight, targets, ignore_index)
