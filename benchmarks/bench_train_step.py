"""End-to-end chunk_sft training step: per-chunk loop vs one-pass eager vs one-pass fused, and ZeRO-3 ranks.

Part "single" (one process, `torch.set_num_threads(--threads)`, default 1): one training step =
forward + backward (gradients zeroed first; no optimizer update, like the docs/design.md §4 anchor) of
  loop   the naive per-chunk loop (`chunksft.models.per_chunk_loop.per_chunk_loop`: one block_causal
         forward per masked chunk, eager backend) + the same loss;
  eager  one bd3 pass, backend="eager", compact_noisy_stream=False: SDPA + dense [2L, 2L] mask (the anchor);
  fused  one bd3 pass, backend="auto" (C++ on CPU when built) + compact_noisy_stream=True;
  head   diagnostic: the refinement head + decode + loss alone (`HybridModel.supervise`, fwd+bwd) on
         fixed chunk states, the work every provider shares; "backbone part" ratios subtract it.
All three use identical weights and the same masked chunks (exactly round(mask_probability * N) chunks
per row, drawn with a fixed seed) and are timed interleaved, round by round, so a busy shared machine
slows them alike; the losses are checked to agree. tokens/s counts the B*L tokens of the rows (not 2L).
Each provider's step is also counted in FLOPs: the matmuls as dispatched (linear layers, LM-head
decodes, the head) plus the backbone attention's useful FLOPs from its visible pairs; "FLOPs Nx"
beside a speedup is the loop's count over the provider's, the speedup at equal FLOP rates.
Models: "tiny" = HybridConfig() (Qwen3-style, 4 layers, d=256) and "qwen3-100m" (16 layers, d=768,
GQA 12:4, ~101M parameters with the bundled 512-token vocabulary). Both frozen-backbone (the chunk_sft
default: only the head trains) and full-backbone training. A log-log least-squares fit of time vs L
gives each provider's growth exponent (table + PNG).

Part "zero3": the real trainer (`python -m chunksft.train`, DeepSpeed ZeRO-3, gloo, 1 thread per rank)
under torchrun with 1 and 2 ranks, tiny model, L=1024 rows (prompt 64 + 60 chunks of 16, batch 1 per
rank), eager (full [x_t; x_0] with SDPA + dense mask) vs fused (auto backend + compacted x_t): the
step time is the median difference of metrics.jsonl's `time` over the steps after the first two.
The optimizer step (DeepSpeed ZeRO-3 AdamW) is included there.

    python -m benchmarks.bench_train_step                 # both parts, CPU default sizes (single part ~12 min)
    python -m benchmarks.bench_train_step --part single --full      # all lengths 256..2048, more reps
    python -m benchmarks.bench_train_step --part single --profile   # torch.profiler of the anchor steps
    python -m benchmarks.bench_train_step --part zero3 --zero3-steps 8
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

from benchmarks.harness import RESULTS, Row, fit_exponent, machine, plot_scaling, report, time_interleaved

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

PROMPT, CHUNK = 64, 16
ANCHOR_L = PROMPT + 32 * CHUNK  # docs/design.md §4: prompt 64 + 32 chunks of 16
ANCHOR = {"loop_s": 3.66, "eager_s": 0.47, "ratio": 7.8, "fused_target": 12.0}
PROVIDERS = ("loop", "eager", "fused", "head")  # head: the refinement head alone (same in all three)
_MATMULS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_, torch.ops.aten.bmm, torch.ops.aten.baddbmm}


def model_configs() -> dict:
    from chunksft.models.config import TINY_BACKBONE

    return {
        "tiny": dict(TINY_BACKBONE),
        "qwen3-100m": dict(TINY_BACKBONE, hidden_size=768, intermediate_size=2048, num_hidden_layers=16,
                           num_attention_heads=12, num_key_value_heads=4, head_dim=64),
    }


# ------------------------------------------------------------------------------ part "single"
def fixed_chunk_mask(batch: int, seq_len: int, prob: float, seed: int) -> torch.Tensor:
    """bool [B, N]: exactly max(1, round(prob * N)) chunks per row, uniformly chosen with a fixed seed
    (the expected count of the Bernoulli draw, so every provider and length gets a typical step)."""
    n = (seq_len - PROMPT) // CHUNK
    k = max(1, round(prob * n))
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    for b in range(batch):
        mask[b, torch.randperm(n, generator=gen)[:k]] = True
    return mask


def build_models(backbone: dict, freeze: bool):
    from chunksft.models import HybridConfig, HybridModel

    models = {}
    for name, kw in (("eager", dict(backend="eager", compact_noisy_stream=False)),
                     ("fused", dict(backend="auto", compact_noisy_stream=True))):
        torch.manual_seed(0)
        model = HybridModel(HybridConfig(backbone=dict(backbone), freeze_backbone=freeze, **kw))
        model.train()
        models[name] = model
    models["fused"].load_state_dict(models["eager"].state_dict())
    return models


def step_fns(models, ids, prompt_lens, chunk_masked):
    """{provider: fn()} where fn runs one fwd+bwd step and returns the loss."""
    from chunksft.models.per_chunk_loop import loop_loss, per_chunk_loop

    def zero(model):
        for p in model.parameters():
            p.grad = None

    def one_pass(model):
        def run():
            zero(model)
            loss = model(input_ids=ids, prompt_lens=prompt_lens, chunk_masked=chunk_masked,
                         training_mode="chunk_sft", return_logits=False).loss
            loss.backward()
            return loss.detach()
        return run

    def loop():
        model = models["eager"]
        zero(model)
        step_logits, halt_logits, targets = per_chunk_loop(model, ids, prompt_lens, chunk_masked)
        loss, _ = loop_loss(step_logits, halt_logits, targets,
                            deep_supervision_weight=model.config.deep_supervision_weight,
                            enable_deep_supervision=model.config.enable_deep_supervision)
        loss.backward()
        return loss.detach()

    size = models["fused"].config.chunk_size
    rows, chunks = chunk_masked.nonzero(as_tuple=True)
    starts = prompt_lens[rows, None] + chunks[:, None] * size + torch.arange(size)
    targets = ids[rows[:, None], starts]  # [M, C]
    hidden = models["fused"].config.backbone["hidden_size"]
    states = torch.randn(targets.shape[0], size, hidden, generator=torch.Generator().manual_seed(1))

    def head():
        """The refinement head + decode + loss alone (fwd+bwd) on fixed chunk states: the part of a
        step that is the same for every provider."""
        model = models["fused"]
        zero(model)
        loss = model.supervise(states, targets).loss
        loss.backward()
        return loss.detach()

    return {"loop": loop, "eager": one_pass(models["eager"]), "fused": one_pass(models["fused"]), "head": head}


class _MatmulFlops(TorchDispatchMode):
    """Counts the FLOPs of the matmuls dispatched inside it (torch.utils.flop_counter's formulas;
    in-place addmm_ as addmm). SDPA on CPU and the C++ attention kernel (BLAS called directly) are
    not matmul ops here: attention is counted from its visible pairs instead (`attention_flops`)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in _MATMULS:
            formula = flop_registry[torch.ops.aten.addmm if packet is torch.ops.aten.addmm_ else packet]
            shape = lambda t: t.shape if isinstance(t, torch.Tensor) else t  # noqa: E731
            self.flops += formula(*tree_map(shape, args), **tree_map(shape, kwargs), out_val=tree_map(shape, out))
        return out


