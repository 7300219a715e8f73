"""The naive per-chunk loop: the model-level reference of the one-pass chunk_sft / bd3 forward.

Tests and benchmarks compare the one pass against it; training never runs it (docs/design.md §1).
It lives with the model because it drives the model's own parts (backbone under the block_causal
layout, refinement head, LM head); `chunksft.objectives` stays pure formulas.
"""
from __future__ import annotations

import torch

from chunksft.models.attention import ChunkLayout
from chunksft.objectives.chunk_sft import chunk_sft_loss, supervised_steps, token_ce


def per_chunk_loop(model, input_ids: torch.Tensor, prompt_lens: torch.Tensor, chunk_masked: torch.Tensor,
                   refine: bool = True, noisy_ids: torch.Tensor | None = None
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The naive baseline of the one-pass bd3 forward (tests and benchmarks only, never training).

    For each masked chunk i of row b (in `chunk_masked.nonzero()` order) a separate backbone forward
    over `prompt + clean chunks < i + noisy chunk i` under the single-stream block_causal layout,
    then (with `refine`) the head for the model's fixed number of steps.
    input_ids: int64 [B, L] clean; prompt_lens: int [B]; chunk_masked: bool [B, N]; noisy_ids:
    int64 [B, L] the x_t tokens of the chunks (bd3: partly masked), None = every chunk token masked.
    Returns (step_logits: K x [M, C, V], halt_logits: K x [M], targets: int64 [M, C]);
    `loop_loss` turns them into the objective.
    """
    size, mask_id = model.config.chunk_size, model.config.mask_token_id
    states, targets = [], []
    for row, chunk in chunk_masked.nonzero().tolist():
        end = int(prompt_lens[row]) + (chunk + 1) * size
        ids = input_ids[row:row + 1, :end].clone()
        targets.append(ids[0, -size:].clone())
        ids[0, -size:] = mask_id if noisy_ids is None else noisy_ids[row, end - size:end]
        layout = ChunkLayout("block_causal", prompt_lens=prompt_lens[row:row + 1].long(), chunk_size=size,
                             backend=model.config.backend)
        states.append(model.backbone_states(ids, layout)[0, -size:])
    chunk_states, targets = torch.stack(states), torch.stack(targets)
    if not refine:
        return [model.decode(chunk_states)], [], targets
    trace = model.refine(chunk_states)
    return [model.decode(y) for y in trace.states], trace.confidence, targets


def loop_loss(step_logits: list[torch.Tensor], halt_logits: list[torch.Tensor], targets: torch.Tensor, *,
              deep_supervision_weight: float, enable_deep_supervision: bool = True,
              deep_supervision_interval: int = 1):
    """`chunk_sft_loss` of `per_chunk_loop`'s logits (the eager reference of the objective), on the
    supervised steps."""
    if halt_logits:
        keep = supervised_steps(len(step_logits), deep_supervision_interval)
        step_logits, halt_logits = [step_logits[k] for k in keep], [halt_logits[k] for k in keep]
    return chunk_sft_loss([token_ce(logits, targets) for logits in step_logits],
                          [logits.argmax(dim=-1) for logits in step_logits], halt_logits, targets,
                          deep_supervision_weight=deep_supervision_weight,
                          enable_deep_supervision=enable_deep_supervision)
