import torch

from chunksft.data import MASK_TOKEN_ID, ChunkCollator, build_dataset, debug_view
from chunksft.ops import chunk_mask


def test_debug_view_shows_stats_boundaries_and_ground_truth(jsonl, tokenizer):
    rows = [{"question": "Ben has 5 bags of 6 pens. How many pens?", "steps": ["5 * 6 = 30", "30 + 1 = 31"],
             "answer": "31"},
            {"question": "Mia has 9 coins and finds 4.", "steps": ["9 + 4 = 13"], "answer": "13"}]
    dataset, _ = build_dataset(jsonl(rows), tokenizer=tokenizer, chunk_size=8)
    batch = ChunkCollator(tokenizer.pad_token_id, chunk_size=8)([dataset[0], dataset[1]])
    chunk_masked = torch.tensor([[False, True, False, False], [True, False, False, False]])
    masked = chunk_mask(batch["input_ids"], batch["prompt_lens"], chunk_size=8, mask_id=MASK_TOKEN_ID,
                        attention_mask=batch["attention_mask"], chunk_masked=chunk_masked)
    text = debug_view(batch, masked, tokenizer, chunk_size=8)
    p0 = int(batch["prompt_lens"][0])
    truth = tokenizer.decode(batch["input_ids"][0, p0 + 8:p0 + 16].tolist()).replace("\n", "\\n")
    n_chunks = [(int(batch["attention_mask"][b].sum()) - int(batch["prompt_lens"][b])) // 8 for b in range(2)]
    assert f"masked chunks 2/{sum(n_chunks)}" in text and "masked tokens 16/" in text
    assert f"chunk 1: {truth}" in text and truth.strip()
    row0 = next(line for line in text.splitlines() if line.startswith("  masked input:"))
    assert row0.count(" | ") == n_chunks[0] and "[MASK x8]" in row0 and "Ben has 5 bags" in row0
    assert truth not in row0  # the masked chunk's text is hidden in the masked input
