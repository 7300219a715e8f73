"""Chunk-by-chunk generation: cached decoding == uncached block_causal forwards, stopping, halting."""
import pytest
import torch

from chunksft.models import HybridConfig, HybridModel

C = 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HybridModel(HybridConfig(max_recursive_steps=4)).eval()


def test_cached_greedy_chunks_equal_uncached_block_causal(model):
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]]
    out = model.generate(prompts, max_length=len(prompts[1]) + 3 * C, steps_per_chunk=1)
    for prompt, seq in zip(prompts, out.sequences):
        assert seq[:len(prompt)] == prompt
        for chunk in range(len(out.responses[0]) // C):
            start = len(prompt) + chunk * C
            ids = torch.tensor([seq[:start] + [model.config.mask_token_id] * C])
            with torch.no_grad():
                logits = model(ids, prompt_lens=torch.tensor([len(prompt)]), attention_layout="block_causal").logits
            logits[..., model.config.mask_token_id] = float("-inf")
            assert logits[0, -C:].argmax(-1).tolist() == seq[start:start + C]


def test_prompts_untouched_and_stop_at_answer_end(model):
    end = model.config.answer_end_token_id

    def force_answer_end(module, args, logits):
        logits = logits.clone()
        logits[..., end] += 1e4
        return logits

    hook = model.lm_head.register_forward_hook(force_answer_end)
    try:
        prompts = [[20, 21], [30, 31, 32, 33, 34, 35]]
        out = model.generate_with_refinement(prompts, max_length=100)
    finally:
        hook.remove()
    assert [s[:len(p)] for s, p in zip(out.sequences, prompts)] == prompts
    assert out.responses == [[end], [end]]


@pytest.mark.parametrize("bias,expected_steps", [(10.0, 1.0), (-10.0, 4.0)])
def test_adaptive_steps_follow_confidence(model, bias, expected_steps):
    with torch.no_grad():
        saved = model.head.halt.bias.clone()
        model.head.halt.bias.fill_(bias)
        try:
            out = model.generate_with_refinement([[5, 6, 7, 8]], max_length=4 + 2 * C, confidence_threshold=0.9)
        finally:
            model.head.halt.bias.copy_(saved)
    assert out.chunk_steps[0] and all(s == expected_steps for s in out.chunk_steps[0])
    assert all((c > 0.9) == (bias > 0) for c in out.chunk_confidences[0])
