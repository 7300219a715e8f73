"""Memory of a chunk_sft training step vs the number of refinement steps K, per head gradient rule.

One fwd+bwd of `HybridModel` (tiny Qwen3, frozen backbone: the chunk_sft default, fused backend,
prompt 64, exactly round(0.3 N) masked chunks per row) for K = 1, 2, 4, 8, 16 and head_gradient
"last" (TRM's rule, the default) and "full". Two memory figures per case:

* peak MB: the resident-set increase at the peak of the step (harness.peak_memory_mb), what a user
  sizes a machine by;
* saved MB: the bytes autograd keeps for the backward at the end of the forward (unique storages
  seen by `torch.autograd.graph.saved_tensors_hooks`), the term that grows with K.

    python -m benchmarks.bench_head_memory [--seq-len 1024] [--batch 4] [--ks 1 2 4 8 16]
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.bench_train_step import PROMPT, fixed_chunk_mask
from benchmarks.harness import Row, measure, report

GRADIENTS = ("last", "full")


def saved_tensor_mb(fn) -> float:
    """MB of the distinct storages autograd saves while fn() runs (fn returns the loss, not backpropagated)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
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
        saved="MB of distinct storages autograd saves for the backward"))
    return rows


if __name__ == "__main__":
    main()
