"""RMSNorm forward + backward: eager (`F.rms_norm`, autograd's backward) vs the C++ kernel (csrc/).

Cases: the refinement head's states at L = 1024 of the tiny model (M*C = 288 rows, head widths 128 and
256) and a backbone-sized [2048, 1024]. Each timed call runs `--calls` forward + backward passes (one
is ~0.02-2 ms); providers run interleaved, fp32, 1 thread by default (`--threads`).

    python -m benchmarks.bench_rms_norm
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.harness import Row, report, time_interleaved
from chunksft.ops.rms_norm import rms_norm

CASES = ((288, 128), (288, 256), (2048, 1024))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100, help="forward + backward passes per timed call")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as bench_train_step)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n, d in CASES:
        x = torch.randn(n, d, generator=gen).requires_grad_()
        weight = (1 + 0.1 * torch.randn(d, generator=gen)).requires_grad_()
        grad = torch.randn(n, d, generator=gen)
        calls = max(1, args.calls * 288 * 128 // (n * d))  # about the same work per timed call

        def passes(backend):
            def run():
                for _ in range(calls):
                    torch.autograd.grad(rms_norm(x, weight, 1e-6, backend=backend), (x, weight), grad)
            return run

        case = f"{n}x{d} x{calls}"
        timed = time_interleaved({b: passes(b) for b in ("eager", "cpp")}, "cpu", warmup=1, reps=args.reps, peak=False)
        for backend, (ms, p20, p80, _) in timed.items():
            note = f"{1e3 * ms / calls:.1f} us per fwd+bwd"
            if backend != "eager":
                note += f"; {timed['eager'][0] / ms:.2f}x eager's speed"
            rows.append(Row(backend, case, ms, p20, p80, note=note))
    report("rms_norm_cpu", rows, rate_unit="-", baseline="eager",
           meta=dict(device="cpu", dtype="fp32", threads=torch.get_num_threads(), calls_per_timing=args.calls))


if __name__ == "__main__":
    main()
