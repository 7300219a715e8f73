"""Input builder shared by the model tests: ragged rows of a prompt and whole response chunks."""
import torch

C = 16  # chunk size of the tests' models (HybridConfig's default)


def batch(prompt_lens: list[int], n_chunks: list[int], seed: int = 1):
    """Row i: prompt_lens[i] random tokens then n_chunks[i] chunks of C, right-padded with 0.

    Returns (ids int64 [B, L], attention mask int64 [B, L], prompt lengths int64 [B])."""
    g = torch.Generator().manual_seed(seed)
    lens = [p + n * C for p, n in zip(prompt_lens, n_chunks)]
    ids = torch.randint(5, 512, (len(lens), max(lens)), generator=g)
    mask = (torch.arange(max(lens))[None] < torch.tensor(lens)[:, None]).long()
    return ids * mask, mask, torch.tensor(prompt_lens)
