"""Fused linear cross-entropy (Triton row kernel in the interpreter, and the chunked PyTorch path) ==
the eager reference under the tolerance rule (tests/tolerance.py): loss and the gradients of hidden and
weight, every reduction, with and without `return_stats`; the stats (per-row CE under the rule, argmax
exactly, ties included) against the eager reference's."""
import pytest
import torch

from chunksft.ops._backend import resolve_backend
from chunksft.ops.linear_cross_entropy import (linear_cross_entropy, linear_cross_entropy_eager,
                                               linear_cross_entropy_fused)
from tests.ops.cases import lce_problem
from tests.ops.references import (assert_stats_match_eager, linear_cross_entropy_eager_blocked,
                                  linear_cross_entropy_fp64, tied_linear_ce_problem)
from tests.tolerance import assert_close_to_reference, fp64

pytest.importorskip("triton")


@pytest.mark.parametrize("return_stats", [False, True], ids=["loss", "stats"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("row_kernel", ["triton", "torch"])
def test_matches_eager_fp32(reduction, row_kernel, return_stats):
    hidden, weight, targets, token_weights = lce_problem()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h3, w3 = fp64(hidden, weight, requires_grad=True)
    # block=8 rows: several row blocks, the last one partial. With stats the zero-weight row is walked too.
    out = linear_cross_entropy_fused(h1, w1, targets, token_weights=token_weights, reduction=reduction,
                                     row_kernel=row_kernel, block=8, return_stats=return_stats)
    if return_stats:
        out, stats = out
        assert not stats.ce.requires_grad and stats.argmax.dtype == torch.int64
    # The baseline: eager at fp32 on the same row blocks (the same GEMM shapes; see references.py).
    ref = linear_cross_entropy_eager_blocked(h2, w2, targets, block=8, token_weights=token_weights,
                                             reduction=reduction, return_stats=return_stats)
    ref64 = linear_cross_entropy_fp64(h3, w3, targets, token_weights=token_weights, reduction=reduction)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert_close_to_reference("loss", out, ref, ref64)
    grad = torch.rand(ref.shape, generator=torch.Generator().manual_seed(3)) if reduction == "none" else torch.tensor(0.7)
    (out * grad).sum().backward()
    (ref * grad).sum().backward()
    (ref64 * grad.double()).sum().backward()
    assert_close_to_reference("dhidden", h1.grad, h2.grad, h3.grad)
    assert_close_to_reference("dweight", w1.grad, w2.grad, w3.grad)
    assert h1.grad[[2, 4, 5, 20]].abs().sum() == 0, "ignored and zero-weight rows get no gradient"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("row_kernel", ["triton", "torch"])
def test_stats_match_eager(row_kernel, reduction, dtype):
    # n=21 (odd), V > 64k, ignored rows, a zero-weight row (row 4: it still gets its stats).
    hidden, weight, targets, token_weights = lce_problem(dtype=dtype)
    h = hidden.clone().requires_grad_()
    loss, stats = linear_cross_entropy_fused(h, weight, targets, token_weights=token_weights, reduction=reduction,
                                             row_kernel=row_kernel, block=8, return_stats=True)
    assert_stats_match_eager(stats, hidden, weight, targets, block=8)
    loss.sum().backward()  # the stats do not take part in the gradient
    _, eager_stats = linear_cross_entropy_eager(hidden, weight, targets, token_weights=token_weights,
                                                reduction=reduction, return_stats=True)
    assert torch.equal(eager_stats.argmax[targets == -100], stats.argmax[targets == -100])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("row_kernel", ["triton", "torch"])
def test_stats_argmax_ties_take_the_first_index(row_kernel, dtype):
    hidden, weight, targets, ties = tied_linear_ce_problem(dtype)
    _, eager = linear_cross_entropy_eager(hidden, weight, targets, return_stats=True)
    _, stats = linear_cross_entropy_fused(hidden, weight, targets, row_kernel=row_kernel, block=3, return_stats=True)
    for row, (low, _) in ties.items():
        assert eager.argmax[row] == low, "torch.argmax returns the first maximal index"
    assert torch.equal(stats.argmax, eager.argmax)


def test_half_precision_inputs():
    hidden, weight, targets, token_weights = lce_problem(n=9, vocab=5000, dtype=torch.float16)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h3, w3 = fp64(hidden, weight, requires_grad=True)
    out = linear_cross_entropy_fused(h1, w1, targets, token_weights=token_weights, row_kernel="triton")
    # Eager at the tested precision: the same fp16 inputs (the reference computes fp32 logits from them
    # and rounds the gradients to fp16, like the fused path).
    ref = linear_cross_entropy_eager(h2, w2, targets, token_weights=token_weights)
    ref64 = linear_cross_entropy_fp64(h3, w3, targets, token_weights=token_weights)
    out.backward()
    ref.backward()
    ref64.backward()
    assert h1.grad.dtype == torch.float16 and w1.grad.dtype == torch.float16
    assert_close_to_reference("loss", out, ref, ref64)
    assert_close_to_reference("dhidden", h1.grad, h2.grad, h3.grad)
    assert_close_to_reference("dweight", w1.grad, w2.grad, w3.grad)


def test_mean_is_weighted_mean_over_counted_tokens():
    hidden, weight, targets, token_weights = lce_problem(n=8, vocab=50)
    per_token = linear_cross_entropy_eager(hidden, weight, targets, token_weights=token_weights, reduction="none")
    counted = (targets != -100).float() * token_weights
    mean = linear_cross_entropy_eager(hidden, weight, targets, token_weights=token_weights)
    h64, w64 = fp64(hidden, weight)
    per_token64 = linear_cross_entropy_fp64(h64, w64, targets, token_weights=token_weights, reduction="none")
    # The tested value is the eager "mean"; the baseline the same formula spelled out at fp32.
    assert_close_to_reference("weighted mean", mean, per_token.sum() / counted.sum(),
                              per_token64.sum() / counted.double().sum())
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
    plain64 = torch.nn.functional.cross_entropy(h64 @ w64.T, targets)
    assert_close_to_reference("unweighted mean", linear_cross_entropy_eager(hidden, weight, targets), plain, plain64)


def test_dispatch(monkeypatch):
    hidden, weight, targets, token_weights = lce_problem(n=7, vocab=40)
    ref = linear_cross_entropy_eager(hidden, weight, targets)
    ref64 = linear_cross_entropy_fp64(*fp64(hidden, weight), targets)
    assert resolve_backend("linear_cross_entropy", "auto", hidden.device) in ("cpp", "eager")
    assert_close_to_reference("loss (auto)", linear_cross_entropy(hidden, weight, targets), ref, ref64)
    for backend in ("chunked", "triton"):
        assert_close_to_reference(f"loss ({backend})", linear_cross_entropy(hidden, weight, targets, backend=backend),
                                  ref, ref64)
        loss, stats = linear_cross_entropy(hidden, weight, targets, backend=backend, return_stats=True)
        assert_stats_match_eager(stats, hidden, weight, targets, block=hidden.shape[0])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        linear_cross_entropy(hidden, weight, targets, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        linear_cross_entropy(hidden, weight, targets, backend="fast")
