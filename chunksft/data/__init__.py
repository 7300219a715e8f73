"""Data pipeline: formats -> template -> tokens in whole response chunks -> batches.

    tokenizer = load_tokenizer()                      # bundled, or any HF name/path
    dataset, stats = build_dataset("train.jsonl", tokenizer=tokenizer, chunk_size=16)
    loader = DataLoader(dataset, batch_size=8, collate_fn=ChunkCollator(tokenizer.pad_token_id),
                        sampler=StatefulDistributedSampler(dataset, seed=0))
"""
from chunksft.data.bundled import (ANSWER_CLOSE_ID, ANSWER_OPEN_ID, BUNDLED_VOCAB_SIZE, EOS_TOKEN_ID, MASK_TOKEN_ID,
                                   PAD_TOKEN_ID, ensure_bundled)
from chunksft.data.collate import ChunkCollator
from chunksft.data.debug import debug_view
from chunksft.data.encode import ChunkDataset, build_dataset, encode_examples, encode_prompt
from chunksft.data.errors import DataError, DataStats
from chunksft.data.formats import FORMATS, detect_format, iter_examples, iter_questions
from chunksft.data.holdout import HELD_OUT_FRACTION, Part, is_held_out, plan_splits
from chunksft.data.sampler import StatefulDistributedSampler
from chunksft.data.template import (MARKER, ReasoningExample, extract_answer, render, render_prompt, render_response,
                                    split_text)
from chunksft.data.tokenizer import load_tokenizer

__all__ = [
    "ANSWER_CLOSE_ID", "ANSWER_OPEN_ID", "BUNDLED_VOCAB_SIZE", "EOS_TOKEN_ID", "MASK_TOKEN_ID", "PAD_TOKEN_ID",
    "ensure_bundled", "ChunkCollator", "debug_view", "ChunkDataset", "build_dataset", "encode_examples",
    "encode_prompt", "DataError", "DataStats", "FORMATS", "detect_format", "iter_examples",
    "iter_questions", "HELD_OUT_FRACTION", "Part", "is_held_out", "plan_splits",
    "StatefulDistributedSampler", "MARKER", "ReasoningExample", "extract_answer", "render", "render_prompt",
    "render_response", "split_text", "load_tokenizer",
]
