"""One-pass bd3 chunk_sft == the per-chunk loop; causality of the chunk layout; frozen backbone; the
last MLP on the read positions only."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from chunksft.models import ChunkLayout, HybridConfig, HybridModel
from chunksft.models.config import TINY_BACKBONE
from chunksft.models.per_chunk_loop import loop_loss, per_chunk_loop
from chunksft.objectives.chunk_sft import chunk_sft_loss
from tests.models.inputs import C, batch
from tests.tolerance import assert_close_to_reference


@pytest.fixture(scope="module", params=[True, False], ids=["compact", "full_bd3"])
def model(request):
    torch.manual_seed(0)
    m = HybridModel(HybridConfig(max_recursive_steps=3, freeze_backbone=False, compact_noisy_stream=request.param))
    # A non-zero delta so the refinement actually changes y (the fresh head starts as identity).
    torch.nn.init.normal_(m.head.delta.weight, std=0.02)
    return m.eval()


def test_one_pass_equals_per_chunk_loop(model):
    ids, mask, prompts = batch([7, 21, 16], [3, 2, 4])  # prompts not chunk-aligned, ragged rows
    chunk_masked = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask, prompt_lens=prompts, training_mode="chunk_sft",
                      chunk_masked=chunk_masked, refine=False)
        refined = model(ids, attention_mask=mask, prompt_lens=prompts, training_mode="chunk_sft",
                        chunk_masked=chunk_masked, refine=True)
        loop_plain, _, targets = per_chunk_loop(model, ids, prompts, chunk_masked, refine=False)
        loop_steps, loop_halt, _ = per_chunk_loop(model, ids, prompts, chunk_masked, refine=True)

    index = plain.chunk_index
    positions = prompts[index[:, 0], None] + index[:, 1:] * C + torch.arange(C)
    one_pass = plain.logits[index[:, :1], positions]
    assert torch.equal(plain.chunk_targets, targets)
    # Tolerance rule (tests/tolerance.py): the one pass against the loop at fp32 (the baseline) and the
    # loop of an fp64 eager copy of the model (the reference), the loss with its CE terms in fp64.
    model64 = copy.deepcopy(model).double()
    model64.config.backend = model64.lm_loss.backend = "eager"
    with torch.no_grad():
        loop64_plain, _, _ = per_chunk_loop(model64, ids, prompts, chunk_masked, refine=False)
        loop64_steps, loop64_halt, _ = per_chunk_loop(model64, ids, prompts, chunk_masked, refine=True)
    assert_close_to_reference("logits (no refinement)", one_pass, loop_plain[0], loop64_plain[0])
    assert_close_to_reference("logits (refined)", refined.logits[index[:, :1], positions], loop_steps[-1],
                              loop64_steps[-1])
    assert not torch.allclose(loop_steps[-1], loop_plain[0], atol=1e-3), "the head should change the logits"
    reference, _ = loop_loss(loop_steps, loop_halt, targets, deep_supervision_weight=0.3)
    reference64, _ = chunk_sft_loss([F.cross_entropy(x.flatten(0, -2), targets.flatten()) for x in loop64_steps],
                                    [x.argmax(dim=-1) for x in loop64_steps], [h.double() for h in loop64_halt],
                                    targets, deep_supervision_weight=0.3)
    assert_close_to_reference("loss", refined.loss, reference, reference64)
    assert torch.equal(refined.chunk_predictions, loop_steps[-1].argmax(-1))


def test_supervising_every_other_step_keeps_the_final_term():
    """deep_supervision_interval=2 with K=4: only steps 2 and 4 are decoded; the one pass still equals
    the loop's objective on those steps, the final CE is the all-steps run's, the intermediate differs."""
    torch.manual_seed(0)
    every = HybridModel(HybridConfig(max_recursive_steps=4, freeze_backbone=False)).eval()
    torch.nn.init.normal_(every.head.delta.weight, std=0.02)
    every_other = copy.deepcopy(every)
    every_other.config.deep_supervision_interval = 2
    ids, mask, prompts = batch([7, 21], [3, 2])
    chunk_masked = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        outs = [m(ids, attention_mask=mask, prompt_lens=prompts, training_mode="chunk_sft", chunk_masked=chunk_masked)
                for m in (every, every_other)]
        loop_steps, loop_halt, targets = per_chunk_loop(every_other, ids, prompts, chunk_masked)
    reference, _ = loop_loss(loop_steps, loop_halt, targets, deep_supervision_weight=0.3, deep_supervision_interval=2)
    assert_close_to_reference("loss", outs[1].loss, reference, reference.double())
    assert torch.equal(outs[0].metrics["ce_final"], outs[1].metrics["ce_final"])
    assert not torch.equal(outs[0].metrics["ce_intermediate"], outs[1].metrics["ce_intermediate"])


def test_bidirectional_pass_differs_from_block_causal(model):
    # The contract's warning: a plain bidirectional forward is a different function.
    ids, mask, prompts = batch([9], [3])
    with torch.no_grad():
        causal = model(ids, prompt_lens=prompts, attention_layout="block_causal").logits
        bidir = model(ids).logits
    assert (causal[0, :9 + C] - bidir[0, :9 + C]).abs().max() > 1e-4


@pytest.mark.parametrize("refine", [False, True])
def test_chunk_logits_ignore_later_chunks(model, refine):
    prompt, n = 11, 4
    ids, mask, prompts = batch([prompt], [n])
    everything = torch.ones(1, n, dtype=torch.bool)

    def chunk_logits(x, i):
        with torch.no_grad():
            out = model(x, prompt_lens=prompts, training_mode="chunk_sft", chunk_masked=everything, refine=refine)
        return out.logits[0, prompt + i * C: prompt + (i + 1) * C]

    for i in range(n):
        base = chunk_logits(ids, i)
        for j in range(i, n):  # own chunk (it is masked anyway) and every later chunk
            moved = ids.clone()
            moved[0, prompt + j * C + 3] = (moved[0, prompt + j * C + 3] + 1) % 500 + 5
            assert (chunk_logits(moved, i) - base).abs().max() == 0
        for pos in [0, prompt - 1] + [prompt + j * C + 5 for j in range(i)]:
            moved = ids.clone()
            moved[0, pos] = (moved[0, pos] + 1) % 500 + 5
            assert (chunk_logits(moved, i) - base).abs().max() > 0, f"chunk {i} must see position {pos}"


def test_frozen_backbone_is_bitwise_unchanged_and_halting_trains():
    torch.manual_seed(0)
    model = HybridModel(HybridConfig(max_recursive_steps=2)).train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    ids, mask, prompts = batch([5, 12], [2, 3])
    out = model(ids, attention_mask=mask, prompt_lens=prompts, training_mode="chunk_sft")
    out.loss.backward()
    assert model.head.halt.weight.grad.abs().sum() > 0 and model.head.halt.bias.grad.abs() > 0
    opt.step()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    assert all(not p.requires_grad for p in model.backbone.parameters())


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_reading_a_prefix_runs_the_last_mlp_on_it_alone(family):
    """backbone_states(read=n), which the training pass uses for the compacted chunks: the last layer's
    MLP sees only the n read positions, and they keep the full pass's values."""
    torch.manual_seed(0)
    model = HybridModel(HybridConfig(backbone=dict(TINY_BACKBONE, model_type=family))).eval()
    ids, mask, prompts = batch([7, 21], [3, 2])
    layout = ChunkLayout("block_causal", prompt_lens=prompts, chunk_size=C, seq_lens=mask.sum(1))
    read = 29  # not a chunk boundary
    seen = []
    with torch.no_grad():  # the reference: fp64 and eager attention (the C++ kernels compute in fp32)
        reference = copy.deepcopy(model).double().backbone_states(ids, dataclasses.replace(layout, backend="eager"))
        last_mlp = model.backbone.get_decoder().layers[-1].mlp
        last_mlp.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
        full = model.backbone_states(ids, layout)
        part = model.backbone_states(ids, layout, read=read)
    assert [shape[1] for shape in seen] == [ids.shape[1], read]
    assert part.shape == (2, read, full.shape[-1])
    assert_close_to_reference("read prefix", part, full[:, :read], reference[:, :read])


def test_activation_checkpointing_keeps_the_full_last_mlp():
    """A backbone under activation checkpointing recomputes its last layer in backward, where the
    pruning hooks are gone: the training pass then keeps the full last MLP, and trains."""
    torch.manual_seed(0)
    model = HybridModel(HybridConfig(freeze_backbone=False)).train()
    model.backbone.activation_checkpointing_enable()
    ids, mask, prompts = batch([7, 21], [3, 2])
    chunk_masked = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    last_mlp = model.backbone.get_decoder().layers[-1].mlp
    seen = []
    last_mlp.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    model(ids, attention_mask=mask, prompt_lens=prompts, training_mode="chunk_sft", chunk_masked=chunk_masked,
          return_logits=False).loss.backward()
    total = ids.shape[1] + int(chunk_masked.sum(1).max()) * C  # [compacted chunks ; x_0]
    assert seen[0] == total  # (the recomputation stops once it has what backward needs)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last_mlp.parameters())
