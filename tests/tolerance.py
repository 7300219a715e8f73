"""The one tolerance rule of the test suite: a fused / backend result against its reference.

Hand-set `rtol` / `atol` per test encode the rounding of the machine they were tuned on (its BLAS
kernels, vector width, FMA use, thread count), so they break on another CPU (issue 11). Instead,
every numeric comparison of a fused path with its reference measures how accurate plain PyTorch is
on the same problem, on this machine, and allows the fused path a small multiple of that:

    reference = the eager reference run on float64 copies of the inputs (the exact function, to
                ~1e-16, of the values the tested path saw)
    err(x)    = max |x - reference| over the tensor, computed in float64
    bound     = FACTOR * err(eager at the tested precision) + FLOOR_ULPS * ulp(max |reference|)
    check     err(actual) <= bound

"eager at the tested precision" is the same eager PyTorch computation on the same inputs in the
tested dtype (fp32 inputs: fp32; half inputs: the half inputs), so its error is the rounding that
precision costs on this machine. This is the rule FlashAttention's tests use (factor 2 there).

FACTOR = 3. A fused kernel computes the same sums as PyTorch in another order: online softmax with
one extra rescale per key block, dot products split over SIMD lanes of another width (AVX2 8 lanes,
AVX-512 16, MKL's own blocking), partial sums of a thread-count-dependent split added at the end
(the C++ attention backward's dK / dV). With random-sign rounding errors a length-n sum's error grows
like sqrt(n / lanes) plus one rounding per extra combination step, so two orders of the same sum
differ in typical error by a factor ~1-1.5 and the max over a tensor by a little more. Measured on
this suite (AMD EPYC, AVX2, 1 and 2 threads): the largest ratio err(fused) / err(eager) where the
floor does not dominate is 1.77, most are 0.5-1.3. FlashAttention's 2 would leave ~13% margin over
that on one machine, with none for another CPU's baseline landing on the lucky side; 3 leaves 1.7x.
A real accuracy loss is larger: 8 ulp of systematic scaling (out * (1 + 1e-6)) already fails the
attention tests, a bf16- or fp16-rounded operand is hundreds of times over the bound, and the only
genuine one seen so far, MKL's small-row-count GEMM path in the blocked linear CE (issue 11), is 4-16x (see
tests/ops/references.py for how its baseline is formed). 4 would start to admit a kernel that has
lost a bit for a real reason.

FLOOR_ULPS = 2: the absolute floor, the same for every element of the tensor, is 2 units in the last
place of the output dtype at the tensor's largest magnitude (ulp(max |reference|)). It matters only
where the eager error is tiny by luck: a scalar loss that eager happens to round almost exactly (the
one-pass chunk_sft loss: eager 0.14 ulp, one pass 1.1 ulp), a one-element max. A correct fused result
is within 0.5 ulp (its own output rounding) + ~1 ulp (another summation order) there. Where the eager
error is normal the floor is a small part of the bound (median 11%, at most a third on this suite).

Sanity of the baseline: the eager result at the tested precision must itself agree with the fp64
reference to half the dtype's digits (err <= sqrt(eps) * max |reference|). A mismatched fp64
reference (another formula, another layout) would otherwise inflate the bound and let anything pass.

Exact comparisons (masks, ids, counters, a backend against itself) stay `torch.equal`; this module is
for floating-point results only.

Every comparison is printed (`pytest -s` shows them) and, when $CHUNKSFT_TOLERANCE_LOG names a file,
appended to it as one JSON line (test id, name, dtype, measured error, eager error, bound).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import torch

FACTOR = 3.0
FLOOR_ULPS = 2.0
LOG_ENV = "CHUNKSFT_TOLERANCE_LOG"


@dataclass
class Comparison:
    test: str
    name: str
    dtype: str
    numel: int
    err: float        # max |actual - reference|
    eager_err: float  # max |eager - reference|
    scale: float      # max |reference|
    floor: float
    bound: float

    @property
    def ratio(self) -> float:
        """err / eager_err: how many times the eager error the tested path needs (inf if eager is exact)."""
        return self.err / self.eager_err if self.eager_err > 0 else (0.0 if self.err == 0 else math.inf)

    def line(self) -> str:
        return (f"{self.name}: err {self.err:.4e} <= bound {self.bound:.4e} (= {FACTOR:g} x eager err "
                f"{self.eager_err:.4e} + floor {self.floor:.2e}; max|ref| {self.scale:.3e}, {self.dtype}, "
                f"ratio {self.ratio:.2f})")


def ulp(x: float, dtype: torch.dtype) -> float:
    """The spacing of `dtype` numbers at magnitude x (x's binade; 0 for x == 0)."""
    if x == 0:
        return 0.0
    _, exponent = math.frexp(x)  # x = m * 2**exponent, 0.5 <= m < 1
    return math.ldexp(torch.finfo(dtype).eps, exponent - 1)


def _max_abs(x: torch.Tensor, reference: torch.Tensor, finite: torch.Tensor) -> float:
    diff = (x.detach().double() - reference)[finite]
    return diff.abs().max().item() if diff.numel() else 0.0


def measure(name: str, actual: torch.Tensor, eager: torch.Tensor, reference: torch.Tensor) -> Comparison:
    """The numbers of the rule for one tensor (no assertion about the bound; see `assert_close_to_reference`)."""
    assert actual.shape == eager.shape == reference.shape, \
        (f"{name}: shapes differ: actual {tuple(actual.shape)}, eager {tuple(eager.shape)}, "
         f"reference {tuple(reference.shape)}")
    assert actual.dtype == eager.dtype and actual.is_floating_point(), \
        f"{name}: the eager baseline must run at the tested precision ({actual.dtype}), got {eager.dtype}"
    assert reference.dtype == torch.float64, f"{name}: the reference must be float64, got {reference.dtype}"
    ref = reference.detach()
    finite = ref.isfinite()
    for label, x in (("actual", actual), ("eager", eager)):
        x = x.detach().double()
        assert torch.equal(x.isfinite(), finite) and torch.equal(x[~finite], ref[~finite]), \
            f"{name}: {label} has non-finite values where the fp64 reference has not (or the other way round)"
    scale = ref[finite].abs().max().item() if finite.any() else 0.0
    eps = torch.finfo(actual.dtype).eps
    err, eager_err = _max_abs(actual, ref, finite), _max_abs(eager, ref, finite)
    assert eager_err <= math.sqrt(eps) * scale, \
        (f"{name}: the eager {actual.dtype} baseline is {eager_err:.3e} from the fp64 reference (max|ref| "
         f"{scale:.3e}): the reference does not compute the same function")
    floor = FLOOR_ULPS * ulp(scale, actual.dtype)
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    return Comparison(test, name, str(actual.dtype).replace("torch.", ""), actual.numel(), err, eager_err, scale,
                      floor, FACTOR * eager_err + floor)


def assert_close_to_reference(name: str, actual: torch.Tensor, eager: torch.Tensor,
                              reference: torch.Tensor) -> Comparison:
    """Assert the rule of this module for one tensor (FACTOR and FLOOR_ULPS are not per-test knobs).

    name: what is compared (in the message); actual: the tested result; eager: the eager reference's
    result on the same inputs at the tested precision (same dtype as actual); reference: the eager
    reference on float64 copies of the inputs. Returns the measured `Comparison`.
    """
    result = measure(name, actual, eager, reference)
    print(result.line())
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dict(asdict(result), ratio=result.ratio)) + "\n")
    assert result.err <= result.bound, f"{result.line().replace(' <= ', ' > ')}: exceeds the tolerance rule"
    return result


def fp64(*tensors: torch.Tensor, requires_grad: bool = False) -> list[torch.Tensor]:
    """float64 copies of the inputs (detached; optionally leaves that require grad)."""
    return [t.detach().double().requires_grad_(requires_grad) for t in tensors]
