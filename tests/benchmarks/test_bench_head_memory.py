"""bench_head_memory's saved-bytes count: each storage once, and the head-gradient rules it compares
(the memory of a step grows with K under both; "last" keeps less per step than "full")."""
import torch

from benchmarks.bench_head_memory import saved_tensor_mb
from chunksft.models import HybridConfig, HybridModel
from chunksft.models.config import tiny_backbone


def test_each_saved_storage_counts_once():
    x, y = (torch.randn(256, 1024, requires_grad=True) for _ in range(2))  # 1 MB each
    assert saved_tensor_mb(lambda: (x * x).sum()) == 1.0  # mul saves x twice: one storage
    assert saved_tensor_mb(lambda: (x * y).sum()) == 2.0


def test_last_saves_less_per_refinement_step_than_full():
    ids = torch.randint(5, 512, (2, 96), generator=torch.Generator().manual_seed(0))
    prompts = torch.tensor([32, 48])
    saved = {}
    for gradient in ("last", "full"):
        for k in (1, 2):
            torch.manual_seed(0)
            model = HybridModel(HybridConfig(backbone=tiny_backbone(hidden_size=64, num_hidden_layers=1),
                                             max_recursive_steps=k, head_gradient=gradient)).train()
            saved[gradient, k] = saved_tensor_mb(lambda: model(input_ids=ids, prompt_lens=prompts,
                                                               training_mode="chunk_sft", return_logits=False).loss)
    per_step = {g: saved[g, 2] - saved[g, 1] for g in ("last", "full")}
    assert 0 < per_step["last"] < per_step["full"]
