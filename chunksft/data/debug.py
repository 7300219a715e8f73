"""The DEBUG=1 view of a chunk-masked batch (seed "Monitoring training"); the trainer prints it."""
from __future__ import annotations

import torch

from chunksft.ops.chunk_mask import ChunkMask


def _show(text: str) -> str:
    return text.replace("\n", "\\n")


def debug_view(batch: dict, masked: ChunkMask, tokenizer, *, chunk_size: int = 16, max_rows: int = 2,
               max_chunks: int = 12) -> str:
    """Masking statistics, the masked input with chunk boundaries, and the ground truth of masked chunks.

    batch: a `ChunkCollator` batch (clean input_ids int64 [B, L], attention_mask int64 [B, L],
    prompt_lens int64 [B]); masked: `chunksft.ops.chunk_mask(...)` of that batch (input_ids and
    labels int64 [B, L], chunk_masked bool [B, N]). Chunks are separated by ` | `, a masked chunk is
    shown as `[MASK xK]`; only the first `max_rows` rows and `max_chunks` chunks are rendered.
    Returns the multi-line text (pure function: nothing is printed).
    """
    clean, prompt_lens = batch["input_ids"], batch["prompt_lens"].long()
    response_lens = batch["attention_mask"].long().sum(dim=1) - prompt_lens
    n_chunks = torch.div(response_lens, chunk_size, rounding_mode="floor")
    token_masked = masked.labels != -100
    total_chunks, masked_chunks = int(n_chunks.sum()), int(masked.chunk_masked.sum())
    masked_tokens, response_tokens = int(token_masked.sum()), int(response_lens.sum())
    lines = [f"[debug] masked tokens {masked_tokens}/{response_tokens} response tokens "
             f"({masked_tokens / max(response_tokens, 1):.1%}); masked chunks {masked_chunks}/{total_chunks} "
             f"({masked_chunks / max(total_chunks, 1):.1%}); per row: "
             + " ".join(f"{int(m)}/{int(n)}" for m, n in zip(masked.chunk_masked.sum(dim=1), n_chunks))]
    for b in range(min(max_rows, clean.shape[0])):
        p, n = int(prompt_lens[b]), int(n_chunks[b])
        flags = masked.chunk_masked[b, :n].tolist()
        shown, truth = [], []
        for k in range(min(n, max_chunks)):
            span = slice(p + k * chunk_size, p + (k + 1) * chunk_size)
            if flags[k]:
                shown.append(f"[MASK x{int(token_masked[b, span].sum())}]")
                truth.append(f"  chunk {k}: {_show(tokenizer.decode(clean[b, span].tolist()))}")
            else:
                shown.append(_show(tokenizer.decode(masked.input_ids[b, span].tolist())))
        more = f" | ... (+{n - max_chunks} chunks)" if n > max_chunks else ""
        lines.append(f"[debug] row {b}: prompt_len={p} chunks={n} masked={[k for k in range(n) if flags[k]]}")
        lines.append(f"  masked input: {_show(tokenizer.decode(clean[b, :p].tolist()))} | "
                     + " | ".join(shown) + more)
        lines.append("  ground truth of masked chunks:")
        lines.extend(truth or ["  (none rendered)"])
    return "\n".join(lines)
