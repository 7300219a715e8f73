"""Batch collation of encoded chunk_sft rows."""
from __future__ import annotations

import torch


class ChunkCollator:
    """list of rows {"input_ids", "prompt_len", "answer"} -> batch dict.

    Returns
      input_ids      int64 [B, L]  right-padded with `pad_token_id` (L = longest row)
      attention_mask int64 [B, L]  1 on real tokens (prompt, response and its EOS padding), 0 on padding
      src_mask       bool  [B, L]  True on prompt tokens (the seed "sft" mode never masks them)
      prompt_lens    int64 [B]
      answers        list[str]     raw answers, for accuracy evaluation
    Invariant the model relies on: attention_mask[b].sum() - prompt_lens[b] is a multiple of the
    chunk size; given `chunk_size`, the collator checks it.
    """

    def __init__(self, pad_token_id: int, chunk_size: int | None = None):
        self.pad_token_id, self.chunk_size = pad_token_id, chunk_size

    def __call__(self, rows: list[dict]) -> dict:
        lengths = torch.tensor([len(r["input_ids"]) for r in rows], dtype=torch.long)
        prompt_lens = torch.tensor([r["prompt_len"] for r in rows], dtype=torch.long)
        if self.chunk_size is not None and bool(((lengths - prompt_lens) % self.chunk_size).any()):
            bad = int(((lengths - prompt_lens) % self.chunk_size).nonzero()[0])
            raise ValueError(f"batch row {bad}: response length {int(lengths[bad] - prompt_lens[bad])} is not a "
                             f"multiple of chunk_size {self.chunk_size}; build rows with the same chunk_size")
        width = int(lengths.max()) if rows else 0
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, :len(row["input_ids"])] = torch.as_tensor(row["input_ids"], dtype=torch.long)
        positions = torch.arange(width)[None, :]
        return {
            "input_ids": input_ids,
            "attention_mask": (positions < lengths[:, None]).long(),
            "src_mask": positions < prompt_lens[:, None],
            "prompt_lens": prompt_lens,
            "answers": [r["answer"] for r in rows],
        }
