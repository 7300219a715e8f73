"""Masked-diffusion loss of the "pretrain" / "sft" modes (LLaDA).

    loss = mean_b [ (1 / n_b) * sum_{p masked in b} CE(logits[b, p], x0[b, p]) / p_mask[b] ]

with n_b the number of maskable tokens of row b (all non-pad tokens in "pretrain", the response in
"sft"). Logits are not shifted: logits[b, p] predicts the token at p.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, p_mask: torch.Tensor,
                   maskable: torch.Tensor) -> torch.Tensor:
    """logits: [B, L, V]; targets: int64 [B, L]; masked, maskable: bool [B, L]; p_mask: float [B] -> scalar fp32."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    per_token = torch.where(masked, ce / p_mask[:, None], torch.zeros_like(ce))
    per_row = per_token.sum(dim=1) / maskable.sum(dim=1).clamp(min=1)
    return per_row.mean()
