"""Learning vs an autoregressive baseline at equal wall-clock (issue 12 item 4, docs/design.md §4).

    make train                                   # first: the hybrid (writes runs/tiny_bd3, runs/tiny)
    python -m benchmarks.bench_learning          # = make bench-learning
    python -m benchmarks.bench_learning --runs DIR --budget 30 --results-dir /tmp/out

The hybrid side is read, not re-run: `make train` logs one metrics.jsonl row per optimizer step with
`train_seconds` (wall clock without evaluation and saving) and, on evaluation steps, the held-out
validation accuracy without (`accuracy`) and with refinement (`accuracy_refined`, stage 2 only); its
test numbers are in runs/tiny/test_accuracy.json. Its curve puts stage-1 points at their
train_seconds and stage-2 points at (stage-1 total + their train_seconds).

The baseline is trained here: transformers' own causal LM (AutoModelForCausalLM.from_config, SDPA)
with the hybrid's backbone config (the stage-1 export's hf/config.json "backbone", else the tiny
default), the bundled tokenizer and the same training split (prompt + response + one EOS; loss on
the response and that EOS only; right padding; shuffled with a fixed seed), AdamW, linear warm-up
then cosine decay to 10% over elapsed training seconds / budget, one process with --threads torch
threads. Budget = the hybrid's total train_seconds (stage 1 + stage 2) unless --budget is given.
Evaluation (excluded from the budget) runs when training time crosses k/--eval-points of the budget
(k = 1..eval-points, the last one is the end) on the hybrid's validation rows (the first --eval-rows
rows of the bundled validation split), and at the end on the first --test-rows test rows: greedy
`generate` with left padding, stopping at EOS or `</answer>` (where the hybrid's decoding stops too),
and the hybrid's answer extraction (`extract_answer`, exact match with the reference answer).

Writes <results-dir>/learning.{csv,json,png} and prints a table and a one-line verdict.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.harness import RESULTS, machine

SERIES = ("hybrid", "hybrid_refined", "causal_lm")
LABELS = {"hybrid": "hybrid, without refinement", "hybrid_refined": "hybrid, with refinement",
          "causal_lm": "causal LM (same backbone size)"}
# launch/train.sh's stage-1 output dir under OUTPUT_ROOT (its name changed over time; stage 2 is "tiny").
STAGE1_NAMES = ("tiny_bd3", "tiny_pretrain")
CSV_FIELDS = ("series", "stage", "split", "step", "train_seconds", "rows_seen", "eval_rows", "accuracy", "loss")


class BenchError(Exception):
    """A one-line, user-facing error (missing runs, unreadable files)."""


# ------------------------------------------------------------------ the hybrid's side (read from runs/)
def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    print(f"warning: {path}:{number}: not JSON, ignored (a line cut by a kill?)", file=sys.stderr)
    return rows


def cumulative_seconds(rows: list[dict]) -> list[float]:
    """train_seconds made cumulative: a resumed run restarts its clock at 0, so a drop continues from
    the last value before it."""
    out, offset, last = [], 0.0, 0.0
    for row in rows:
        value = float(row.get("train_seconds", row.get("time", 0.0)))
        if value < last:
            offset += last
        last = value
        out.append(offset + value)
    return out


def run_config(run_dir: Path) -> dict:
    """The resolved training config stored in the newest complete checkpoint marker ({} if none)."""
    best, config = -1, {}
    for marker in glob.glob(str(run_dir / "checkpoints" / "*" / "COMPLETE")):
        try:
            meta = json.loads(Path(marker).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta.get("config"), dict) and int(meta.get("step", 0)) > best:
            best, config = int(meta.get("step", 0)), meta["config"]
    return config


def rows_per_step(run_dir: Path) -> int | None:
    """Training rows per optimizer step of a run (batch x accumulation x ranks), None if unknown."""
    training = run_config(run_dir).get("training", {})
    try:
        world = json.loads((run_dir / "run_info.json").read_text())["world_size"]
        return int(training["batch_size"]) * int(training.get("gradient_accumulation_steps", 1)) * int(world)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_stage(run_dir: Path, stage: int, offset: float) -> dict:
    """One stage of the hybrid: its accuracy points (seconds shifted by `offset`) and totals."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    seconds = cumulative_seconds(rows)
    per_step = rows_per_step(run_dir)
    points = {"hybrid": [], "hybrid_refined": []}
    for row, sec in zip(rows, seconds):
        for key, series in (("accuracy", "hybrid"), ("accuracy_refined", "hybrid_refined")):
            if row.get(key) is not None:
                points[series].append({"stage": stage, "step": row["step"], "train_seconds": round(offset + sec, 3),
                                       "rows_in_stage": per_step * row["step"] if per_step else None,
                                       "accuracy": float(row[key]), "loss": row.get("loss")})
    last_step = rows[-1]["step"] if rows else 0
    return {"dir": str(run_dir), "steps": last_step, "train_seconds": round(seconds[-1] if seconds else 0.0, 3),
            "rows_per_step": per_step, "rows_seen": per_step * last_step if per_step else None,
            "eval_generate_rows": run_config(run_dir).get("data", {}).get("eval_generate_rows"),
            "metrics_mtime": time.strftime("%Y-%m-%d %H:%M:%S",
                                           time.localtime(os.path.getmtime(run_dir / "metrics.jsonl"))),
            "points": points}


