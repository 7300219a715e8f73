import pytest
import torch

from chunksft.data import ChunkCollator, ReasoningExample, build_dataset, encode_prompt, render
from chunksft.data import EOS_TOKEN_ID, MASK_TOKEN_ID, PAD_TOKEN_ID
from chunksft.ops import chunk_mask

C = 16


def rows_for(n_steps):
    return {"question": f"Tom has {n_steps} bags of 4 apples. How many apples?",
            "steps": [f"{k} * 4 = {4 * k}" for k in range(1, n_steps + 1)], "answer": str(4 * n_steps)}


@pytest.fixture
def mixed(jsonl):
    return jsonl([rows_for(n) for n in (1, 2, 5, 9)])


def test_prompt_is_exact_prefix_and_response_is_whole_eos_padded_chunks(mixed, tokenizer):
    dataset, stats = build_dataset(mixed, tokenizer=tokenizer, chunk_size=C, max_length=None)
    assert stats.kept == 4 and stats.truncated == 0 and not stats.rejected
    for n, row in zip((1, 2, 5, 9), dataset):
        prompt, response = render(ReasoningExample(**rows_for(n)))
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert row["prompt_len"] == len(prompt_ids) == len(encode_prompt(tokenizer, rows_for(n)["question"]))
        assert row["input_ids"][:row["prompt_len"]] == prompt_ids
        body = row["input_ids"][row["prompt_len"]:]
        assert len(body) % C == 0 and body[-1] == EOS_TOKEN_ID
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        assert body[:len(response_ids)] == response_ids  # then one EOS at least, then EOS padding only
        assert set(body[len(response_ids):]) == {EOS_TOKEN_ID} and 1 <= len(body) - len(response_ids) <= C
        assert tokenizer.decode(row["input_ids"][:row["prompt_len"] + len(response_ids)]) == prompt + response
        assert row["answer"] == str(4 * n)


def test_response_filling_whole_chunks_still_gets_an_eos_chunk(jsonl, tokenizer):
    _, response = render(ReasoningExample(**rows_for(2)))
    exact = len(tokenizer(response, add_special_tokens=False)["input_ids"])  # a chunk size it fills exactly
    dataset, _ = build_dataset(jsonl([rows_for(2)]), tokenizer=tokenizer, chunk_size=exact, max_length=None)
    body = dataset[0]["input_ids"][dataset[0]["prompt_len"]:]
    assert len(body) == 2 * exact and body[exact:] == [EOS_TOKEN_ID] * exact


def test_truncate_drops_whole_trailing_chunks_and_counts(mixed, tokenizer):
    full, _ = build_dataset(mixed, tokenizer=tokenizer, chunk_size=C, max_length=None)
    max_length = max(r["prompt_len"] for r in full) + 2 * C + 5
    dataset, stats = build_dataset(mixed, tokenizer=tokenizer, chunk_size=C, max_length=max_length)
    too_long = [r for r in full if len(r["input_ids"]) > max_length]
    assert too_long and stats.truncated == len(too_long) and stats.kept == 4
    for short, row in zip(full, dataset):
        assert len(row["input_ids"]) <= max_length and (len(row["input_ids"]) - row["prompt_len"]) % C == 0
        assert row["input_ids"] == short["input_ids"][:len(row["input_ids"])]  # a prefix: whole chunks dropped
        if short in too_long:
            assert len(row["input_ids"]) - row["prompt_len"] == (max_length - row["prompt_len"]) // C * C


def test_skip_policy_and_prompt_too_long_are_counted(mixed, jsonl, tokenizer):
    full, _ = build_dataset(mixed, tokenizer=tokenizer, chunk_size=C, max_length=None)
    max_length = max(r["prompt_len"] for r in full) + 2 * C
    dataset, stats = build_dataset(mixed, tokenizer=tokenizer, chunk_size=C, max_length=max_length, overflow="skip")
    n_long = sum(len(r["input_ids"]) > max_length for r in full)
    assert n_long and stats.rejected == {"too_long": n_long} and len(dataset) == 4 - n_long
    long_question = dict(rows_for(1), question="How many apples? " * 40)
    dataset, stats = build_dataset(jsonl([rows_for(1), long_question], name="long.jsonl"), tokenizer=tokenizer,
                                   chunk_size=C, max_length=max_length, overflow="truncate")
    assert len(dataset) == 1 and stats.rejected == {"prompt_too_long": 1} and stats.truncated == 0
    assert stats.first_rejected["prompt_too_long"].endswith("long.jsonl line 2")


def test_collator_batch_and_chunk_invariant(mixed, tokenizer):
    dataset, _ = build_dataset(mixed, tokenizer=tokenizer, chunk_size=C)
    batch = ChunkCollator(tokenizer.pad_token_id, chunk_size=C)([dataset[i] for i in range(4)])
    lengths = [len(dataset[i]["input_ids"]) for i in range(4)]
    B, L = 4, max(lengths)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["src_mask"].shape == (B, L)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["prompt_lens"].dtype == torch.int64
    assert batch["src_mask"].dtype == torch.bool and batch["answers"] == ["4", "8", "20", "36"]
    for b in range(B):
        p = int(batch["prompt_lens"][b])
        assert batch["src_mask"][b].sum() == p and batch["src_mask"][b, :p].all()
        assert int(batch["attention_mask"][b].sum()) == lengths[b]
        assert (int(batch["attention_mask"][b].sum()) - p) % C == 0
        assert (batch["input_ids"][b, lengths[b]:] == PAD_TOKEN_ID).all()
    # chunk masking on a collated batch never touches the prompt or the right padding
    masked = chunk_mask(batch["input_ids"], batch["prompt_lens"], chunk_size=C, mask_id=MASK_TOKEN_ID,
                        attention_mask=batch["attention_mask"], generator=torch.Generator().manual_seed(0))
    touched = masked.input_ids != batch["input_ids"]
    assert not (touched & batch["src_mask"]).any() and not (touched & (batch["attention_mask"] == 0)).any()


def test_collator_rejects_rows_built_with_another_chunk_size(mixed, tokenizer):
    dataset, _ = build_dataset(mixed, tokenizer=tokenizer, chunk_size=8)
    rows = [dataset[i] for i in range(4)]
    assert any((len(r["input_ids"]) - r["prompt_len"]) % 32 for r in rows)
    with pytest.raises(ValueError, match="not a multiple of chunk_size 32"):
        ChunkCollator(tokenizer.pad_token_id, chunk_size=32)(rows)


def test_tokenizer_that_adds_bos_gets_it_at_the_start_of_the_prompt(jsonl):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "<s> </s> <unk> Question : Let's solve this step by step 2 * 3 = 6 ? <answer> </answer>".split()
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    row = {"question": "2 * 3 ?", "steps": ["2 * 3 = 6"], "answer": "6"}
    dataset, _ = build_dataset(jsonl([row]), tokenizer=tok, chunk_size=4)
    prompt, _ = render(ReasoningExample(**row))
    expected = tok(prompt)["input_ids"]  # with the tokenizer's own special tokens: BOS first
    assert expected[0] == 0 and dataset[0]["prompt_len"] == len(expected)
    assert dataset[0]["input_ids"][:len(expected)] == expected and dataset[0]["input_ids"].count(0) == 1
