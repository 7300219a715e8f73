"""Chunk-by-chunk diffusion decoding under the block_causal layout.

Decoding shows the model only states it was trained on (docs/design.md §1.8):
- without refinement, a new chunk starts as C mask tokens and is unmasked over `steps_per_chunk`
  forwards by LLaDA low-confidence remasking (each step commits the most confident still-masked
  positions). A partly unmasked chunk is what "bd3" training shows the backbone; a backbone trained
  only on whole masked chunks should be decoded with one step per chunk;
- with refinement, the head runs where chunk_sft trained it: on the backbone states of the fully
  masked chunk (the first denoising step), for up to K steps (halting per chunk by confidence), and
  the refined logits choose what that step commits: with one step per chunk the whole refined chunk,
  with several the most confident refined tokens, after which the backbone alone unmasks the rest
  (partly unmasked chunks are bd3 states, which the head never saw).
Prompts are left-padded so every row's chunks line up. The committed prefix is kept in a
transformers KV cache: a chunk's queries see the whole prefix and the chunk itself, exactly the
block_causal rule for the last block (and the bd3 rule for a noisy chunk), so the denoising forwards
are cached bidirectional passes over the new chunk only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from transformers import DynamicCache

from chunksft.models.attention import ChunkLayout


@dataclass
class GenerationOutput:
    sequences: list[list[int]]           # prompt + response per row (no padding)
    responses: list[list[int]]           # generated tokens per row, up to and including the stop token
    chunk_steps: list[list[float]]       # refinement steps per generated chunk (mean over denoising steps)
    chunk_confidences: list[list[float]]  # halting confidence of each chunk's last denoising step


def _as_lists(prompt_ids) -> list[list[int]]:
    if isinstance(prompt_ids, torch.Tensor):
        prompt_ids = prompt_ids.tolist() if prompt_ids.dim() == 2 else [prompt_ids.tolist()]
    return [list(map(int, row)) for row in prompt_ids]


def _all_ranks_done(done: bool, synced_ranks: bool, device) -> bool:
    """Under ZeRO-3 every rank must run the same forwards, so stop only when all ranks are done."""
    if not (synced_ranks and dist.is_available() and dist.is_initialized()):
        return done
    flag = torch.tensor([0.0 if done else 1.0], device=device)
    dist.all_reduce(flag)
    return flag.item() == 0


def unmask_step(chunk: torch.Tensor, logits: torch.Tensor, mask_id: int, steps_left: int) -> torch.Tensor:
    """One low-confidence remasking step: commit the ceil(masked / steps_left) most confident
    still-masked positions of each row to their argmax.

    chunk: int64 [B, C] (mask_id = still masked); logits: [B, C, V]. Returns the new chunk [B, C].
    """
    logits = logits.float().clone()
    logits[..., mask_id] = float("-inf")
    probs, pred = torch.softmax(logits, dim=-1).max(dim=-1)
    still_masked = chunk == mask_id
    take = math.ceil(int(still_masked.sum(dim=1).max()) / steps_left)
    score = torch.where(still_masked, probs, torch.full_like(probs, -1.0))
    chosen = torch.zeros_like(still_masked)
    chosen.scatter_(1, score.topk(take, dim=1).indices, True)
    return torch.where(chosen & still_masked, pred, chunk)


def generate_chunks(model, prompt_ids, *, max_length: int, enable_refinement: bool,
                    steps_per_chunk: int | None = None, confidence_threshold: float | None = None,
                    synced_ranks: bool = False) -> GenerationOutput:
    """Decode up to `max_length` total tokens (longest prompt + whole chunks) for each prompt.

    prompt_ids: list of token-id lists (any lengths) or int64 [B, P]. steps_per_chunk: denoising
    forwards per chunk without refinement (default config.steps_per_chunk). Stops a row at
    `</answer>` (config.answer_end_token_id) or EOS; the batch stops when every row has stopped.
    """
    cfg = model.config
    size, mask_id = cfg.chunk_size, cfg.mask_token_id
    stop_ids = {t for t in (cfg.answer_end_token_id, cfg.eos_token_id) if t is not None}
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    threshold = cfg.confidence_threshold if confidence_threshold is None else confidence_threshold
    steps_per_chunk = max(1, min(steps_per_chunk or cfg.steps_per_chunk, size))
    device = next(model.parameters()).device

    prompts = _as_lists(prompt_ids)
    lens = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lens.max())
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long, device=device)
    key_valid = torch.arange(width, device=device)[None] >= (width - lens)[:, None]
    positions = (torch.arange(width, device=device)[None] - (width - lens)[:, None]).clamp(min=0)

    cache = DynamicCache(config=model.backbone.config)
    # The prompt (block -1) sees only the prompt: a bidirectional pass over it fills the cache.
    model.backbone_states(ids, ChunkLayout("bidirectional", key_padding=key_valid, backend=cfg.backend),
                          position_ids=positions, past_key_values=cache, use_cache=True, read=0)

    n_chunks = max(0, math.ceil((max_length - width) / size))
    responses = [[] for _ in prompts]
    steps_log = [[] for _ in prompts]
    conf_log = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for chunk_idx in range(n_chunks):
        chunk = torch.full((len(prompts), size), mask_id, dtype=torch.long, device=device)
        chunk_pos = lens[:, None] + chunk_idx * size + torch.arange(size, device=device)[None]
        key_valid = torch.cat([key_valid, torch.ones_like(chunk, dtype=torch.bool)], dim=1)
        layout = ChunkLayout("bidirectional", key_padding=key_valid, backend=cfg.backend)
        chunk_steps = torch.zeros(len(prompts), device=device)
        confidence = torch.zeros(len(prompts), device=device)
        for step in range(steps_per_chunk):
            states = model.backbone_states(chunk, layout, position_ids=chunk_pos, past_key_values=cache,
                                           use_cache=True)
            cache.crop(-size)  # denoising forwards never enter the committed prefix
            if enable_refinement and step == 0:  # the fully masked chunk, as in chunk_sft
                trace = model.head(states, cfg.max_recursive_steps, threshold, early_exit=not synced_ranks)
                states = trace.states[-1]
                chunk_steps, confidence = trace.steps.float(), torch.sigmoid(trace.confidence[-1])
            chunk = unmask_step(chunk, model.decode(states), mask_id, steps_left=steps_per_chunk - step)
        # Commit: append the finished chunk's keys/values to the cached prefix.
        model.backbone_states(chunk, layout, position_ids=chunk_pos, past_key_values=cache, use_cache=True, read=0)
        for row in range(len(prompts)):
            if done[row]:
                continue
            steps_log[row].append(float(chunk_steps[row]))
            conf_log[row].append(float(confidence[row]))
            for token in chunk[row].tolist():
                responses[row].append(token)
                if token in stop_ids:
                    done[row] = True
                    break
        if _all_ranks_done(bool(done.all()), synced_ranks, device):
            break
    sequences = [p + r for p, r in zip(prompts, responses)]
    return GenerationOutput(sequences, responses, steps_log, conf_log)