def matmul_flops(fn) -> int:
    """Matmul FLOPs (2 per multiply-add) of one call of fn: linear layers, LM-head decodes, the head."""
    with _MatmulFlops() as counter:
        fn()
    return counter.flops


def visible_pairs(provider: str, prompt_lens: torch.Tensor, chunk_masked: torch.Tensor, chunk_size: int = CHUNK) -> int:
    """(q, k) pairs the provider's backbone attention must compute in one step (rows without padding),
    counted on the layout masks of chunksft.ops.masks:
      loop:  one block-causal pass per masked chunk i over the prompt and chunks 0..i;
      eager: the full bd3 layout [x_t; x_0];   fused: the compact layout;
      head:  0 (its attention stays within chunks)."""
    from chunksft.ops.masks import chunk_attention_mask, compact_attention_mask, compact_layout

    pairs = 0
    for row in range(chunk_masked.shape[0]):
        prompt, masked = prompt_lens[row:row + 1], chunk_masked[row:row + 1]
        seq_len = int(prompt) + masked.shape[1] * chunk_size
        if provider == "loop":
            pairs += sum(int(chunk_attention_mask(prompt, int(prompt) + (i + 1) * chunk_size, chunk_size=chunk_size,
                                                  layout="block_causal").sum())
                         for i in masked[0].nonzero().flatten().tolist())
        elif provider == "eager":
            pairs += int(chunk_attention_mask(prompt, seq_len, chunk_size=chunk_size, layout="bd3").sum())
        elif provider == "fused":
            index = compact_layout(masked, prompt, chunk_size).chunk_index
            pairs += int(compact_attention_mask(prompt, seq_len, index, chunk_size=chunk_size).sum())
    return pairs


