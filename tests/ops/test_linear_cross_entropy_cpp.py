"""C++ fused linear cross-entropy (csrc/linear_cross_entropy.cpp) == the eager reference under the
tolerance rule (tests/tolerance.py): loss and the gradients of hidden and weight, every reduction,
per-token weights, ignore_index, vocab > 64k, several row blocks with a partial last one, with and
without `return_stats`; the stats (per-row CE under the rule, argmax exactly, ties included) against the
eager reference's."""
import importlib

import pytest
import torch

from chunksft.ops._backend import resolve_backend
from chunksft.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_eager
from tests.ops.cases import lce_problem
from tests.ops.cpp_support import require_cpp
from tests.ops.references import (assert_stats_match_eager, linear_cross_entropy_eager_blocked,
                                  linear_cross_entropy_fp64, tied_linear_ce_problem)
from tests.tolerance import assert_close_to_reference, fp64

# The op's module (chunksft.ops re-exports a function of the same name).
lce = importlib.import_module("chunksft.ops.linear_cross_entropy")


@pytest.fixture(scope="module", autouse=True)
def extension():
    return require_cpp()


@pytest.mark.parametrize("return_stats", [False, True], ids=["loss", "stats"])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("block", [8, None], ids=["block8", "one_block"])
def test_matches_eager_fp32(reduction, weighted, block, return_stats, monkeypatch):
    hidden, weight, targets, token_weights = lce_problem()
    token_weights = token_weights if weighted else None
    if block is not None:
        # 8 rows per block: three blocks over the 17 (18) rows that carry a loss, the last one partial.
        monkeypatch.setattr(lce, "rows_per_block", lambda vocab, **_: block)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h3, w3 = fp64(hidden, weight, requires_grad=True)
    out = linear_cross_entropy(h1, w1, targets, token_weights=token_weights, reduction=reduction, backend="cpp",
                               return_stats=return_stats)
    # The baseline: eager at fp32 on the kernel's row blocks (the same GEMM shapes; see references.py).
    # One block (the default rows_per_block here): the plain eager reference on the rows that carry a loss.
    ref = linear_cross_entropy_eager_blocked(h2, w2, targets, block=block or hidden.shape[0],
                                             token_weights=token_weights, reduction=reduction,
                                             return_stats=return_stats)
    if return_stats:
        out, stats = out
        assert_stats_match_eager(stats, hidden, weight, targets, block or hidden.shape[0])
    ref64 = linear_cross_entropy_fp64(h3, w3, targets, token_weights=token_weights, reduction=reduction)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert_close_to_reference("loss", out, ref, ref64)
    grad = torch.rand(out.shape, generator=torch.Generator().manual_seed(2)) + 0.5
    g1 = torch.autograd.grad(out, (h1, w1), grad)
    g2 = torch.autograd.grad(ref, (h2, w2), grad)
    g3 = torch.autograd.grad(ref64, (h3, w3), grad.double())
    for label, a, b, c in zip(("hidden", "weight"), g1, g2, g3):
        assert_close_to_reference(f"d{label}", a, b, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stats_argmax_ties_take_the_first_index(dtype, monkeypatch):
    monkeypatch.setattr(lce, "rows_per_block", lambda vocab, **_: 3)
    hidden, weight, targets, ties = tied_linear_ce_problem(dtype)
    _, eager = linear_cross_entropy_eager(hidden, weight, targets, return_stats=True)
    _, stats = linear_cross_entropy(hidden, weight, targets, backend="cpp", return_stats=True)
    for row, (low, _) in ties.items():
        assert eager.argmax[row] == low, "torch.argmax returns the first maximal index"
    assert torch.equal(stats.argmax, eager.argmax)


def test_bf16_inputs():
    hidden, weight, targets, _ = lce_problem(vocab=5003, dtype=torch.bfloat16)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h3, w3 = fp64(hidden, weight, requires_grad=True)
    out, stats = linear_cross_entropy(h1, w1, targets, backend="cpp", return_stats=True)
    assert_stats_match_eager(stats, hidden, weight, targets, hidden.shape[0])
    ref = linear_cross_entropy_eager(h2, w2, targets)
    ref64 = linear_cross_entropy_fp64(h3, w3, targets)
    assert_close_to_reference("loss", out, ref, ref64)
    grads = zip(("hidden", "weight"), torch.autograd.grad(out, (h1, w1)), torch.autograd.grad(ref, (h2, w2)),
                torch.autograd.grad(ref64, (h3, w3)))
    for label, a, b, c in grads:
        assert a.dtype == torch.bfloat16
        assert_close_to_reference(f"d{label}", a, b, c)


def test_auto_and_no_loss_rows():
    hidden, weight, targets, _ = lce_problem(n=6, vocab=300)
    assert resolve_backend("linear_cross_entropy", "auto", hidden.device) == "cpp"
    assert_close_to_reference("loss (auto)", linear_cross_entropy(hidden, weight, targets),
                              linear_cross_entropy_eager(hidden, weight, targets),
                              linear_cross_entropy_fp64(*fp64(hidden, weight), targets))
    none = torch.full_like(targets, -100)
    h = hidden.clone().requires_grad_()
    loss = linear_cross_entropy(h, weight, none, reduction="sum", backend="cpp")
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().sum() == 0
