"""Chunk-SFT objective with deep supervision over the refinement steps.

For the M masked chunks of a batch (targets t: [M, C]) and refinement steps k = 1..K with logits
l_k: [M, C, V] and halting logits h_k: [M]:

    CE_k   = mean over the M*C tokens of cross_entropy(l_k, t)
    BCE_k  = mean over chunks of BCE_with_logits(h_k, 1[argmax l_k == t for all C tokens])
    loss   = CE_K + deep_supervision_weight * mean_{k in S, k<K} CE_k + mean_{k in S} BCE_k

over the supervised steps S = {k : k % deep_supervision_interval == 0} plus K (`supervised_steps`;
interval 1, the default, is every step). Only the steps of S are decoded through the LM head, which
at real vocabularies is the largest per-step cost; the final term never changes. (The intermediate
term is 0 when S = {K} or deep supervision is disabled.) Without refinement the
loss is CE of the backbone's logits on the masked tokens. The loss takes CE_k and argmax l_k rather
than l_k, so the model can compute them without materialising the logits (fused linear CE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE in fp32. logits [..., V], targets [...] -> scalar"""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten())


def supervised_steps(num_steps: int, interval: int) -> list[int]:
    """0-based indices of the refinement steps that enter the loss: every `interval`-th, and the last."""
    if interval < 1:
        raise ValueError(f"deep_supervision_interval must be >= 1, got {interval}")
    return sorted({k for k in range(num_steps) if (k + 1) % interval == 0} | {num_steps - 1})


def chunk_sft_loss(step_ce: list[torch.Tensor], step_predictions: list[torch.Tensor], halt_logits: list[torch.Tensor],
                   targets: torch.Tensor, *, deep_supervision_weight: float, enable_deep_supervision: bool = True
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The formula of the module docstring.

    step_ce: CE_k of the supervised steps (the final step last); step_predictions: their int64 [M, C]
    argmax l_k; halt_logits: their [M]; targets: int64 [M, C]. Returns (loss, metrics of detached scalars).
    """
    final = step_ce[-1]
    intermediate = torch.stack(step_ce[:-1]).mean() if len(step_ce) > 1 and enable_deep_supervision \
        else final.new_zeros(())
    correct = [(pred == targets).all(dim=-1).float() for pred in step_predictions]
    halting = torch.stack([F.binary_cross_entropy_with_logits(h, c) for h, c in zip(halt_logits, correct)]).mean()
    loss = final + deep_supervision_weight * intermediate + halting
    metrics = {"ce_final": final.detach(), "ce_intermediate": intermediate.detach(), "halting_bce": halting.detach(),
               "chunk_acc_final": correct[-1].mean(), "chunk_acc_step1": correct[0].mean()}
    return loss, metrics


def masked_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE over positions with labels != -100. logits [B, L, V]; labels [B, L] -> scalar fp32"""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


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
    from chunksft.models.attention import ChunkLayout

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
