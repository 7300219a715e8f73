"""Chunk masking: eager (torch.Generator draw) vs the counter-based reference vs the Triton / C++ kernels.

    python -m benchmarks.bench_chunk_mask               # CPU: eager providers
    python -m benchmarks.bench_chunk_mask --device cuda
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.harness import device_arg, measure, report, unavailable
from chunksft.ops.chunk_mask import chunk_mask_counter, chunk_mask_counter_triton, chunk_mask_eager


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    device = device_arg(args.device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30000, (args.batch, args.seq_len), generator=gen).to(device)
    prompts = torch.randint(args.prompt // 2, args.prompt + 1, (args.batch,), generator=gen).to(device)
    kw = dict(chunk_size=args.chunk_size, mask_prob=0.3, mask_id=2)
    providers = {
        "eager (torch.Generator)": lambda: chunk_mask_eager(ids, prompts, generator=torch.Generator(device).manual_seed(1),
                                                            **kw),
        "eager counter (+layout)": lambda: chunk_mask_counter(ids, prompts, seed=1, **kw),
    }
    if device == "cpu":
        from chunksft.ops.chunk_mask import chunk_mask_counter_cpp

        providers["cpp (csrc, +layout)"] = lambda: chunk_mask_counter_cpp(ids, prompts, seed=1, **kw)
    if device == "cuda":
        providers["triton (fused, +layout)"] = lambda: chunk_mask_counter_triton(ids, prompts, seed=1, **kw)
    rows = [measure(name, f"B{args.batch}xL{args.seq_len}", fn, device, reps=args.reps) for name, fn in providers.items()]
    if device != "cuda":
        rows.append(unavailable("triton (fused, +layout)", f"B{args.batch}xL{args.seq_len}",
                                "needs a GPU (run with --device cuda)"))
    report(f"chunk_mask_{device}", rows, rate_unit="-", baseline="eager (torch.Generator)",
           meta=dict(device=device, B=args.batch, L=args.seq_len, C=args.chunk_size))


if __name__ == "__main__":
    main()
