"""Memory of a chunk_sft training step vs the number of refinement steps K, per head gradient rule.

One fwd+bwd of `HybridModel` (tiny Qwen3, frozen backbone: the chunk_sft default, fused backend,
prompt 64, exactly round(0.3 N) masked chunks per row) for K = 1, 2, 4, 8, 16 and head_gradient
"last" (TRM's rule, the default) and "full". Two memory figures per case:

* peak MB: the resident-set increase at the peak of the step (harness.peak_memory_mb, the median
  of 3 steps: one reading varies by ~10% with the allocator's state), what a user sizes a machine by;
* saved MB: the bytes autograd still holds for the backward at the end of the forward (distinct
  storages packed by `torch.autograd.graph.saved_tensors_hooks` and still alive), the term that grows
  with K when one graph spans all steps.

    python -m benchmarks.bench_head_memory [--seq-len 1024] [--batch 4] [--ks 1 2 4 8 16]
"""
from __future__ import annotations

import argparse
import statistics
import weakref

import torch

from benchmarks.bench_train_step import PROMPT, fixed_chunk_mask
from benchmarks.harness import Row, measure, peak_memory_mb, report

GRADIENTS = ("last", "full")


def saved_tensor_mb(fn) -> float:
    """MB of the distinct storages autograd still holds for the backward when fn() returns (fn returns
    the loss, not backpropagated). Tensors saved by a graph that was freed during fn (the step-by-step
    backward of head_gradient "last") no longer count."""
    packed: list[weakref.ref] = []

    def pack(t: torch.Tensor):
        packed.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()  # keeps the graph, and what it saved, alive while counting
    storages: dict[int, int] = {}
    for ref in packed:
        if (t := ref()) is not None:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    del loss
    return sum(storages.values()) / 2 ** 20


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from chunksft.models import HybridConfig, HybridModel

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 512, (args.batch, args.seq_len), generator=gen)
    prompt_lens = torch.full((args.batch,), PROMPT, dtype=torch.long)
    chunk_masked = fixed_chunk_mask(args.batch, args.seq_len, 0.3, seed=args.seq_len)
    rows, saved = [], {}
    for gradient in GRADIENTS:
        for k in args.ks:
            torch.manual_seed(0)
            model = HybridModel(HybridConfig(max_recursive_steps=k, head_gradient=gradient)).train()

            def loss():
                return model(input_ids=ids, prompt_lens=prompt_lens, chunk_masked=chunk_masked,
                             training_mode="chunk_sft", return_logits=False).loss

            def step():
                model.zero_grad(set_to_none=True)
                loss().backward()

            step()  # warm-up: first-call allocations (extension load, thread pools) are not the step's
            saved[gradient, k] = saved_tensor_mb(loss)
            row = measure(f"head_gradient={gradient}", f"K={k}", step, "cpu", reps=args.reps)
            row.peak_mb = statistics.median([row.peak_mb] + [peak_memory_mb(step, "cpu") for _ in range(2)])
            row.rate = saved[gradient, k]
            rows.append(row)
            del model
    for row in rows:
        gradient, k = row.provider.split("=")[1], int(row.case[2:])
        first = next(r for r in rows if r.provider == row.provider)
        row.note = (f"peak {row.peak_mb / first.peak_mb:.2f}x, saved {saved[gradient, k] / saved[gradient, args.ks[0]]:.2f}x"
                    f" the K={args.ks[0]} step")
    masked = int(chunk_masked.sum())
    report("head_memory_cpu", rows, rate_unit="saved MB", meta=dict(
        model="tiny Qwen3, frozen backbone", L=args.seq_len, batch=args.batch, prompt=PROMPT, masked_chunks=masked,
        backend="auto", threads=args.threads, step="fwd+bwd (no optimizer update)",
        saved="MB of distinct storages autograd holds for the backward at the end of the forward",
        peak="median of 3 steps"))
    return rows


if __name__ == "__main__":
    main()
