"""Linear cross-entropy: eager (fp32 logits + F.cross_entropy) vs the row-blocked fused paths.

Default shape = docs/design.md §4 (N=2048, H=1024, V=151936, fp32, fwd+bwd). Reports time, peak extra
memory (RSS on CPU, allocator on CUDA) and the relative error of loss and gradients vs eager.

    python -m benchmarks.bench_linear_cross_entropy             # CPU: eager vs chunked vs cpp (csrc/)
    python -m benchmarks.bench_linear_cross_entropy --device cuda
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.harness import Row, device_arg, report, time_interleaved, unavailable
from chunksft.ops.linear_cross_entropy import linear_cross_entropy

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--ignored", type=float, default=0.0, help="fraction of rows with target -100")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    device = device_arg(args.device)
    dtype = DTYPES[args.dtype]
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.rows, args.hidden, generator=gen).to(device, dtype)
    weight = (torch.randn(args.vocab, args.hidden, generator=gen) / args.hidden ** 0.5).to(device, dtype)
    targets = torch.randint(0, args.vocab, (args.rows,), generator=gen)
    targets[torch.rand(args.rows, generator=gen) < args.ignored] = -100
    targets = targets.to(device)
    grads = {}

    def step(backend):
        def run():
            h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
            loss = linear_cross_entropy(h, w, targets, backend=backend)
            loss.backward()
            grads[backend] = (loss.detach(), h.grad, w.grad)
        return run

    backends = ["eager", "chunked"] + (["triton"] if device == "cuda" else ["cpp"])
    # Side by side, round by round: the ratio to eager is what the target reads, and a 20 s CPU call
    # drifts by more than the margin between the paths.
    timed = time_interleaved({backend: step(backend) for backend in backends}, device, warmup=1, reps=args.reps)
    rows = [Row(backend, "fwd+bwd", *timed[backend]) for backend in backends]
    if device != "cuda":
        rows.append(unavailable("triton", "fwd+bwd", "needs a GPU (run with --device cuda)"))
    ref = grads["eager"]
    for row in rows:
        if row.provider in grads and row.provider != "eager":
            errs = [((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(grads[row.provider], ref)]
            row.note = "rel err loss {:.1e} dh {:.1e} dW {:.1e}".format(*errs)
            row.extra["rel_err"] = errs
    eager_peak, eager_ms = rows[0].peak_mb, rows[0].ms
    for row in rows[1:]:
        if row.peak_mb is not None and eager_peak:
            row.note += f"; {100 * row.peak_mb / eager_peak:.0f}% of eager's extra memory"
        if row.ms:
            row.note += f"; {eager_ms / row.ms:.2f}x eager's speed"
    report(f"linear_cross_entropy_{device}", rows, rate_unit="-", baseline="eager",
           meta=dict(device=device, dtype=args.dtype, N=args.rows, H=args.hidden, V=args.vocab,
                     ignored=args.ignored, threads=torch.get_num_threads()))


if __name__ == "__main__":
    main()
