"""bench_head_memory's saved-bytes count: each storage once, and only what is still held when the
forward returns (the growth in K of each head-gradient rule is tested in tests/models/test_deep_supervision.py)."""
import torch

from benchmarks.bench_head_memory import saved_tensor_mb


def test_each_saved_storage_counts_once():
    x, y = (torch.randn(256, 1024, requires_grad=True) for _ in range(2))  # 1 MB each
    assert saved_tensor_mb(lambda: (x * x).sum()) == 1.0  # mul saves x twice: one storage
    assert saved_tensor_mb(lambda: (x * y).sum()) == 2.0


def test_a_graph_freed_inside_the_forward_does_not_count():
    x = torch.randn(256, 1024, requires_grad=True)

    def forward():
        inner = (x.exp() * 2).sum()  # exp saves its 1 MB result; freed by the backward below
        (grad,) = torch.autograd.grad(inner, x)
        return (grad.detach() * x).sum()  # saves the 1 MB detached gradient (x is a leaf: not saved)

    assert saved_tensor_mb(forward) == 1.0