def attention_flops(provider: str, backbone: dict, prompt_lens: torch.Tensor, chunk_masked: torch.Tensor,
                    trained: bool) -> float:
    """Useful FLOPs of the backbone's attention in one step (docs/design.md §4: 4 * D * H per visible
    pair per layer; x3.5 with the backward when the backbone trains)."""
    per_pair = 4 * backbone["head_dim"] * backbone["num_attention_heads"] * backbone["num_hidden_layers"]
    return visible_pairs(provider, prompt_lens, chunk_masked) * per_pair * (3.5 if trained else 1.0)


def fused_backend_label() -> str:
    from chunksft.ops import _cpp

    status = _cpp.status()
    return "cpp" if status["available"] else f"eager (C++ unavailable: {status['error']})"


def run_single(args) -> list[dict]:
    configs = model_configs()
    plan = []  # (model, freeze, lengths, loop_max_len, reps)
    tiny_lengths = [256, 512, ANCHOR_L, 1024, 2048] if args.full else [256, ANCHOR_L, 1024, 2048]
    big_lengths = [256, 512, 1024, 2048] if args.full else [256, 512]
    for model in args.models:
        for freeze in args.train:
            if model == "tiny":
                # The loop up to L = 2048 for the tiny model (~30 s per full-backbone step): its FLOP ratio
                # to the fused step reaches ~11.5x only there (6.5x at 1024).
                plan.append((model, freeze, args.lengths or tiny_lengths, args.loop_max_len or 2048, args.reps))
            else:
                plan.append((model, freeze, args.lengths or big_lengths, args.loop_max_len or (1024 if args.full else 256),
                             max(1, args.reps - 1) if not args.full else args.reps))
    fused_label = fused_backend_label()
    results = []
    for model_name, freeze, lengths, loop_max, reps in plan:
        models = build_models(configs[model_name], freeze == "frozen")
        params = sum(p.numel() for p in models["eager"].parameters())
        trainable = sum(p.numel() for p in models["eager"].parameters() if p.requires_grad)
        for seq_len in lengths:
            gen = torch.Generator().manual_seed(seq_len)
            ids = torch.randint(5, models["eager"].config.backbone["vocab_size"], (args.batch, seq_len), generator=gen)
            prompt_lens = torch.full((args.batch,), PROMPT, dtype=torch.long)
            chunk_masked = fixed_chunk_mask(args.batch, seq_len, models["eager"].config.mask_probability, seq_len)
            fns = step_fns(models, ids, prompt_lens, chunk_masked)
            if seq_len > loop_max:
                fns.pop("loop")
            losses = {name: float(fn()) for name, fn in fns.items()}  # also a first warm-up
            flops = {name: matmul_flops(fn) + attention_flops(name, configs[model_name], prompt_lens, chunk_masked,
                                                              trained=freeze == "full")
                     for name, fn in fns.items()}
            spread = max(v for k, v in losses.items() if k != "head") - min(v for k, v in losses.items() if k != "head")
            timed = time_interleaved(fns, "cpu", warmup=1, reps=reps)
            for name, (ms, p20, p80, peak) in timed.items():
                results.append(dict(model=model_name, train=freeze, L=seq_len, provider=name, ms=ms, p20=p20, p80=p80,
                                    peak_mb=peak, tokens_per_s=args.batch * seq_len / (ms / 1e3),
                                    masked_chunks=int(chunk_masked.sum()), params=params, trainable=trainable,
                                    loss=losses[name], loss_spread=spread, reps=reps, gflop=flops[name] / 1e9,
                                    gflop_per_s=flops[name] / 1e9 / (ms / 1e3)))
            line = "  ".join(f"{n} {timed[n][0]:8.1f} ms" for n in timed)
            ratios = "  ".join(f"{n}/fused {timed[n][0] / timed['fused'][0]:.2f}x (FLOPs {flops[n] / flops['fused']:.2f}x)"
                               for n in timed if n not in ("fused", "head"))
            print(f"[{model_name} {freeze} L={seq_len} M={int(chunk_masked.sum())}] {line} | {ratios} | "
                  f"loss spread {spread:.1e}", flush=True)
        del models
    meta = dict(part="single", batch=args.batch, prompt=PROMPT, C=CHUNK, threads=torch.get_num_threads(),
                fused_backend=fused_label, step="fwd+bwd (no optimizer update)")
    write_single(results, meta)
    if args.profile:
        profile_anchor(args)
    return results


