"""Step-by-step deep supervision (models/deep_supervision.py) against one graph through the head.

Training under head_gradient "last" differentiates each refinement step as it is computed
(`HybridModel.supervise` -> `StepwiseChunkSFT`). On the same chunk states its loss, metrics and
every gradient must be those of one graph through `RefinementHead.forward` + the objective's
formula on full logits; through the whole model, its gradients must be those of the per-chunk loop.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from benchmarks.bench_head_memory import saved_tensor_mb
from chunksft.models import HybridConfig, HybridModel
from chunksft.models.per_chunk_loop import per_chunk_loop
from chunksft.objectives.chunk_sft import chunk_sft_loss, supervised_steps
from tests.models.inputs import C, batch
from tests.tolerance import assert_close_to_reference

CASES = {  # HybridConfig overrides: what reaches the step-by-step gradient differs per case
    "defaults": {},
    "every_other_step": dict(max_recursive_steps=4, deep_supervision_interval=2),
    "no_deep_supervision": dict(enable_deep_supervision=False),
    "one_latent_step": dict(latent_steps=1),  # z_0 then feeds an update with gradient
}


def make_model(**overrides) -> HybridModel:
    torch.manual_seed(0)
    model = HybridModel(HybridConfig(**({"max_recursive_steps": 3} | overrides)))
    with torch.no_grad():  # a head that changes y and halts unevenly (the fresh head is the identity)
        model.head.delta.weight.normal_(std=0.02)
        model.head.halt.weight.normal_(std=0.2)
    return model.train()


def one_graph_objective(model: HybridModel, states: torch.Tensor, targets: torch.Tensor):
    """The head as one graph and the objective on full logits, in the model's dtype (fp64: the reference)."""
    cfg = model.config
    trace = model.refine(states)
    keep = supervised_steps(len(trace.states), cfg.deep_supervision_interval)
    logits = [model.decode(trace.states[k]) for k in keep]
    return chunk_sft_loss([F.cross_entropy(x.flatten(0, -2), targets.flatten()) for x in logits],
                          [x.argmax(dim=-1) for x in logits], [trace.confidence[k].to(states.dtype) for k in keep],
                          targets, deep_supervision_weight=cfg.deep_supervision_weight,
                          enable_deep_supervision=cfg.enable_deep_supervision)


def gradients(model: HybridModel, states: torch.Tensor) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["chunk states"] = states.grad.clone()
    model.zero_grad(set_to_none=True)
    states.grad = None
    return grads


@pytest.mark.parametrize("case", CASES)
def test_stepwise_equals_one_graph_on_the_same_chunk_states(case):
    model = make_model(**CASES[case])
    g = torch.Generator().manual_seed(2)
    hidden = model.config.backbone["hidden_size"]
    states = torch.randn(5, C, hidden, generator=g, requires_grad=True)  # M = 5 chunks (a trained backbone's)
    targets = torch.randint(5, 512, (5, C), generator=g)
    with torch.no_grad():  # chunks 1 and 2 right at the last step, the rest wrong: mixed halting targets
        targets[:3] = model.decode(model.refine(states).states[-1]).argmax(dim=-1)[:3]
        targets[0, 4] = (targets[0, 4] + 1) % 512

    out = model.supervise(states, targets)
    out.loss.backward()
    got = gradients(model, states)
    loss, metrics = one_graph_objective(model, states, targets)
    loss.backward()
    baseline = gradients(model, states)
    model64, states64 = copy.deepcopy(model).double(), states.detach().double().requires_grad_()
    loss64, metrics64 = one_graph_objective(model64, states64, targets)
    loss64.backward()
    reference = gradients(model64, states64)

    assert got.keys() == baseline.keys() == reference.keys()
    assert ("head.z_init" in got) == (case == "one_latent_step")  # z_0 feeds only no-grad updates otherwise
    assert_close_to_reference("loss", out.loss, loss, loss64)
    for name in metrics:
        if name.startswith("chunk_acc"):  # fractions of chunks: exact
            assert torch.equal(out.metrics[name], metrics[name]), name
        else:
            assert_close_to_reference(name, out.metrics[name], metrics[name], metrics64[name])
    assert 0 < metrics["chunk_acc_final"] < 1
    for name in got:
        assert_close_to_reference(f"grad {name}", got[name], baseline[name], reference[name])


@pytest.mark.parametrize("compact, return_logits", [(True, True), (True, False), (False, True)],
                         ids=["compact", "compact_chunk_states_only", "full_bd3"])
