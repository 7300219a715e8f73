"""Chunk attention: fused Triton / C++ vs eager (SDPA + dense mask) vs FlexAttention (+ flash-attn dense causal).

Useful FLOPs = 4 * D * H * B * (visible (q, k) pairs of `chunk_attention_mask`) for the forward and
3.5x that for forward + backward (the backward does 2.5x the forward's matmul work); rates are
reported on that count, so masked-out work never counts.

    python -m benchmarks.bench_chunk_attention                  # CPU: eager + flex + cpp (GPU rows say so)
    python -m benchmarks.bench_chunk_attention --device cuda    # all providers, do_bench timings
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.harness import device_arg, measure, report, unavailable
from chunksft.ops import _cpp
from chunksft.ops.chunk_attention import chunk_attention, chunk_attention_eager, chunk_attention_triton
from chunksft.ops.masks import block_ids, chunk_attention_mask, visible

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def flex_attention_fn(prompt_lens, seq_len, chunk_size, layout, device, batch, total, compile_flex):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    blocks = block_ids(prompt_lens.to(device), seq_len, chunk_size)
    clean = torch.ones_like(blocks, dtype=torch.bool)
    if layout == "bd3":
        blocks = torch.cat([blocks, blocks], dim=1)
        clean = torch.cat([torch.zeros_like(clean), clean], dim=1)

    def mask_mod(b, h, q_idx, kv_idx):
        return visible(blocks[b, q_idx], clean[b, q_idx], blocks[b, kv_idx], clean[b, kv_idx], layout)

    block_mask = create_block_mask(mask_mod, batch, None, total, total, device=device)
    attend = torch.compile(flex_attention, dynamic=False) if compile_flex else flex_attention
    return lambda q, k, v: attend(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--layout", default="bd3", choices=["bd3", "block_causal"])
    parser.add_argument("--seq-len", type=int, default=2048, help="L: tokens per stream (S = 2L for bd3)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--dtype", default=None, help="fp32 | fp16 | bf16 (default: fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-flex", action="store_true")
    args = parser.parse_args(argv)
    device = device_arg(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device == "cuda" else "fp32")]
    total = args.seq_len * (2 if args.layout == "bd3" else 1)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(args.batch, args.heads, total, args.head_dim, generator=gen).to(device, dtype)
    k, v = (torch.randn(args.batch, args.kv_heads, total, args.head_dim, generator=gen).to(device, dtype)
            for _ in range(2))
    prompt_lens = torch.full((args.batch,), args.prompt, dtype=torch.long)
    kw = dict(prompt_lens=prompt_lens.to(device), chunk_size=args.chunk_size, layout=args.layout)
    pairs = int(chunk_attention_mask(prompt_lens, args.seq_len, chunk_size=args.chunk_size, layout=args.layout).sum())
    fwd_flops = 4.0 * args.head_dim * args.heads * pairs
    density = pairs / (args.batch * total * total)

    def fwd_bwd(attn):
        def run():
            qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
            attn(qq, kk, vv).sum().backward()
        return run

    def no_grad(attn):
        def run():
            with torch.no_grad():
                attn(q, k, v)
        return run

    rows = []
    providers = {"eager (SDPA+dense mask)": lambda a, b, c: chunk_attention_eager(a, b, c, **kw)}
    if not args.no_flex:
        try:
            providers["flex (compiled)"] = flex_attention_fn(prompt_lens, args.seq_len, args.chunk_size, args.layout,
                                                             device, args.batch, total, compile_flex=True)
        except Exception as exc:  # noqa: BLE001 - report the provider as unavailable, keep benchmarking
            rows.append(unavailable("flex (compiled)", "fwd", f"unavailable: {type(exc).__name__}"))
    if device == "cpu":
        if _cpp.status()["available"]:
            providers["cpp (csrc)"] = lambda a, b, c: chunk_attention(a, b, c, backend="cpp", **kw)
        else:
            rows += [unavailable("cpp (csrc)", case, f"C++ ops unavailable: {_cpp.status()['error']}")
                     for case in ("fwd", "fwd+bwd")]
        # The machine's fp32 matmul rate, measured in the same run: the cpp target is >= 50% of it.
        size = 2048
        a, b = torch.randn(size, size), torch.randn(size, size)
        rows.append(measure("fp32 matmul 2048^3 (ref)", "matmul", lambda: a @ b, device, reps=args.reps,
                            flops=2.0 * size ** 3, note="reference rate (all FLOPs useful)"))
    triton_ok = device == "cuda"
    if triton_ok:
        providers["triton (fused)"] = lambda a, b, c: chunk_attention_triton(a, b, c, **kw)
    for name, attn in providers.items():
        for case, fn, flops in (("fwd", no_grad(attn), fwd_flops), ("fwd+bwd", fwd_bwd(attn), 3.5 * fwd_flops)):
            if name.startswith("flex") and case == "fwd+bwd" and device == "cpu":
                rows.append(unavailable(name, case, "FlexAttention has no CPU backward"))
                continue
            try:
                rows.append(measure(name, case, fn, device, reps=args.reps, flops=flops))
            except Exception as exc:  # noqa: BLE001
                rows.append(unavailable(name, case, f"failed: {type(exc).__name__}: {str(exc)[:60]}"))
    if not triton_ok:
        for case in ("fwd", "fwd+bwd"):
            rows.append(unavailable("triton (fused)", case, "needs a GPU (run with --device cuda)"))
    if device == "cuda":
        try:
            from flash_attn import flash_attn_func

            qf, kf, vf = (x.transpose(1, 2).contiguous() for x in (q, k, v))
            causal_pairs = args.batch * total * (total + 1) / 2
            rows.append(measure("flash-attn dense causal", "fwd",
                                lambda: flash_attn_func(qf, kf, vf, causal=True), device,
                                flops=4.0 * args.head_dim * args.heads * causal_pairs,
                                note="upper bound; its own (causal) pairs"))
        except ImportError:
            rows.append(unavailable("flash-attn dense causal", "fwd", "flash-attn not installed"))
    report(f"chunk_attention_{args.layout}_{device}", rows, baseline="eager (SDPA+dense mask)",
           meta=dict(device=device, dtype=str(dtype).replace("torch.", ""), B=args.batch, H=args.heads,
                     Hkv=args.kv_heads, D=args.head_dim, S=total, prompt=args.prompt, C=args.chunk_size,
                     visible_pairs=pairs, density=round(density, 3), threads=torch.get_num_threads(),
                     flops="useful = 4*D*H*visible pairs (fwd), x3.5 for fwd+bwd"))


if __name__ == "__main__":
    main()
