"""bench_train_step's FLOP count: the pair counts it takes from the layout masks against the closed
forms of benchmarks/README.md's cost model, and the matmul counter on a known layer."""
import pytest
import torch

from benchmarks.bench_train_step import matmul_flops, visible_pairs


@pytest.mark.parametrize("prompts", [[5, 8], [4, 4]], ids=["prompts_not_chunk_aligned", "aligned"])
def test_visible_pairs_are_the_cost_model_counts(prompts):
    """Block-causal over a prompt of P and n chunks of C: A(n) = P^2 + nCP + C^2 n(n+1)/2 pairs. The loop
    sees A(i+1) per masked chunk i; full bd3 2 A(N) (the noisy stream sees as many pairs as the clean
    one); compact A(N) + C (P + (i+1) C) per masked chunk i."""
    size, chunks = 4, 6
    masked = torch.tensor([[0, 1, 0, 0, 1, 1], [1, 0, 0, 0, 0, 1]], dtype=torch.bool)

    def block_causal(p, n):
        return p * p + n * size * p + size * size * n * (n + 1) // 2

    expected = {"loop": 0, "eager": 0, "fused": 0, "head": 0}
    for p, row in zip(prompts, masked):
        ids = row.nonzero().flatten().tolist()
        expected["loop"] += sum(block_causal(p, i + 1) for i in ids)
        expected["eager"] += 2 * block_causal(p, chunks)
        expected["fused"] += block_causal(p, chunks) + sum(size * (p + (i + 1) * size) for i in ids)
    for provider, pairs in expected.items():
        assert visible_pairs(provider, torch.tensor(prompts), masked, size) == pairs, provider


def test_matmul_flops_of_a_linear_layer_forward_and_backward():
    layer = torch.nn.Linear(32, 48, bias=True)
    x = torch.randn(10, 32, requires_grad=True)
    assert matmul_flops(lambda: layer(x)) == 2 * 10 * 32 * 48
    # backward: the input and the weight gradient, one matmul each of the forward's size
    assert matmul_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 10 * 32 * 48