def exponents(results: list[dict]) -> dict[tuple, float]:
    out = {}
    keys = {(r["model"], r["train"], r["provider"]) for r in results}
    for key in sorted(keys):
        pts = sorted((r["L"], r["ms"]) for r in results if (r["model"], r["train"], r["provider"]) == key)
        fit = fit_exponent([p[0] for p in pts], [p[1] for p in pts])
        if fit is not None:
            out[key] = fit[0]
    return out


def write_single(results: list[dict], meta: dict) -> None:
    exps = exponents(results)
    by = {(r["model"], r["train"], r["L"], r["provider"]): r for r in results}
    rows = []
    for r in results:
        key = (r["model"], r["train"], r["provider"])
        ref_loop = by.get((r["model"], r["train"], r["L"], "loop"))
        ref_eager = by.get((r["model"], r["train"], r["L"], "eager"))
        extra = dict(r)
        notes = [f"M={r['masked_chunks']}"]
        notes.append(f"{r['gflop']:.1f} GFLOP at {r['gflop_per_s']:.0f} GFLOP/s")
        if ref_loop and r["provider"] != "loop":
            extra["speedup_vs_loop"] = ref_loop["ms"] / r["ms"]
            extra["flop_ratio_vs_loop"] = ref_loop["gflop"] / r["gflop"]
            notes.append(f"{extra['speedup_vs_loop']:.2f}x vs loop (FLOPs {extra['flop_ratio_vs_loop']:.2f}x)")
        if ref_eager and r["provider"] == "fused":
            extra["speedup_vs_eager"] = ref_eager["ms"] / r["ms"]
            notes.append(f"{extra['speedup_vs_eager']:.2f}x vs eager")
        head = by.get((r["model"], r["train"], r["L"], "head"))
        if head and r["provider"] == "head":
            notes.append(f"{head['ms'] / by[(r['model'], r['train'], r['L'], 'fused')]['ms']:.0%} of the fused step")
        elif head and ref_loop and r["provider"] != "loop" and r["ms"] > head["ms"]:
            extra["backbone_speedup_vs_loop"] = (ref_loop["ms"] - head["ms"]) / (r["ms"] - head["ms"])
            notes.append(f"backbone part {extra['backbone_speedup_vs_loop']:.1f}x vs loop")
        if key in exps:
            extra["growth_exponent"] = exps[key]
            notes.append(f"time~L^{exps[key]:.2f}")
        rows.append(Row(provider=r["provider"], case=f"{r['model']} {r['train']} L={r['L']}", ms=r["ms"],
                        ms_p20=r["p20"], ms_p80=r["p80"], peak_mb=r["peak_mb"], rate=r["tokens_per_s"],
                        note=", ".join(notes), extra=extra))
    meta = dict(meta, growth_exponents={" ".join(k): round(v, 3) for k, v in exps.items()})
    report("train_step_cpu", rows, rate_unit="tokens/s", meta=meta, plot=False)
    series, panels = {}, {}
    for (model, train, provider) in sorted({(r["model"], r["train"], r["provider"]) for r in results}):
        pts = sorted((r["L"], r["ms"] / 1e3) for r in results
                     if (r["model"], r["train"], r["provider"]) == (model, train, provider))
        label = f"{provider} {model} {train}"
        series[label] = ([p[0] for p in pts], [p[1] for p in pts])
        panels.setdefault(f"{model}, {train} backbone", []).append(label)
    plot_scaling("train_step_cpu", series, ylabel="step time (s), fwd+bwd", panels=panels,
                 title=f"chunk_sft step vs L (prompt {PROMPT}, C={CHUNK}, {meta['threads']} thread(s))")
    anchor = [r for r in results if r["model"] == "tiny" and r["L"] == ANCHOR_L]
    for train in sorted({r["train"] for r in anchor}):
        got = {r["provider"]: r["ms"] / 1e3 for r in anchor if r["train"] == train}
        if {"loop", "eager", "fused"} <= set(got):
            print(f"\ndocs/design.md §4 anchor (tiny, L={ANCHOR_L}, {train} backbone): loop {got['loop']:.3f} s, eager "
                  f"{got['eager']:.3f} s ({got['loop'] / got['eager']:.2f}x; anchor {ANCHOR['ratio']}x, target >= 7x), "
                  f"fused {got['fused']:.3f} s ({got['loop'] / got['fused']:.2f}x; target >= {ANCHOR['fused_target']}x) "
                  f"-> fused/eager {got['eager'] / got['fused']:.2f}x")
            if "head" in got:
                h = got["head"]
                print(f"  head alone {h:.3f} s = {h / got['fused']:.0%} of the fused step; backbone parts: loop "
                      f"{got['loop'] - h:.3f} s, eager {got['eager'] - h:.3f} s, fused {got['fused'] - h:.3f} s -> "
                      f"loop/fused {(got['loop'] - h) / (got['fused'] - h):.1f}x, loop/eager "
                      f"{(got['loop'] - h) / (got['eager'] - h):.1f}x")
    for key, value in exps.items():
        print(f"growth exponent {' '.join(key)}: time ~ L^{value:.2f}")


