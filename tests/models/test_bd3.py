"""The "bd3" mode: one pass == per-chunk loop with partly masked chunks, the 1/t-weighted loss,
causality, and the backbone (not the head) trains."""
import copy

import pytest
import torch

from chunksft.models import HybridConfig, HybridModel
from chunksft.objectives.block_diffusion import block_diffusion_loss
from chunksft.models.per_chunk_loop import per_chunk_loop
from tests.models.inputs import C, batch
from tests.tolerance import assert_close_to_reference


@pytest.fixture(scope="module", params=[True, False], ids=["compact", "full_bd3"])
def model(request):
    torch.manual_seed(0)
    return HybridModel(HybridConfig(freeze_backbone=False, compact_noisy_stream=request.param)).eval()


def bd3(model, ids, mask, prompts, seed=3, return_logits=True):
    with torch.no_grad():
        return model(ids, attention_mask=mask, prompt_lens=prompts, training_mode="bd3",
                     generator=torch.Generator().manual_seed(seed), return_logits=return_logits)


def test_masks_tokens_inside_every_response_chunk(model):
    ids, mask, prompts = batch([7, 21, 16], [3, 2, 4])  # prompts not chunk-aligned, ragged rows
    out = bd3(model, ids, mask, prompts)
    masked = out.labels != -100
    real_chunks = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(out.chunk_masked, real_chunks)  # every response chunk is noised
    for b, p in enumerate(prompts.tolist()):
        assert not masked[b, :p].any() and not masked[b, mask[b] == 0].any()
        for j in range(int(real_chunks[b].sum())):
            span = masked[b, p + j * C: p + (j + 1) * C]
            assert 1 <= int(span.sum()) <= C
    assert 0 < masked.sum() < (mask.sum() - prompts.sum())  # partly masked overall (t ~ U(eps, 1))
    assert torch.equal(out.noisy_input_ids[masked], torch.full((int(masked.sum()),), model.config.mask_token_id))
    assert torch.equal(out.noisy_input_ids[~masked], ids[~masked])


def test_one_pass_equals_per_chunk_loop_and_loss_formula(model):
    ids, mask, prompts = batch([7, 21, 16], [3, 2, 4])
    out = bd3(model, ids, mask, prompts)
    # Tolerance rule (tests/tolerance.py): the loop at fp32 is the baseline, the loop of an fp64
    # eager copy of the model the reference.
    model64 = copy.deepcopy(model).double()
    model64.config.backend = model64.lm_loss.backend = "eager"
    with torch.no_grad():
        loop_logits, _, targets = per_chunk_loop(model, ids, prompts, out.chunk_masked, refine=False,
                                                 noisy_ids=out.noisy_input_ids)
        loop64_logits, _, _ = per_chunk_loop(model64, ids, prompts, out.chunk_masked, refine=False,
                                             noisy_ids=out.noisy_input_ids)
    index = out.chunk_index
    positions = prompts[index[:, 0], None] + index[:, 1:] * C + torch.arange(C)
    assert_close_to_reference("bd3 logits", out.logits[index[:, :1], positions], loop_logits[0], loop64_logits[0])
    # The 1/t-weighted loss of the module formula, from the loop's logits placed into [B, L, V].
    masked = out.labels != -100
    rel = (torch.arange(ids.shape[1])[None] - prompts[:, None]).clamp(min=0) // C
    rate = torch.gather(torch.nn.functional.pad(drawn_rate(model, ids, mask, prompts), (0, 8)), 1, rel)
    response = (mask.sum(1) - prompts) // C * C

    def formula(logits):
        full = torch.zeros(*ids.shape, logits.shape[-1], dtype=logits.dtype)
        full[index[:, :1], positions] = logits
        return block_diffusion_loss(full, ids, masked, rate.to(logits.dtype), response)

    assert_close_to_reference("bd3 loss", out.loss, formula(loop_logits[0]), formula(loop64_logits[0]))
    # The training call reads only the chunks' states (the compact pass then skips x_0's last MLP).
    training = bd3(model, ids, mask, prompts, return_logits=False)
    assert training.logits is None
    assert_close_to_reference("bd3 loss without logits", training.loss, formula(loop_logits[0]),
                              formula(loop64_logits[0]))


def drawn_rate(model, ids, mask, prompts, seed=3):
    """The per-chunk rates of the same draw as `bd3(...)` (the op is deterministic in the generator)."""
    from chunksft.ops import chunk_mask

    cfg = model.config
    return chunk_mask(ids, prompts, chunk_size=C, mask_prob=1.0, mask_id=cfg.mask_token_id, backend=cfg.backend,
                      generator=torch.Generator().manual_seed(seed), attention_mask=mask,
                      token_rate=(cfg.bd3_t_min, cfg.bd3_t_max)).chunk_rate


def test_chunk_predictions_ignore_later_chunks(model):
    prompt, n = 11, 4
    ids, mask, prompts = batch([prompt], [n])
    base_out = bd3(model, ids, mask, prompts)
    noisy = base_out.labels != -100
    for i in range(n):
        span = slice(prompt + i * C, prompt + (i + 1) * C)
        base = base_out.logits[0, span]
        for j in range(i + 1, n):  # anything in a later chunk (its clean and its noisy tokens)
            moved = ids.clone()
            moved[0, prompt + j * C + 3] = (moved[0, prompt + j * C + 3] + 1) % 500 + 5
            assert (bd3(model, moved, mask, prompts).logits[0, span] - base).abs().max() == 0
        own_masked = [p for p in range(span.start, span.stop) if noisy[0, p]]
        moved = ids.clone()
        moved[0, own_masked[0]] = (moved[0, own_masked[0]] + 1) % 500 + 5  # hidden by the mask
        assert (bd3(model, moved, mask, prompts).logits[0, span] - base).abs().max() == 0
        for pos in [0, prompt - 1] + [prompt + j * C + 5 for j in range(i)]:  # prompt and clean previous chunks
            moved = ids.clone()
            moved[0, pos] = (moved[0, pos] + 1) % 500 + 5
            assert (bd3(model, moved, mask, prompts).logits[0, span] - base).abs().max() > 0, (i, pos)


def test_backbone_trains_and_head_does_not():
    torch.manual_seed(0)
    model = HybridModel(HybridConfig(freeze_backbone=False)).train()
    ids, mask, prompts = batch([5, 12], [2, 3])
    out = model(ids, attention_mask=mask, prompt_lens=prompts, training_mode="bd3")
    out.loss.backward()
    assert all(p.grad is None for p in model.head.parameters())
    assert model.backbone.get_input_embeddings().weight.grad.abs().sum() > 0
    assert set(out.metrics) >= {"masked_tokens", "token_acc", "mean_rate"}


def test_needs_prompt_lens():
    model = HybridModel(HybridConfig())
    with pytest.raises(ValueError, match="bd3.*needs prompt_lens"):
        model(torch.zeros(1, 32, dtype=torch.long), training_mode="bd3")
