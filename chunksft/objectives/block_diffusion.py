"""Block-diffusion loss of the "bd3" mode (BD3-LM style, docs/design.md §1.7).

Every response chunk j of row b draws a rate t_bj and masks each of its tokens w.p. t_bj (at least
one); the x_t stream is predicted in one pass under the bd3 layout (clean previous chunks visible):

    loss = mean_b [ (1 / n_b) * sum_{p masked in b} CE(logits[b, p], x0[b, p]) / t_{b, chunk(p)} ]

with n_b the number of response tokens of row b (its whole chunks). Weighting by 1/t makes the
loss an unbiased estimate of the whole-chunk objective at every rate; whole-chunk masking is t = 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def block_diffusion_token_weights(rows: torch.Tensor, rate: torch.Tensor, response_tokens: torch.Tensor,
                                  batch: int) -> torch.Tensor:
    """Per masked token weight 1 / (t * n_b * B), so that the loss is the weighted CE *sum*.

    rows: int64 [M] row of each masked token; rate: float [M] t of its chunk; response_tokens: int [B] n_b.
    """
    return 1.0 / (rate.float() * response_tokens[rows].clamp(min=1).float() * batch)


def block_diffusion_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, rate: torch.Tensor,
                         response_tokens: torch.Tensor) -> torch.Tensor:
    """The module formula from full logits (the reference of the fused path).

    logits: [B, L, V]; targets: int64 [B, L]; masked: bool [B, L]; rate: float [B, L] (t of each
    position's chunk; read only where masked); response_tokens: int [B] -> scalar, fp32 (fp64 for
    fp64 logits).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)  # fp32 at least (fp64 stays fp64: test references)
    ce = F.cross_entropy(logits.to(dtype).flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    per_token = torch.where(masked, ce / torch.where(masked, rate.to(dtype), 1.0), torch.zeros_like(ce))
    return (per_token.sum(dim=1) / response_tokens.clamp(min=1).to(dtype)).mean()
