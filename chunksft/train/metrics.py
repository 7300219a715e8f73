"""Rank-0 run logging: metrics.jsonl (one object per optimizer step), eval.jsonl, TensorBoard, loss PNG."""
from __future__ import annotations

import json
import os
from typing import Optional


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    break  # a line cut by a kill; everything after it is rewritten by the resumed run
    return rows


class MetricsLogger:
    """Writes `output_dir/metrics.jsonl` and `eval.jsonl` (+ TensorBoard under `output_dir/tensorboard`).

    On resume from step `start_step` the lines of steps after it (logged by the interrupted run
    after its last checkpoint) are dropped, so each step appears once and matches the weights.
    """

    def __init__(self, output_dir: str, *, start_step: int, tensorboard: bool):
        self.output_dir = output_dir
        self.paths = {name: os.path.join(output_dir, f"{name}.jsonl") for name in ("metrics", "eval")}
        for path in self.paths.values():
            kept = [row for row in _read_jsonl(path) if row.get("step", 0) <= start_step]
            with open(path, "w") as fh:
                fh.writelines(json.dumps(row) + "\n" for row in kept)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"), purge_step=start_step + 1)

    def log(self, kind: str, row: dict) -> None:
        """Append `row` (must hold "step") to `<kind>.jsonl` and TensorBoard scalars `<kind>/<key>`."""
        with open(self.paths[kind], "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{key}", value, row["step"])

    def close(self, plot: bool) -> Optional[str]:
        """Flush TensorBoard and, with `plot`, draw loss.png from the whole metrics history."""
        if self.writer is not None:
            self.writer.close()
        return plot_loss(self.output_dir) if plot else None


def plot_loss(output_dir: str) -> Optional[str]:
    """output_dir/loss.png: train loss per step (+ eval loss when logged) and, beside it, the held-out
    answer accuracy at the steps that evaluated it; None without data."""
    steps = _read_jsonl(os.path.join(output_dir, "metrics.jsonl"))
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy = {key: [(r["step"], r[key]) for r in steps if key in r] for key in ("accuracy", "accuracy_refined")}
    fig, axes = plt.subplots(1, 2 if accuracy["accuracy"] else 1, figsize=(12 if accuracy["accuracy"] else 7, 4),
                             squeeze=False)
    ax = axes[0, 0]
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label="train loss")
    evals = [r for r in _read_jsonl(os.path.join(output_dir, "eval.jsonl")) if "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if accuracy["accuracy"]:
        acc_ax = axes[0, 1]
        for key, label in (("accuracy", "without refinement"), ("accuracy_refined", "with refinement")):
            if accuracy[key]:
                acc_ax.plot(*zip(*accuracy[key]), "o-", label=label)
        acc_ax.set_xlabel("optimizer step")
        acc_ax.set_ylabel("held-out answer accuracy")
        acc_ax.set_ylim(0, 1)
        acc_ax.grid(alpha=0.3)
        acc_ax.legend()
    path = os.path.join(output_dir, "loss.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