def profile_anchor(args) -> None:
    """torch.profiler of the anchor case per provider (frozen and full): top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    for freeze in args.train:
        models = build_models(model_configs()["tiny"], freeze == "frozen")
        ids = torch.randint(5, 512, (args.batch, ANCHOR_L), generator=torch.Generator().manual_seed(ANCHOR_L))
        prompt_lens = torch.full((args.batch,), PROMPT, dtype=torch.long)
        fns = step_fns(models, ids, prompt_lens, fixed_chunk_mask(args.batch, ANCHOR_L, 0.3, ANCHOR_L))
        for name, fn in fns.items():
            fn()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
            print(f"\n== profile: {name}, tiny {freeze} L={ANCHOR_L} ==\n{table}")
            out = RESULTS / f"train_step_profile_{name}_{freeze}.txt"
            out.write_text(table)


# ------------------------------------------------------------------------------ part "zero3"
def write_dataset(path: Path, rows: int, seq_len: int) -> None:
    """Plain-format rows whose encoding is prompt 64 + a response truncated to seq_len - 64 tokens."""
    from chunksft.data.encode import encode_prompt
    from chunksft.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    words = "the cards are shared by some friends who buy bags of pens and give away what is left".split()
    question, i = "Emma has 19 cards.", 0
    while len(encode_prompt(tok, question)) < PROMPT:
        question += " " + words[i % len(words)]
        i += 1
    while len(encode_prompt(tok, question)) > PROMPT:
        question = question[:-1]
    steps = [f"{a} * {a + 3} = {a * (a + 3)}" for a in range(10, 10 + seq_len // 6)]
    with open(path, "w") as fh:
        for r in range(rows):
            fh.write(json.dumps({"question": question, "steps": steps, "answer": str(r)}) + "\n")


def trainer_cmd(nproc: int, port: int, out: Path, data: Path, *, fused: bool, freeze: bool, steps: int,
                seq_len: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "benchmarks.bench_train_step",
            "--trainer-entry", "--compact", "1" if fused else "0", "--",
            "--config", "configs/train/tiny.yaml", "--dataset_name", str(data), "--max_length", str(seq_len),
            "--batch_size", "1", "--max_steps", str(steps), "--warmup_steps", "1",
            "--backend", "auto" if fused else "eager", "--freeze_backbone", "true" if freeze else "false",
            "--output_dir", str(out), "--resume", "none", "--save_interval", "0", "--eval_loss_rows", "0",
            "--eval_generate_rows", "0", "--tensorboard", "false", "--plot", "false", "--progress_bar", "false"]


def run_zero3(args) -> list[dict]:
    import socket

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    seq_len = args.zero3_len
    work = Path(tempfile.mkdtemp(prefix="bench_zero3_"))
    data = work / "rows.jsonl"
    write_dataset(data, rows=64, seq_len=seq_len)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("DEBUG", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    results = []
    try:
        for rnd in range(args.zero3_rounds):
            for freeze in args.train:
                for nproc in args.ranks:
                    for fused in (False, True):
                        name = "fused" if fused else "eager"
                        out = work / f"{name}_{freeze}_{nproc}_{rnd}"
                        cmd = trainer_cmd(nproc, free_port(), out, data, fused=fused, freeze=freeze == "frozen",
                                          steps=args.zero3_steps, seq_len=seq_len)
                        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
                        metrics = out / "metrics.jsonl"
                        if proc.returncode != 0 or not metrics.exists():
                            print(f"[zero3 {name} {freeze} ranks={nproc}] FAILED rc={proc.returncode}\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", flush=True)
                            results.append(dict(provider=name, train=freeze, ranks=nproc, round=rnd, failed=True,
                                                error=proc.stderr[-300:]))
                            continue
                        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                        times = [row["time"] for row in rows]
                        diffs = [b - a for a, b in zip(times, times[1:])][1:]  # drop the first two steps
                        step_s = statistics.median(diffs)
                        tokens = nproc * 1 * seq_len
                        results.append(dict(provider=name, train=freeze, ranks=nproc, round=rnd, step_s=step_s,
                                            p20=min(diffs), p80=max(diffs), tokens_per_s=tokens / step_s,
                                            steps=len(rows), diffs=diffs, loss_first=rows[0]["loss"],
                                            masked_chunks=statistics.mean(r.get("masked_chunks", 0) for r in rows)))
                        print(f"[zero3 {name} {freeze} ranks={nproc} round {rnd}] {step_s:.3f} s/step "
                              f"({tokens / step_s:.0f} tokens/s; steps {['%.2f' % d for d in diffs]})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_zero3(results, seq_len, args)
    return results


def write_zero3(results: list[dict], seq_len: int, args) -> None:
    ok = [r for r in results if not r.get("failed")]
    groups = {}
    for r in ok:
        groups.setdefault((r["provider"], r["train"], r["ranks"]), []).append(r)
    rows = []
    merged = {}
    for (provider, train, ranks), rs in groups.items():
        diffs = [d for r in rs for d in r["diffs"]]
        step_s = statistics.median(diffs)
        merged[(provider, train, ranks)] = step_s
    for (provider, train, ranks), step_s in merged.items():
        diffs = [d for r in groups[(provider, train, ranks)] for d in r["diffs"]]
        notes = []
        eager = merged.get(("eager", train, ranks))
        if provider == "fused" and eager:
            notes.append(f"{eager / step_s:.2f}x eager tokens/s")
        one = merged.get((provider, train, 1))
        if ranks > 1 and one:
            notes.append(f"{ranks * one / step_s:.2f}x the 1-rank tokens/s (step time {step_s / one:.2f}x)")
        rows.append(Row(provider=provider, case=f"tiny {train} L={seq_len} ranks={ranks}", ms=step_s * 1e3,
                        ms_p20=min(diffs) * 1e3, ms_p80=max(diffs) * 1e3, rate=ranks * seq_len / step_s,
                        note=", ".join(notes), extra=dict(step_times_s=diffs)))
    for r in results:
        if r.get("failed"):
            rows.append(Row(provider=r["provider"], case=f"tiny {r['train']} L={seq_len} ranks={r['ranks']}",
                            note="failed: " + r["error"].strip().splitlines()[-1][:80] if r["error"].strip() else "failed"))
    rows.sort(key=lambda row: (row.case, row.provider))
    meta = dict(part="zero3", trainer="python -m chunksft.train under torchrun (DeepSpeed ZeRO-3, gloo)",
                threads_per_rank=1, batch_per_rank=1, L=seq_len, prompt=PROMPT, C=CHUNK,
                steps=args.zero3_steps, timed="median of per-step wall time after the first two steps",
                step="fwd+bwd+ZeRO-3 AdamW step", eager="backend=eager, full [x_t;x_0] (SDPA+dense mask)",
                fused=f"backend=auto ({fused_backend_label()}), compacted x_t")
    meta["torch_threads"] = 1
    report("train_step_zero3_cpu", rows, rate_unit="tokens/s", meta=meta)
    for train in args.train:
        for ranks in args.ranks:
            e, f = merged.get(("eager", train, ranks)), merged.get(("fused", train, ranks))
            if e and f:
                print(f"ZeRO-3 {ranks} rank(s), {train} backbone, L={seq_len}: eager {seq_len * ranks / e:.0f} tokens/s, "
                      f"fused {seq_len * ranks / f:.0f} tokens/s -> {e / f:.2f}x (target >= 2x on 2 ranks)")


def trainer_entry(argv: list[str]) -> int:
    """Run the real trainer with `compact_noisy_stream` forced (the train config does not expose it)."""
    compact = argv[argv.index("--compact") + 1] == "1"
    rest = argv[argv.index("--") + 1:]
    from chunksft.train.config import TrainConfig

    original = TrainConfig.hybrid_kwargs
    TrainConfig.hybrid_kwargs = lambda cfg: original(cfg) | {"compact_noisy_stream": compact}
    from chunksft.train.__main__ import main as train_main

    return train_main(rest)


def cost_model(prompt: int = PROMPT, p: float = 0.3, tile: int = 64) -> None:
    """Print the bd3 cost-model tables of benchmarks/README.md (counts from `chunk_attention_mask`)."""
    from chunksft.ops.masks import chunk_attention_mask

    def counts(seq_len, size, prob):
        mask = chunk_attention_mask(torch.tensor([prompt]), seq_len, chunk_size=size, layout="bd3")[0]
        total = 2 * seq_len
        pairs = int(mask.sum())
        tiles = mask.view(total // tile, tile, total // tile, tile).any(3).any(1).float().mean().item()
        n = (seq_len - prompt) // size
        clean = int(chunk_attention_mask(torch.tensor([prompt]), seq_len, chunk_size=size, layout="block_causal").sum())
        noisy = n * size * prompt + size * size * n * (n + 1) / 2
        return dict(pairs=pairs, density=pairs / total ** 2, tiles=tiles, compact_pairs=clean + prob * noisy,
                    compact_tokens=seq_len + prob * n * size, loop_tokens=prob * (n * prompt + size * n * (n + 1) / 2))

    print("| L | C | visible pairs (bd3) | density | tiles computed | compact pairs / (2L)^2 | "
          "tokens: full 2L / compact L+pNC / loop |")
    for seq_len in (256, 576, 1024, 2048, 4096):
        for size in (16, 64):
            if (seq_len - prompt) % size == 0:
                r = counts(seq_len, size, p)
                print(f"| {seq_len} | {size} | {r['pairs']:,} | {r['density']:.3f} | {r['tiles']:.3f} | "
                      f"{r['compact_pairs'] / (2 * seq_len) ** 2:.3f} | {2 * seq_len} / {r['compact_tokens']:.0f} / "
                      f"{r['loop_tokens']:.0f} |")
    print("\n| p | tokens vs 2L | pairs vs full bd3 | pairs vs dense (2L)^2 |   (L = 1024, C = 16)")
    for prob in (0.1, 0.3, 0.5, 1.0):
        r = counts(1024, 16, prob)
        print(f"| {prob} | {r['compact_tokens'] / 2048:.3f} | {r['compact_pairs'] / r['pairs']:.3f} | "
              f"{r['compact_pairs'] / 2048 ** 2:.3f} |")


# ------------------------------------------------------------------------------ CLI
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--trainer-entry" in argv:
        return trainer_entry(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["single", "zero3", "all"], default="all")
    parser.add_argument("--cost-model", action="store_true", help="print the bd3 cost-model tables and exit")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the single-process part (default 1: a 2-core machine shared with "
                             "other processes; the ZeRO-3 part always uses 1 thread per rank)")
    parser.add_argument("--models", nargs="+", default=["tiny", "qwen3-100m"], choices=["tiny", "qwen3-100m"])
    parser.add_argument("--train", nargs="+", default=["frozen", "full"], choices=["frozen", "full"])
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="override the L list")
    parser.add_argument("--loop-max-len", type=int, default=None, help="longest L timed for the per-chunk loop")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="all lengths (also for the 100M model), more reps")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of the anchor case")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--zero3-len", type=int, default=1024)
    parser.add_argument("--zero3-steps", type=int, default=6)
    parser.add_argument("--zero3-rounds", type=int, default=1)
    args = parser.parse_args(argv)
    if args.cost_model:
        cost_model()
        return 0
    if args.full:
        args.reps = max(args.reps, 5)
        args.zero3_rounds = max(args.zero3_rounds, 2)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()} (single-process part); machine: {machine()}", flush=True)
    if args.part in ("single", "all"):
        run_single(args)
    if args.part in ("zero3", "all"):
        run_zero3(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
