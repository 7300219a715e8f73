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