def test_model_gradient_equals_the_per_chunk_loop(compact, return_logits):
    """Through the whole model with a trained backbone: the one pass + step-by-step supervision gives
    every parameter the gradient of the per-chunk loop, which runs the head as one graph. Without
    logits (as in training) the compact pass skips the x_0 stream's last MLP: same gradients."""
    model = make_model(freeze_backbone=False, compact_noisy_stream=compact)
    ids, mask, prompts = batch([7, 21], [3, 2])  # prompts not chunk-aligned, row 1 padded
    chunk_masked = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    model(ids, attention_mask=mask, prompt_lens=prompts, training_mode="chunk_sft", chunk_masked=chunk_masked,
          return_logits=return_logits).loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    def loop_grads(m: HybridModel) -> dict[str, torch.Tensor]:
        steps, halts, targets = per_chunk_loop(m, ids, prompts, chunk_masked)
        keep = supervised_steps(len(steps), m.config.deep_supervision_interval)
        loss, _ = chunk_sft_loss([F.cross_entropy(steps[k].flatten(0, -2), targets.flatten()) for k in keep],
                                 [steps[k].argmax(dim=-1) for k in keep], [halts[k].to(steps[0].dtype) for k in keep],
                                 targets, deep_supervision_weight=m.config.deep_supervision_weight)
        loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    baseline = loop_grads(model)
    model64 = copy.deepcopy(model).double()
    model64.config.backend = model64.lm_loss.backend = "eager"
    reference = loop_grads(model64)
    assert got.keys() == baseline.keys() == reference.keys()
    assert any(name.startswith("backbone.") for name in got) and any(name.startswith("head.") for name in got)
    for name in got:
        assert_close_to_reference(f"grad {name}", got[name], baseline[name], reference[name])


def test_stepwise_forward_keeps_no_step_for_the_backward():
    """What autograd holds at the end of the forward does not grow with K under "last" (one step's
    graph at a time, freed before the next) and grows under "full" (one graph over all steps)."""
    ids, mask, prompts = batch([7, 21], [3, 2])
    saved = {}
    for gradient in ("last", "full"):
        for k in (1, 4):
            model = make_model(max_recursive_steps=k, head_gradient=gradient, freeze_backbone=False)
            saved[gradient, k] = saved_tensor_mb(lambda: model(ids, attention_mask=mask, prompt_lens=prompts,
                                                               training_mode="chunk_sft", return_logits=False).loss)
    full_growth = saved["full", 4] - saved["full", 1]
    assert full_growth > 0
    # "last" holds the trained backbone's graph, the same for any K; what else stays alive with the
    # outputs differs by a few hundred KB, far below the steps' graphs that "full" keeps.
    assert abs(saved["last", 4] - saved["last", 1]) < 0.1 * full_growth


def test_loss_is_the_documented_formula():
    """chunk_sft_loss (built from `supervision_weights`) against the objective's docstring spelled out,
    under the tolerance rule: fp32 against the spelled-out formula in fp32 and in fp64."""
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (5, 3), generator=g)
    ce64 = [torch.rand((), generator=g, dtype=torch.float64) for _ in range(4)]
    pred = [torch.where(torch.rand(5, 3, generator=g) < 0.7, targets, 0) for _ in range(4)]
    halt64 = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4)]

    def spelled_out(ce, halt, enabled, steps):
        """CE_K + w * mean_{k<K} CE_k + mean_k BCE_k over the first `steps` steps."""
        ce, halt = ce[:steps], halt[:steps]
        correct = [(p == targets).all(dim=-1).to(h.dtype) for p, h in zip(pred, halt)]
        bce = torch.stack([F.binary_cross_entropy_with_logits(h, c) for h, c in zip(halt, correct)]).mean()
        intermediate = 0.3 * torch.stack(ce[:-1]).mean() if enabled and steps > 1 else 0
        return ce[-1] + intermediate + bce, bce

    ce32, halt32 = [c.float() for c in ce64], [h.float() for h in halt64]
    for enabled, steps in ((True, 4), (False, 4), (True, 1)):
        loss, metrics = chunk_sft_loss(ce32[:steps], pred[:steps], halt32[:steps], targets,
                                       deep_supervision_weight=0.3, enable_deep_supervision=enabled)
        (want, bce), (want64, bce64) = spelled_out(ce32, halt32, enabled, steps), spelled_out(ce64, halt64, enabled,
                                                                                               steps)
        assert_close_to_reference("loss", loss, want, want64)
        assert_close_to_reference("halting_bce", metrics["halting_bce"], bce, bce64)
