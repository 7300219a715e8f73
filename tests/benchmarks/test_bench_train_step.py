"""bench_train_step's FLOP count: the closed-form pair counts of each provider against the masks of
chunksft.ops.masks (the one definition of each layout), and the matmul counter on a known layer."""
import pytest
import torch

from benchmarks.bench_train_step import matmul_flops, visible_pairs
from chunksft.ops.masks import chunk_attention_mask, compact_attention_mask, compact_layout


@pytest.mark.parametrize("prompts", [[5, 8], [4, 4]], ids=["prompts_not_chunk_aligned", "aligned"])
def test_visible_pairs_match_the_layout_masks(prompts):
    size, chunks = 4, 6
    prompt_lens = torch.tensor(prompts)
    masked = torch.tensor([[0, 1, 0, 0, 1, 1], [1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    # Each row on its own: the closed forms assume unpadded rows, whose length is P + N * C.
    for row in range(len(prompts)):
        p, m = prompt_lens[row:row + 1], masked[row:row + 1]
        seq_len = prompts[row] + chunks * size
        bd3 = chunk_attention_mask(p, seq_len, chunk_size=size, layout="bd3")
        compact = compact_attention_mask(p, seq_len, compact_layout(m, p, size).chunk_index, chunk_size=size)
        loop = sum(int(chunk_attention_mask(p, prompts[row] + (i + 1) * size, chunk_size=size,
                                            layout="block_causal").sum())
                   for i in m[0].nonzero().flatten().tolist())
        assert visible_pairs("eager", p, m, size) == int(bd3.sum())
        assert visible_pairs("fused", p, m, size) == int(compact.sum())
        assert visible_pairs("loop", p, m, size) == loop
        assert visible_pairs("head", p, m, size) == 0


def test_matmul_flops_of_a_linear_layer_forward_and_backward():
    layer = torch.nn.Linear(32, 48, bias=True)
    x = torch.randn(10, 32, requires_grad=True)
    assert matmul_flops(lambda: layer(x)) == 2 * 10 * 32 * 48
    # backward: the input and the weight gradient, one matmul each of the forward's size
    assert matmul_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 10 * 32 * 48
