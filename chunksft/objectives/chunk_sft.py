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


def chunk_correct(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1.0 where a chunk's argmax is right at all C tokens: int64 [M, C] x2 -> float32 [M]"""
    return (predictions == targets).all(dim=-1).float()


def halting_bce(halt_logits: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE_k of the module docstring: halt logits [M], the step's argmax int64 [M, C], targets [M, C] -> scalar"""
    return F.binary_cross_entropy_with_logits(halt_logits, chunk_correct(predictions, targets).to(halt_logits.dtype))


def supervision_weights(num_supervised: int, deep_supervision_weight: float, enable_deep_supervision: bool = True
                        ) -> list[tuple[float, float]]:
    """(weight of CE_k, weight of BCE_k) per supervised step, the final step last: the loss of the module
    docstring is linear in the per-step terms, loss = sum_k a_k CE_k + b_k BCE_k."""
    intermediate = deep_supervision_weight / (num_supervised - 1) \
        if num_supervised > 1 and enable_deep_supervision else 0.0
    return [(intermediate, 1.0 / num_supervised)] * (num_supervised - 1) + [(1.0, 1.0 / num_supervised)]


def chunk_sft_loss(step_ce: list[torch.Tensor], step_predictions: list[torch.Tensor], halt_logits: list[torch.Tensor],
                   targets: torch.Tensor, *, deep_supervision_weight: float, enable_deep_supervision: bool = True
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The formula of the module docstring.

    step_ce: CE_k of the supervised steps (the final step last); step_predictions: their int64 [M, C]
    argmax l_k; halt_logits: their [M]; targets: int64 [M, C]. Returns (loss, metrics of detached scalars).
    """
    halting = [halting_bce(h, pred, targets) for h, pred in zip(halt_logits, step_predictions)]
    weights = supervision_weights(len(step_ce), deep_supervision_weight, enable_deep_supervision)
    loss = sum(a * ce + b * bce for (a, b), ce, bce in zip(weights, step_ce, halting))
    final = step_ce[-1]
    intermediate = torch.stack(step_ce[:-1]).mean() if len(step_ce) > 1 and enable_deep_supervision \
        else final.new_zeros(())
    metrics = {"ce_final": final.detach(), "ce_intermediate": intermediate.detach(),
               "halting_bce": torch.stack(halting).mean().detach(),
               "chunk_acc_final": chunk_correct(step_predictions[-1], targets).mean(),
               "chunk_acc_step1": chunk_correct(step_predictions[0], targets).mean()}
    return loss, metrics


def masked_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE over positions with labels != -100. logits [B, L, V]; labels [B, L] -> scalar fp32"""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
