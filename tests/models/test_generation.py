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


@pytest.fixture(scope="module")
def trained():
    """A model trained a few bd3 steps on bundled rows (not random), with a non-identity head."""
    from chunksft.data import ChunkCollator, build_dataset, load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer()
    m = HybridModel(HybridConfig(max_recursive_steps=3, freeze_backbone=False))
    data, _ = build_dataset("bundled", tokenizer=tok, chunk_size=C, max_length=128, max_rows=256)
    collate = ChunkCollator(tok.pad_token_id, C)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for step in range(32):
        b = collate([data[i] for i in range(8 * step, 8 * step + 8)])
        m(b["input_ids"], attention_mask=b["attention_mask"], prompt_lens=b["prompt_lens"],
          training_mode="bd3").loss.backward()
        opt.step()
        opt.zero_grad()
    torch.nn.init.normal_(m.head.delta.weight, std=0.05)
    # Decode whole chunks: stopping is tested above; here every chunk is compared.
    m.config.answer_end_token_id = m.config.eos_token_id = None
    prompts = [data[i]["input_ids"][:data[i]["prompt_len"]] for i in range(3)]  # different lengths
    return m.eval(), prompts


def teacher_forced_chunk(model, prefix: list[int], prompt_len: int, steps: int, refine: bool) -> list[int]:
    """Decode one chunk after `prefix` with uncached block_causal forwards over the whole sequence,
    as the training layout computes them (one row, no padding)."""
    from chunksft.models.attention import ChunkLayout
    from chunksft.models.generation import unmask_step

    cfg = model.config
    chunk = torch.full((1, C), cfg.mask_token_id)
    layout = ChunkLayout("block_causal", prompt_lens=torch.tensor([prompt_len]), chunk_size=C)
    for step in range(steps):
        with torch.no_grad():
            states = model.backbone_states(torch.cat([torch.tensor([prefix]), chunk], dim=1), layout)[:, -C:]
            if refine and step == 0:  # the head refines the fully masked chunk only
                states = model.head(states, cfg.max_recursive_steps, cfg.confidence_threshold).states[-1]
            chunk = unmask_step(chunk, model.decode(states), cfg.mask_token_id, steps_left=steps - step)
    return chunk[0].tolist()


@pytest.mark.parametrize("steps,refine", [(1, False), (4, False), (16, False), (1, True), (4, True)],
                         ids=["1-step", "4-steps", "16-steps", "refined-1-step", "refined-4-steps"])
def test_decoded_chunks_equal_teacher_forced_predictions(trained, steps, refine):
    """Every generated chunk equals the one decoded by the training layout for the same prefix
    (KV cache, left padding and batching change nothing), for one and several steps per chunk."""
    model, prompts = trained
    out = model.generate_with_refinement(prompts, max_length=max(map(len, prompts)) + 3 * C,
                                         enable_refinement=refine, steps_per_chunk=steps)
    checked = 0
    for prompt, response in zip(prompts, out.responses):
        for k in range(-(-len(response) // C)):  # the last chunk is cut after its stop token
            piece = response[k * C:(k + 1) * C]
            expected = teacher_forced_chunk(model, prompt + response[:k * C], len(prompt), steps, refine)
            assert expected[:len(piece)] == piece
            checked += len(piece)
    assert checked == 3 * 3 * C
