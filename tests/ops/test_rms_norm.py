"""C++ RMSNorm (csrc/rms_norm.cpp) == the eager reference under the tolerance rule (tests/tolerance.py):
the output and the gradients of x and weight, on awkward shapes (odd widths, one row, 3-D inputs, a
non-contiguous input, rows with very different scales); other dtypes and "auto" dispatch."""
import pytest
import torch

from chunksft.ops._backend import resolve_backend
from chunksft.ops.rms_norm import rms_norm, rms_norm_eager
from tests.ops.cpp_support import require_cpp
from tests.tolerance import assert_close_to_reference, fp64


@pytest.fixture(scope="module", autouse=True)
def extension():
    return require_cpp()


def problem(shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    x = x * torch.exp(2 * torch.randn(*shape[:-1], 1, generator=gen))  # row scales over ~e^+-4
    weight = 1 + 0.5 * torch.randn(shape[-1], generator=gen)
    grad = torch.randn(shape, generator=gen)
    return x.to(dtype), weight.to(dtype), grad.to(dtype)


def check_against_eager(x, weight, grad, eps, view=lambda t: t):
    """The C++ output and both gradients against eager fp32, with the fp64 reference; the op sees
    view(x) and the gradient w.r.t. x is taken through the view."""
    x1, w1 = x.clone().requires_grad_(), weight.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), weight.clone().requires_grad_()
    x3, w3 = fp64(x, weight, requires_grad=True)
    out = rms_norm(view(x1), w1, eps, backend="cpp")
    ref = rms_norm_eager(view(x2), w2, eps)
    ref64 = rms_norm_eager(view(x3), w3, eps)
    assert out.dtype == torch.float32 and out.shape == view(x).shape
    assert_close_to_reference("y", out, ref, ref64)
    grads = zip(("x", "weight"), torch.autograd.grad(out, (x1, w1), grad), torch.autograd.grad(ref, (x2, w2), grad),
                torch.autograd.grad(ref64, (x3, w3), grad.double()))
    for label, a, b, c in grads:
        assert_close_to_reference(f"d{label}", a, b, c)


# (700, 160): more rows than one parallel task holds (row_grain), so with 2+ threads the weight
# gradient is summed from per-thread partials.
@pytest.mark.parametrize("shape", [(288, 128), (1, 7), (3, 5, 67), (2, 9, 256), (33, 1), (700, 160)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matches_eager(shape):
    check_against_eager(*problem(shape), eps=1e-6)


def test_non_contiguous_input_and_large_eps():
    x, _, _ = problem((48, 80), seed=1)
    _, weight, grad = problem((48, 40), seed=2)

    def every_other_column(t):  # a strided view [48, 40]
        assert not t[:, ::2].is_contiguous()
        return t[:, ::2]

    check_against_eager(x, weight, grad.t().contiguous().t(), eps=0.5, view=every_other_column)


def test_frozen_weight_gets_no_gradient():
    x, weight, grad = problem((10, 16), seed=2)
    x1 = x.clone().requires_grad_()
    out = rms_norm(x1, weight, 1e-6, backend="cpp")
    out.backward(grad)
    assert weight.grad is None and x1.grad is not None


def test_other_dtypes_run_the_reference_and_auto_picks_cpp():
    assert resolve_backend("rms_norm", "auto", torch.device("cpu")) == "cpp"
    x, weight, _ = problem((6, 24), seed=3, dtype=torch.bfloat16)
    assert torch.equal(rms_norm(x, weight, 1e-6), rms_norm_eager(x, weight, 1e-6))
    x64, w64 = fp64(x, weight)
    assert torch.equal(rms_norm(x64, w64, 1e-6, backend="cpp"), rms_norm_eager(x64, w64, 1e-6))
