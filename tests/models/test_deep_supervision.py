"""Step-by-step deep supervision (models/deep_supervision.py) against one graph through the head.

The training forward of chunk_sft under head_gradient "last" differentiates each refinement step as it
is computed; its loss, metrics and every parameter's gradient must be those of the per-chunk loop,
which runs the head as one graph (`RefinementHead.forward`) and the objective's formula.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from benchmarks.bench_head_memory import saved_tensor_mb
from chunksft.models import HybridConfig, HybridModel
from chunksft.models.per_chunk_loop import per_chunk_loop
from chunksft.objectives.chunk_sft import chunk_sft_loss, supervised_steps
from tests.tolerance import assert_close_to_reference

C = 16
CASES = {  # HybridConfig overrides: what reaches the step-by-step gradient differs per case
    "trained_backbone": dict(freeze_backbone=False),
    "trained_backbone_full_bd3": dict(freeze_backbone=False, compact_noisy_stream=False),
    "every_other_step": dict(freeze_backbone=False, max_recursive_steps=4, deep_supervision_interval=2),
    "no_deep_supervision": dict(enable_deep_supervision=False),
    "mask_embedding_only": dict(train_mask_embedding=True, latent_steps=1),
}


def make_model(**overrides) -> HybridModel:
    torch.manual_seed(0)
    model = HybridModel(HybridConfig(**({"max_recursive_steps": 3} | overrides)))
    with torch.no_grad():  # a head that changes y and halts unevenly (the fresh head is the identity)
        model.head.delta.weight.normal_(std=0.02)
        model.head.halt.weight.normal_(std=0.2)
        if overrides.get("train_mask_embedding"):
            model.mask_embedding_delta.normal_(std=0.02)
    return model.train()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 512, (2, 21 + 3 * C), generator=g)
    prompts = torch.tensor([7, 21])  # not chunk-aligned; row 0 has three chunks, row 1 two + padding
    mask = torch.ones_like(ids)
    mask[1, 21 + 2 * C:] = 0
    chunk_masked = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    return ids * mask, mask, prompts, chunk_masked


def gradients(model: HybridModel) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def loop_objective(model: HybridModel, ids, prompts, chunk_masked):
    """The objective on the per-chunk loop's logits, in the model's dtype (fp64 for the reference)."""
    cfg = model.config
    steps, halts, targets = per_chunk_loop(model, ids, prompts, chunk_masked)
    keep = supervised_steps(len(steps), cfg.deep_supervision_interval)
    dtype = steps[0].dtype
    return chunk_sft_loss([F.cross_entropy(steps[k].flatten(0, -2), targets.flatten()) for k in keep],
                          [steps[k].argmax(dim=-1) for k in keep], [halts[k].to(dtype) for k in keep], targets,
                          deep_supervision_weight=cfg.deep_supervision_weight,
                          enable_deep_supervision=cfg.enable_deep_supervision)


@pytest.mark.parametrize("case", CASES)
def test_stepwise_gradient_equals_the_loop_through_one_graph(case):
    model = make_model(**CASES[case])
    ids, mask, prompts, chunk_masked = batch()
    out = model(ids, attention_mask=mask, prompt_lens=prompts, training_mode="chunk_sft", chunk_masked=chunk_masked)
    out.loss.backward()
    got = gradients(model)
    loss, metrics = loop_objective(model, ids, prompts, chunk_masked)
    loss.backward()
    baseline = gradients(model)
    model64 = copy.deepcopy(model).double()
    model64.config.backend = model64.lm_loss.backend = "eager"
    loss64, metrics64 = loop_objective(model64, ids, prompts, chunk_masked)
    loss64.backward()
    reference = gradients(model64)

    assert got.keys() == baseline.keys() == reference.keys()
    assert any(name.startswith("head.") for name in got)
    if CASES[case].get("freeze_backbone") is False:
        assert any(name.startswith("backbone.") for name in got)
    if CASES[case].get("train_mask_embedding"):
        assert "mask_embedding_delta" in got and not any(name.startswith("backbone.") for name in got)
    assert_close_to_reference("loss", out.loss, loss, loss64)
    for name in metrics:
        if name.startswith("chunk_acc"):  # fractions of chunks: exact
            assert torch.equal(out.metrics[name], metrics[name]), name
        else:
            assert_close_to_reference(name, out.metrics[name], metrics[name], metrics64[name])
    for name in got:
        assert_close_to_reference(f"grad {name}", got[name], baseline[name], reference[name])


def test_stepwise_forward_keeps_no_step_for_the_backward():
    """What autograd holds at the end of the forward does not grow with K under "last" (one step's
    graph at a time, freed before the next) and grows under "full" (one graph over all steps)."""
    ids, mask, prompts, chunk_masked = batch()
    saved = {}
    for gradient in ("last", "full"):
        for k in (1, 4):
            model = make_model(max_recursive_steps=k, head_gradient=gradient, freeze_backbone=False)
            saved[gradient, k] = saved_tensor_mb(lambda: model(ids, attention_mask=mask, prompt_lens=prompts,
                                                               training_mode="chunk_sft", chunk_masked=chunk_masked,
                                                               return_logits=False).loss)
    full_growth = saved["full", 4] - saved["full", 1]
    assert full_growth > 0
    # "last" holds the trained backbone's graph, the same for any K; what else stays alive with the
    # outputs differs by a few hundred KB, far below the steps' graphs that "full" keeps.
    assert abs(saved["last", 4] - saved["last", 1]) < 0.1 * full_growth


def test_loss_is_the_documented_formula():
    """chunk_sft_loss (built from `supervision_weights`) against the objective's docstring spelled out."""
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (5, 3), generator=g)
    ce = [torch.rand((), generator=g, dtype=torch.float64) for _ in range(4)]
    pred = [torch.where(torch.rand(5, 3, generator=g) < 0.7, targets, 0) for _ in range(4)]
    halt = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4)]
    correct = [(p == targets).all(dim=-1).double() for p in pred]
    bce = torch.stack([F.binary_cross_entropy_with_logits(h, c) for h, c in zip(halt, correct)]).mean()
    for enabled in (True, False):
        loss, metrics = chunk_sft_loss(ce, pred, halt, targets, deep_supervision_weight=0.3,
                                       enable_deep_supervision=enabled)
        want = ce[-1] + (0.3 * torch.stack(ce[:-1]).mean() if enabled else 0) + bce
        assert torch.allclose(loss, want, rtol=1e-12) and torch.allclose(metrics["halting_bce"], bce, rtol=1e-12)
    loss, _ = chunk_sft_loss(ce[:1], pred[:1], halt[:1], targets, deep_supervision_weight=0.3)
    assert torch.allclose(loss, ce[0] + F.binary_cross_entropy_with_logits(halt[0], correct[0]), rtol=1e-12)
