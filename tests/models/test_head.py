"""The refinement head's gradient rules (issue 14): TRM's "last" and full backpropagation."""
from __future__ import annotations

import copy

import pytest
import torch

from chunksft.models.head import RefinementHead

M, C, H, D, K = 3, 8, 24, 16, 4


def make_head(gradient: str, latent_steps: int = 3) -> RefinementHead:
    torch.manual_seed(0)
    # Eager norms: `trm_reference` calls out_norm as a module (torch's RMSNorm), and the comparisons
    # here are exact, so both sides must run the same kernels.
    head = RefinementHead(H, D, 2, C, latent_steps, gradient=gradient, backend="eager")
    with torch.no_grad():  # a non-trivial head: the zero-initialised delta would hide every difference
        head.delta.weight.normal_(std=0.2)
        head.halt.weight.normal_(std=0.2)
    return head


def chunk_states() -> torch.Tensor:
    return torch.randn(M, C, H, generator=torch.Generator().manual_seed(1))


def trace_loss(states: list[torch.Tensor], confidence: list[torch.Tensor]) -> torch.Tensor:
    """A deep-supervision-like sum over every step (weights differ per step)."""
    return sum((k + 1) * (s.square().mean() + c.sigmoid().mean()) for k, (s, c) in enumerate(zip(states, confidence)))


def grads(head: RefinementHead, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in head.named_parameters()}


def trm_reference(head: RefinementHead, x: torch.Tensor, steps: int):
    """TRM's update spelled out with the head's own layers: per step, latent_steps - 1 z updates
    without gradient, the last z update and the y update with it; (y, z) carried detached."""
    x_proj = head.x_in(x)
    y, z = x, head.z_init.expand_as(x_proj)
    states, confidence = [], []
    for _ in range(steps):
        y_proj = head.y_in(y)
        with torch.no_grad():
            for _ in range(head.latent_steps - 1):
                z = head.core(z + x_proj + y_proj)
        z = head.core(z + x_proj + y_proj)
        update = head.out_norm(head.core(z + y_proj))
        y = y + head.delta(update)
        states.append(y)
        confidence.append(head.halt(update.mean(dim=1)).squeeze(-1).float())
        y, z = y.detach(), z.detach()
    return states, confidence


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_full_and_last_compute_the_same_forward(threshold):
    x = chunk_states()
    full, last = make_head("full")(x, K, threshold), make_head("last")(x, K, threshold)
    assert len(full.states) == len(last.states)
    for a, b in zip(full.states + full.confidence, last.states + last.confidence):
        assert torch.equal(a, b)
    assert torch.equal(full.steps, last.steps)


@pytest.mark.parametrize("latent_steps", [1, 3])
def test_last_is_the_trm_update(latent_steps):
    x = chunk_states()
    head = make_head("last", latent_steps)
    reference = copy.deepcopy(head)
    trace = head(x, K)
    got = grads(head, trace_loss(trace.states, trace.confidence))
    want = grads(reference, trace_loss(*trm_reference(reference, x, K)))
    assert got.keys() == want.keys()
    for name in got:
        assert torch.equal(got[name], want[name]), name


def test_last_truncates_what_full_backpropagates():
    """With 3 latent steps the learned z init only feeds updates that run without gradient under
    "last"; "full" trains it, and the two rules give different gradients elsewhere too."""
    x = chunk_states()
    full, last = make_head("full"), make_head("last")
    g_full = grads(full, trace_loss(*full(x, K)[:2]))
    g_last = grads(last, trace_loss(*last(x, K)[:2]))
    assert g_full["z_init"].abs().sum() > 0 and g_last["z_init"].abs().sum() == 0
    assert not torch.allclose(g_full["core.qkv.weight"], g_last["core.qkv.weight"])