def find_stage1(runs: Path, stage2_dir: Path) -> Path | None:
    """Stage 1's run dir: the one whose export stage 2 started from (its model.name_or_path), else
    runs/<one of STAGE1_NAMES>; None when none has a metrics.jsonl."""
    candidates = []
    source = run_config(stage2_dir).get("model", {}).get("name_or_path")
    if isinstance(source, str) and source:
        candidates += [Path(source).parent, Path(source)]
    candidates += [runs / name for name in STAGE1_NAMES]
    return next((c for c in candidates if (c / "metrics.jsonl").is_file() and c.resolve() != stage2_dir.resolve()),
                None)


def read_hybrid(runs: Path) -> dict:
    stage2_dir = runs / "tiny"
    if not (stage2_dir / "metrics.jsonl").is_file():
        raise BenchError(f"{stage2_dir / 'metrics.jsonl'} not found: run `make train` first (it writes the hybrid's "
                         f"runs under {runs}/), or pass --runs DIR")
    dataset = run_config(stage2_dir).get("data", {}).get("dataset_name") or "bundled"
    if dataset != "bundled" and not dataset.startswith("bundled:"):
        raise BenchError(f"the hybrid under {runs}/ was trained on {dataset!r}; this bench compares on the bundled "
                         f"data only: run `make train` without DATASET (or pass --runs DIR of such a run)")
    stage1_dir = find_stage1(runs, stage2_dir)
    if stage1_dir is not None:
        stage1 = read_stage(stage1_dir, 1, 0.0)
    else:
        print(f"warning: no stage-1 run ({' or '.join(str(runs / n) for n in STAGE1_NAMES)}) with a metrics.jsonl: "
              f"the hybrid's budget counts stage 2 only", file=sys.stderr)
        stage1 = None
    stage2 = read_stage(stage2_dir, 2, stage1["train_seconds"] if stage1 else 0.0)
    test = None
    if (stage2_dir / "test_accuracy.json").is_file():
        test = json.loads((stage2_dir / "test_accuracy.json").read_text())
    total = (stage1["train_seconds"] if stage1 else 0.0) + stage2["train_seconds"]
    curves = {series: (stage1["points"][series] if stage1 else []) + stage2["points"][series]
              for series in ("hybrid", "hybrid_refined")}
    rows_stage1 = stage1["rows_seen"] if stage1 else 0
    for points in curves.values():  # rows seen so far over both stages
        for p in points:
            inside = p.pop("rows_in_stage")
            p["rows_seen"] = None if inside is None or rows_stage1 is None else \
                inside + (rows_stage1 if p["stage"] == 2 else 0)
    return {"stage1": stage1, "stage2": stage2, "test": test, "train_seconds": round(total, 3), "curves": curves,
            "dataset": dataset,
            "rows_seen": None if rows_stage1 is None or stage2["rows_seen"] is None
            else rows_stage1 + stage2["rows_seen"]}


