"""Deep supervision under TRM's gradient, differentiated step by step: head memory flat in K.

With head_gradient "last" the refinement steps share no graph: step 1 starts from the chunk states x
and the learned z_0, every later step from the detached (y, z) of the step before, and all of them
read the same x_proj = x_in(x). The chunk_sft loss is linear in its per-step terms
(`supervision_weights`: loss = sum_k a_k CE_k + b_k BCE_k), so its gradient is the sum over the
supervised steps of d(a_k CE_k + b_k BCE_k) / d(x, parameters), each of which needs only its own
step's graph. `StepwiseChunkSFT` forms each of them right after the step's forward and frees the
step's graph, keeping running sums: the head's activation memory is one step's whatever K is, and
nothing is recomputed (the backward work is the one-graph backward's, done earlier). The model's
autograd graph sees one node, `_PrecomputedGradient`, whose backward scales the sums by the
incoming gradient.

Loss, metrics and gradients are those of one graph through `RefinementHead.forward` (the path of
"full", of inference and of the per-chunk loop; tests/models/test_deep_supervision.py compares them).
Under ZeRO-3 every parameter read here must stay gathered through the whole forward: the engine
registers them on this module (`HybridModel.zero3_gathered_parameters`), and nothing inside calls a
module through its hooks (the head computes functionally, the final norm and the LM-head loss are
called through `.forward`), so no ZeRO-3 hook runs inside these early backward passes.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from chunksft.objectives.chunk_sft import chunk_sft_loss, halting_bce, supervised_steps, supervision_weights


class SupervisionResult(NamedTuple):
    """What `HybridModel.supervise` returns, on either path."""

    loss: torch.Tensor          # fp32 scalar; its backward delivers the precomputed gradient
    metrics: dict               # `chunk_sft_loss`'s detached scalars
    final_states: torch.Tensor  # y_K [M, C, H], detached
    predictions: torch.Tensor   # int64 [M, C]: argmax of the final step's logits
    chunk_ce: torch.Tensor      # fp32 [M]: the final step's CE per chunk


class _PrecomputedGradient(torch.autograd.Function):
    """`value` (a scalar computed without a graph) whose gradient w.r.t. `inputs` is already known:
    `grads[i]` is d value / d inputs[i]."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, grads: list[torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, grad_value: torch.Tensor):
        return None, None, *(g * grad_value.to(g.dtype) for g in ctx.grads)


class StepwiseChunkSFT(nn.Module):
    """The refinement head + the chunk_sft objective for head_gradient "last", differentiated step by
    step (module docstring). Holds no parameters: it reads the head's, the final norm's and the LM
    head's (under ZeRO-3 registered on it, so they are gathered around its forward and backward)."""

    def forward(self, head: nn.Module, final_norm: nn.Module, lm_loss: nn.Module, lm_head_weight: torch.Tensor,
                chunk_states: torch.Tensor, targets: torch.Tensor, num_steps: int, deep_supervision_weight: float,
                enable_deep_supervision: bool, deep_supervision_interval: int) -> SupervisionResult:
        """chunk_states: pre-norm [M, C, H] (may require grad: trained backbone or mask embedding);
        targets: int64 [M, C]; `lm_loss` is the model's `LMHeadLoss`. Steps outside
        `supervised_steps` run without gradient and are not decoded, as in the one-graph path."""
        keep = supervised_steps(num_steps, deep_supervision_interval)
        weights = dict(zip(keep, supervision_weights(len(keep), deep_supervision_weight, enable_deep_supervision)))
        inputs = [chunk_states, *head.parameters(), *final_norm.parameters(), lm_head_weight]
        x = chunk_states.detach().requires_grad_(chunk_states.requires_grad)
        leaves = [x, *inputs[1:]]
        trained = [i for i, t in enumerate(leaves) if t.requires_grad]
        sums: dict[int, torch.Tensor] = {}

        def accumulate(output: torch.Tensor, wrt: list[torch.Tensor], grad_output=None) -> list[torch.Tensor | None]:
            """Add d output / d leaves to the sums; return the gradients w.r.t. the extra tensors `wrt`."""
            grads = torch.autograd.grad(output, [*wrt, *(leaves[i] for i in trained)], grad_output, allow_unused=True)
            for i, g in zip(trained, grads[len(wrt):]):
                if g is not None:
                    sums[i] = g if i not in sums else sums[i] + g
            return list(grads[:len(wrt)])

        with torch.enable_grad():
            x_proj, y, z = head.start(x)
        x_leaf = x_proj.detach().requires_grad_(x_proj.requires_grad)
        x_proj_grad = None
        step_ce, step_pred, halt_logits, chunk_ce = [], [], [], None
        for k in range(num_steps):
            if k not in weights:
                with torch.no_grad():
                    y, z, _ = head.step(x_leaf, y, z)
                continue
            with torch.enable_grad():
                y, z, halt = head.step(x_leaf, y, z)
                ce, pred, chunk_ce = lm_loss.forward(final_norm.forward(y), lm_head_weight, targets)
                ce_weight, bce_weight = weights[k]
                step_loss = ce_weight * ce + bce_weight * halting_bce(halt, pred, targets)
            if step_loss.requires_grad:
                for g in accumulate(step_loss, [x_leaf] if x_leaf.requires_grad else []):
                    if g is not None:
                        x_proj_grad = g if x_proj_grad is None else x_proj_grad + g
            step_ce.append(ce.detach())
            step_pred.append(pred)
            halt_logits.append(halt.detach())
            y, z = y.detach(), z.detach()
        if x_proj_grad is not None:
            accumulate(x_proj, [], x_proj_grad)
        loss, metrics = chunk_sft_loss(step_ce, step_pred, halt_logits, targets,
                                       deep_supervision_weight=deep_supervision_weight,
                                       enable_deep_supervision=enable_deep_supervision)
        # Only the inputs that received a gradient enter the graph: a parameter no step reads with
        # gradient (z_0 when latent_steps > 1: it only feeds the updates without gradient) must stay
        # out of the backward, as it is in the one-graph path (ZeRO-3 expects no gradient hook for it).
        with_grad = sorted(sums)
        loss = _PrecomputedGradient.apply(loss, [sums[i] for i in with_grad], *(inputs[i] for i in with_grad))
        return SupervisionResult(loss, metrics, y, step_pred[-1], chunk_ce)
