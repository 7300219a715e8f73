"""Cost model of one chunk_sft training step for the real configs: FLOPs per response token of the
backbone, the refinement head and the LM-head decodes, and which knob moves which term.

Analytic (no timing): matmul FLOPs only (2 per multiply-add), attention scores and values counted
with the average number of visible keys; norms, softmax and optimizer are left out. Backward of a
trained matmul costs 2x its forward (input and weight gradients), of a frozen one 1x (input only),
nothing where no gradient is needed.

The backbone shapes are the published config.json values of Qwen/Qwen3-1.7B and
GSAI-ML/LLaDA-8B-Instruct (the hub is not reachable from the CI machines, so they are written out).

    python -m benchmarks.cost_model          prints the table, writes results/cost_model.{csv,json,png}
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Backbone:
    name: str
    hidden: int          # H
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int           # V

    def mlp_params(self) -> int:
        return 3 * self.hidden * self.intermediate  # gated MLP: gate, up, down

    def matmul_params_per_layer(self) -> int:
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.hidden * (2 * q_out + 2 * kv_out) + self.mlp_params()  # q, o and k, v projections + MLP

    def forward_per_token(self, keys: float) -> float:
        """Forward FLOPs of one token through every layer, seeing `keys` keys on average."""
        scores_and_values = 4 * keys * self.heads * self.head_dim
        return self.layers * (2 * self.matmul_params_per_layer() + scores_and_values)


QWEN3_1_7B = Backbone("Qwen3-1.7B", hidden=2048, layers=28, heads=16, kv_heads=8, head_dim=128,
                      intermediate=6144, vocab=151936)
LLADA_8B = Backbone("LLaDA-8B", hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128,
                    intermediate=12288, vocab=126464)


@dataclass(frozen=True)
class Recipe:
    """The chunk_sft knobs (defaults: HybridConfig / configs/train/llada_8b_chunk_sft.yaml)."""
    prompt: int = 256                 # prompt tokens
    response: int = 512               # response tokens
    chunk: int = 16                   # C
    mask_probability: float = 0.3     # p: share of response chunks masked
    steps: int = 8                    # K = max_recursive_steps
    latent_steps: int = 2
    head_dim: int = 256               # d = head_hidden_size
    head_gradient: str = "last"       # "last" (TRM) | "full"
    decoded_steps: int | None = None  # steps whose CE is decoded (None = all K)
    freeze_backbone: bool = True
    stats_pass: bool = False          # a second LM-head matmul per step for argmax / per-row CE


def step_cost(bb: Backbone, r: Recipe) -> dict[str, float]:
    """FLOPs per response token of one training step (forward + backward), split by term."""
    length = r.prompt + r.response
    masked = r.mask_probability * r.response                 # masked tokens per row
    # Compact one-pass layout: the clean stream (L tokens, ~L/2 keys each under block causality,
    # without the last layer's MLP, whose outputs there are never read) plus the masked chunks of the
    # noisy stream (each sees its prefix, ~prompt + response/2 keys).
    clean = length * (bb.forward_per_token(length / 2) - 2 * bb.mlp_params())
    backbone_fwd = clean + masked * bb.forward_per_token(r.prompt + r.response / 2)
    backbone = backbone_fwd * (1 if r.freeze_backbone else 3)
    d, h = r.head_dim, bb.hidden
    core = 24 * d * d + 4 * r.chunk * d                      # one core block call per token
    step_fwd = (r.latent_steps + 1) * core + 4 * h * d       # z updates + y update; y_in and delta
    step_bwd = 2 * ((r.latent_steps + 1) * core if r.head_gradient == "full" else 2 * core) + 2 * 4 * h * d
    head = masked * (r.steps * (step_fwd + step_bwd) + 2 * h * d * 3)  # + x_in once (fwd + bwd)
    decoded = r.steps if r.decoded_steps is None else r.decoded_steps
    lm_head = 2 * h * bb.vocab
    # fused linear CE: forward logits, hidden gradient; weight gradient only for a trained head
    decode_per_step = lm_head * (2 + (0 if r.freeze_backbone else 1) + (1 if r.stats_pass else 0))
    decode = masked * decoded * decode_per_step
    return {"backbone": backbone / r.response, "head": head / r.response, "decode": decode / r.response}


KNOBS = [
    ("defaults (K=8, all steps decoded, TRM gradient)", {}),
    ("full head gradient", {"head_gradient": "full"}),
    ("second stats matmul (before the one-pass LM head)", {"stats_pass": True}),
    ("decode every other step (4 of 8)", {"decoded_steps": 4}),
    ("K = 4", {"steps": 4}),
    ("mask_probability 0.15", {"mask_probability": 0.15}),
    ("head_hidden_size 1024", {"head_dim": 1024}),
    ("backbone trained (not frozen)", {"freeze_backbone": False}),
]


def main() -> None:
    rows = []
    for bb in (QWEN3_1_7B, LLADA_8B):
        for label, change in KNOBS:
            recipe = Recipe(**change)
            cost = step_cost(bb, recipe)
            total = sum(cost.values())
            rows.append({"backbone": bb.name, "case": label, **{f"{k}_gflop": v / 1e9 for k, v in cost.items()},
                         "total_gflop": total / 1e9, **{f"{k}_share": v / total for k, v in cost.items()},
                         "recipe": asdict(recipe)})
    print("| backbone | case | backbone GFLOP/token | head | decode | total | backbone : head : decode |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backbone']} | {row['case']} | {row['backbone_gflop']:.2f} | {row['head_gflop']:.3f} | "
              f"{row['decode_gflop']:.2f} | {row['total_gflop']:.2f} | {row['backbone_share']:.0%} : "
              f"{row['head_share']:.0%} : {row['decode_share']:.0%} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cost_model.json").write_text(json.dumps(rows, indent=1))
    with open(RESULTS / "cost_model.csv", "w", newline="") as fh:
        fields = [k for k in rows[0] if k != "recipe"]
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows)


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, name in zip(axes, (QWEN3_1_7B.name, LLADA_8B.name)):
        mine = [r for r in rows if r["backbone"] == name]
        left = [0.0] * len(mine)
        for term, color in (("backbone", "#4c72b0"), ("head", "#dd8452"), ("decode", "#55a868")):
            values = [r[f"{term}_gflop"] for r in mine]
            ax.barh(range(len(mine)), values, left=left, color=color, label=term)
            left = [a + b for a, b in zip(left, values)]
        ax.set_yticks(range(len(mine)), [r["case"] for r in mine], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{name}: chunk_sft step, GFLOP per response token")
        ax.set_xlabel("GFLOP per response token (forward + backward)")
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "cost_model.png", dpi=110)


if __name__ == "__main__":
    main()