def backbone_config(runs: Path, stage1_dir: str | None = None):
    """The hybrid's backbone as a transformers config (+ where it came from)."""
    from transformers import AutoConfig

    from chunksft.models.config import TINY_BACKBONE

    fields, source = dict(TINY_BACKBONE), "chunksft.models.config.TINY_BACKBONE (no exported config found)"
    dirs = ([Path(stage1_dir)] if stage1_dir else []) + [runs / name for name in STAGE1_NAMES] + [runs / "tiny"]
    for candidate in (d / "hf" / "config.json" for d in dirs):
        if candidate.is_file():
            fields.update(json.loads(candidate.read_text()).get("backbone") or {})
            source = str(candidate)
            break
    for key in ("_attn_implementation", "attn_implementation", "architectures", "auto_map", "_name_or_path",
                "transformers_version"):
        fields.pop(key, None)
    return AutoConfig.for_model(fields.pop("model_type"), **fields), source


# ------------------------------------------------------------------ the causal LM baseline
def causal_rows(items, eos: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row: prompt + response + one EOS; labels only on response and that EOS."""
    out = []
    for item in items:
        ids, p = item["input_ids"], item["prompt_len"]
        response = list(ids[p:])
        ended = bool(response) and response[-1] == eos  # rows truncated by max_length have no EOS
        while response and response[-1] == eos:
            response.pop()
        if ended:
            response.append(eos)
        out.append((list(ids[:p]) + response, [-100] * p + response))
    return out


def collate(rows, pad: int) -> dict:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batches(rows, batch_size: int, seed: int):
    """Endless shuffled batches (a new fixed-seed permutation every epoch)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(rows), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            yield [rows[i] for i in order[start:start + batch_size]]


def learning_rate(base: float, step: int, progress: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over `warmup` steps times a cosine from 1 to `floor` over progress = seconds / budget."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    progress = min(max(progress, 0.0), 1.0)
    return base * warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def causal_accuracy(model, tokenizer, items, *, max_new_tokens: int, batch_size: int, stop_ids: list[int]) -> float:
    """Greedy decoding with left padding; the hybrid's answer extraction and exact match."""
    from chunksft.data.template import extract_answer

    was_training = model.training
    model.eval()
    pad, correct = tokenizer.pad_token_id, 0
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        prompts = [list(item["input_ids"][:item["prompt_len"]]) for item in batch]
        width = max(map(len, prompts))
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=stop_ids)
        for item, generated in zip(batch, out[:, width:].tolist()):
            response = []
            for token in generated:
                if token in (tokenizer.eos_token_id, pad):
                    break
                response.append(token)
            predicted = extract_answer(tokenizer.decode(response))
            correct += int(predicted is not None and predicted == item["answer"].strip())
    model.train(was_training)
    return correct / max(len(items), 1)


def train_causal_lm(args, config, budget: float, eval_rows: int, test_rows: int, dataset: str = "bundled") -> dict:
    from transformers import AutoModelForCausalLM, GenerationConfig

    from chunksft.data import build_dataset, load_tokenizer

    tokenizer = load_tokenizer()
    common = dict(tokenizer=tokenizer, chunk_size=args.chunk_size, max_length=args.max_length)
    started = time.time()
    train, _ = build_dataset(dataset, split="train", max_rows=args.train_rows, **common)
    validation, _ = build_dataset(dataset, split="validation", max_rows=eval_rows, **common)
    test, _ = build_dataset(dataset, split="test", max_rows=test_rows, **common)
    validation = [validation[i] for i in range(len(validation))]
    test = [test[i] for i in range(len(test))]
    rows = causal_rows(train.rows, tokenizer.eos_token_id)
    print(f"causal LM data ({dataset}): {len(rows)} training rows, {len(validation)} validation rows, "
          f"{len(test)} test rows "
          f"(tokenized in {time.time() - started:.1f} s, not counted)")

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    answer_close = tokenizer.convert_tokens_to_ids("</answer>")
    stop_ids = [tokenizer.eos_token_id] + ([answer_close] if isinstance(answer_close, int) and
                                           answer_close != tokenizer.unk_token_id else [])
    evaluate = dict(max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size, stop_ids=stop_ids)
    print(f"causal LM: {type(model).__name__}, {parameters:,} parameters, budget {budget:.1f} training seconds, "
          f"batch {args.batch_size}, lr {args.lr}, {torch.get_num_threads()} threads")

    marks = [budget * k / args.eval_points for k in range(1, args.eval_points)] + [budget]  # the last one: the end
    stream = batches(rows, args.batch_size, args.seed)
    model.train()
    seconds, step, seen, eval_seconds = 0.0, 0, 0, 0.0
    losses, points = [], []
    while seconds < budget:
        tick = time.perf_counter()
        batch_rows = next(stream)
        lr = learning_rate(args.lr, step, seconds / budget, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(**collate(batch_rows, tokenizer.pad_token_id)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seconds += time.perf_counter() - tick
        step += 1
        seen += len(batch_rows)
        losses.append(loss.detach().item())
        if marks and seconds >= marks[0]:
            while marks and seconds >= marks[0]:
                marks.pop(0)
            aside = time.perf_counter()
            accuracy = causal_accuracy(model, tokenizer, validation, **evaluate)
            eval_seconds += time.perf_counter() - aside
            mean_loss = sum(losses) / len(losses)
            losses = []
            points.append({"stage": None, "step": step, "train_seconds": round(seconds, 3), "rows_seen": seen,
                           "accuracy": accuracy, "loss": round(mean_loss, 5)})
            print(f"  causal LM  step {step:5d}  {seconds:8.1f} s  rows {seen:7d}  loss {mean_loss:.4f}  "
                  f"validation accuracy {accuracy:.1%}  (eval {time.perf_counter() - aside:.1f} s)", flush=True)
    aside = time.perf_counter()
    test_accuracy = causal_accuracy(model, tokenizer, test, **evaluate)
    eval_seconds += time.perf_counter() - aside
    return {"model": type(model).__name__, "parameters": parameters, "train_seconds": round(seconds, 3),
            "steps": step, "rows_seen": seen, "epochs": round(seen / len(rows), 3), "train_rows": len(rows),
            "eval_seconds": round(eval_seconds, 1), "validation_rows": len(validation), "stop_token_ids": stop_ids,
            "test": {"rows": len(test), "accuracy": test_accuracy}, "points": points}


# ------------------------------------------------------------------ output
def loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def final_numbers(hybrid: dict, causal: dict) -> dict:
    """Hybrid without / with refinement vs the causal LM: test split when the hybrid has it, else the
    last validation points."""
    test = hybrid["test"]
    if test is not None:
        return {"split": "test", "hybrid_rows": test.get("rows"), "causal_lm_rows": causal["test"]["rows"],
                "hybrid": test.get("accuracy"), "hybrid_refined": test.get("accuracy_refined"),
                "mean_refinement_steps": test.get("mean_refinement_steps"), "causal_lm": causal["test"]["accuracy"]}
    last = {s: (hybrid["curves"][s][-1]["accuracy"] if hybrid["curves"][s] else None)
            for s in ("hybrid", "hybrid_refined")}
    return {"split": "validation", "hybrid_rows": hybrid["stage2"].get("eval_generate_rows"),
            "causal_lm_rows": causal["validation_rows"], **last, "mean_refinement_steps": None,
            "causal_lm": causal["points"][-1]["accuracy"] if causal["points"] else None}


def verdict(budget: float, hybrid_seconds: float, final: dict) -> str:
    refined = f" ({pct(final['hybrid_refined'])} with refinement)" if final.get("hybrid_refined") is not None else ""
    line = (f"at equal wall-clock ({budget:.0f} s) the hybrid gets {pct(final['hybrid'])}{refined} vs the causal LM "
            f"{pct(final['causal_lm'])} ({final['split']} split)")
    if abs(budget - hybrid_seconds) > 0.01 * max(hybrid_seconds, 1.0):
        line += f" [budget set by --budget: the hybrid trained {hybrid_seconds:.0f} s]"
    return line


def write_outputs(results: Path, hybrid: dict, causal: dict, meta: dict, final: dict, line: str) -> list[dict]:
    results.mkdir(parents=True, exist_ok=True)
    records = []
    for series in ("hybrid", "hybrid_refined"):
        for p in hybrid["curves"][series]:
            records.append({"series": series, "split": "validation",
                            "eval_rows": hybrid["stage2"].get("eval_generate_rows"), **p})
    for p in causal["points"]:
        records.append({"series": "causal_lm", "split": "validation", "eval_rows": causal["validation_rows"], **p})
    end = {"hybrid": hybrid["train_seconds"], "causal_lm": causal["train_seconds"]}
    if hybrid["test"] is not None:
        for series, key in (("hybrid", "accuracy"), ("hybrid_refined", "accuracy_refined")):
            if hybrid["test"].get(key) is not None:
                records.append({"series": series, "stage": 2, "split": "test", "step": hybrid["stage2"]["steps"],
                                "train_seconds": end["hybrid"], "rows_seen": hybrid["rows_seen"],
                                "eval_rows": hybrid["test"].get("rows"), "accuracy": hybrid["test"][key]})
    records.append({"series": "causal_lm", "split": "test", "step": causal["steps"], "train_seconds": end["causal_lm"],
                    "rows_seen": causal["rows_seen"], "eval_rows": causal["test"]["rows"],
                    "accuracy": causal["test"]["accuracy"]})
    with open(results / "learning.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    curves = {s: [r for r in records if r["series"] == s and r["split"] == "validation"] for s in SERIES}
    hybrid_summary = {k: hybrid[k] for k in ("train_seconds", "rows_seen", "test")}
    for stage in ("stage1", "stage2"):
        hybrid_summary[stage] = {k: v for k, v in hybrid[stage].items() if k != "points"} if hybrid[stage] else None
    causal_summary = {k: v for k, v in causal.items() if k != "points"}
    data = {"meta": meta, "budget_seconds": meta["budget_seconds"], "verdict": line, "final": final,
            "hybrid": hybrid_summary, "causal_lm": causal_summary, "curves": curves,
            "markdown": markdown(final, hybrid, causal, meta)}
    (results / "learning.json").write_text(json.dumps(data, indent=1) + "\n")
    plot(results / "learning.png", curves, hybrid, causal, final, meta)
    return records


def markdown(final: dict, hybrid: dict, causal: dict, meta: dict) -> str:
    rows = ["| model | training seconds | rows seen | accuracy without refinement | with refinement |",
            "|---|---:|---:|---:|---:|",
            f"| hybrid (bd3 backbone + refinement head) | {hybrid['train_seconds']:.0f} | "
            f"{hybrid['rows_seen'] or '-'} | "
            f"{pct(final['hybrid'])} | {pct(final['hybrid_refined'])} |",
            f"| causal LM, same backbone size | {causal['train_seconds']:.0f} | {causal['rows_seen']} | "
            f"{pct(final['causal_lm'])} | - |"]
    return (f"{final['split']} split ({final['hybrid_rows']} rows hybrid, {final['causal_lm_rows']} rows causal LM); "
            f"{meta['cpu']}\n\n" + "\n".join(rows))


def plot(path: Path, curves: dict, hybrid: dict, causal: dict, final: dict, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    styles = {"hybrid": ("C0", "o-"), "hybrid_refined": ("C1", "s-"), "causal_lm": ("C2", "^-")}
    for series in SERIES:
        color, style = styles[series]
        pts = curves[series]
        if pts:
            ax.plot([p["train_seconds"] for p in pts], [100 * p["accuracy"] for p in pts], style, color=color,
                    label=f"{LABELS[series]} (validation)")
        value = final.get(series)
        if value is not None and final["split"] == "test":
            x = causal["train_seconds"] if series == "causal_lm" else hybrid["train_seconds"]
            ax.plot([x], [100 * value], "*", color=color, markersize=14, markeredgecolor="k",
                    label=f"{LABELS[series]}: test {value:.1%}")
    if hybrid["stage1"]:
        ax.axvline(hybrid["stage1"]["train_seconds"], color="gray", ls=":", lw=1)
        ax.text(hybrid["stage1"]["train_seconds"], 2, " stage 2 (head)", color="gray", fontsize=8)
    ax.set_xlabel("training wall-clock seconds (evaluation and saving excluded)")
    ax.set_ylabel("held-out answer accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"learning at equal wall-clock ({meta['budget_seconds']:.0f} s), {meta['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_table(records: list[dict], line: str) -> None:
    header = f"{'series':<16} {'split':<11} {'stage':>5} {'step':>6} {'train s':>9} {'rows seen':>10} {'rows':>5} " \
             f"{'accuracy':>9}"
    print("\n== learning ==")
    print(header)
    print("-" * len(header))
    for r in records:
        print(f"{r['series']:<16} {r['split']:<11} {r.get('stage') or '-':>5} {r['step']:>6} "
              f"{r['train_seconds']:>9.1f} {r.get('rows_seen') or '-':>10} {r.get('eval_rows') or '-':>5} "
              f"{r['accuracy']:>9.1%}")
    print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs", help="OUTPUT_ROOT of `make train` (reads tiny/ and the stage-1 run)")
    parser.add_argument("--budget", type=float, default=None,
                        help="training seconds of the causal LM (default: the hybrid's stage 1 + 2 train_seconds)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the (single) baseline process")
    parser.add_argument("--eval-points", type=int, default=6, help="validation evaluations, evenly spaced in time")
    parser.add_argument("--eval-rows", type=int, default=None,
                        help="first rows of the validation split (default: the hybrid's eval_generate_rows, else 200)")
    parser.add_argument("--test-rows", type=int, default=None,
                        help="first rows of the test split (default: the hybrid's test_accuracy.json rows, else 500)")
    parser.add_argument("--train-rows", type=int, default=None, help="cap on training rows (default: the whole split)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.eval_points < 1 or args.batch_size < 1 or (args.budget is not None and args.budget <= 0):
        parser.error("--eval-points and --batch-size must be >= 1 and --budget > 0")

    torch.set_num_threads(args.threads)
    load_start = loadavg()
    runs = Path(args.runs)
    try:
        hybrid = read_hybrid(runs)
    except (BenchError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else hybrid["train_seconds"]
    if budget <= 0:
        print(f"error: the hybrid's metrics under {runs} record no training seconds; pass --budget SECONDS",
              file=sys.stderr)
        return 2
    eval_rows = args.eval_rows or hybrid["stage2"].get("eval_generate_rows") or 200
    test_rows = args.test_rows or (hybrid["test"] or {}).get("rows") or 500
    config, config_source = backbone_config(runs, hybrid["stage1"]["dir"] if hybrid["stage1"] else None)
    print(f"hybrid: {hybrid['train_seconds']:.1f} training seconds (stage 1 "
          f"{hybrid['stage1']['train_seconds'] if hybrid['stage1'] else 0:.1f} s + stage 2 "
          f"{hybrid['stage2']['train_seconds']:.1f} s); backbone config from {config_source}")

    causal = train_causal_lm(args, config, budget, eval_rows, test_rows, hybrid["dataset"])

    meta = {**machine(), "loadavg_start": load_start, "loadavg_end": loadavg(),
            "budget_seconds": round(budget, 3), "budget_source": "--budget" if args.budget is not None else
            "hybrid stage 1 + stage 2 train_seconds", "runs": str(runs), "dataset": hybrid["dataset"],
            "backbone_config": config_source,
            "backbone": {k: v for k, v in config.to_dict().items()
                         if k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                  "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings")},
            "causal_lm_setup": {"threads": args.threads, "processes": 1, "batch_size": args.batch_size, "lr": args.lr,
                                "warmup_steps": args.warmup_steps, "schedule": "cosine to 10% over seconds / budget",
                                "optimizer": "AdamW (weight decay 0.01, grad clip 1.0)", "attention": "sdpa",
                                "max_new_tokens": args.max_new_tokens, "eval_points": args.eval_points,
                                "seed": args.seed},
            "hybrid_measured": hybrid["stage2"]["metrics_mtime"]}
    final = final_numbers(hybrid, causal)
    line = verdict(budget, hybrid["train_seconds"], final)
    results = Path(args.results_dir)
    records = write_outputs(results, hybrid, causal, meta, final, line)
    print_table(records, line)
    print(f"results: {results / 'learning'}.{{csv,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
