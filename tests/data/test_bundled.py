import json
import re

import pytest

from chunksft.data import (ANSWER_CLOSE_ID, ANSWER_OPEN_ID, BUNDLED_VOCAB_SIZE, EOS_TOKEN_ID, MASK_TOKEN_ID,
                           PAD_TOKEN_ID, DataError, ReasoningExample, ensure_bundled, load_tokenizer, render)
from chunksft.data.bundled import DEFAULT_LEVEL, LEVEL_SIZES, LEVELS, build, split_path
from chunksft.data.bundled.problems import split_of

STEP = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")
OPS = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}


def read(split, level="bundled"):
    return [json.loads(line) for line in split_path(level, split).read_text().splitlines()]


def canonical(row):
    return row["template"], tuple(int(n) for n in re.findall(r"\d+", row["question"]))


@pytest.mark.parametrize("level", list(LEVELS))
def test_splits_sizes_arithmetic_and_disjoint_by_construction(level):
    splits = {s: read(s, f"bundled:{level}") for s in LEVEL_SIZES[level]}
    assert {s: len(r) for s, r in splits.items()} == LEVEL_SIZES[level]
    for split, rows in splits.items():
        for row in rows:
            assert 2 <= len(row["steps"]) <= 4
            for step in row["steps"]:
                a, op, b, c = STEP.match(step).groups()
                assert OPS[op](int(a), int(b)) == int(c) and (op != "/" or int(a) % int(b) == 0)
            assert STEP.match(row["steps"][-1]).group(4) == row["answer"]
    train_forms = {canonical(r) for r in splits["train"]}
    assert len(train_forms) == LEVEL_SIZES[level]["train"]  # no duplicates either
    for held_out in ("validation", "test"):
        forms = {canonical(r) for r in splits[held_out]}
        assert len(forms) == LEVEL_SIZES[level][held_out] and not forms & train_forms
        assert not {r["question"] for r in splits[held_out]} & {r["question"] for r in splits["train"]}
    assert not {canonical(r) for r in splits["validation"]} & {canonical(r) for r in splits["test"]}
    assert {r["template"] for r in splits["train"]} == set(LEVELS[level])


def test_levels_grow_in_difficulty_and_the_default_is_multi_step_two_digit_arithmetic():
    default = read("train")
    assert default == read("train", f"bundled:{DEFAULT_LEVEL}")
    ops = {m.group(2) for r in default for m in map(STEP.match, r["steps"])}
    assert ops == {"+", "-", "*"} and {len(r["steps"]) for r in default} == {2}
    operands = [[int(n) for step in r["steps"] for n in STEP.match(step).group(1, 3)] for r in default]
    # Nearly every row works on a two-digit number (the rest: a one-digit product such as 3 * 2 = 6).
    assert sum(any(10 <= n <= 99 for n in row) for row in operands) >= 0.99 * len(operands)
    assert all(0 <= int(n) <= 99 for r in default for step in r["steps"] for n in re.findall(r"-?\d+", step))
    assert set(LEVELS["sums"]) < set(LEVELS["arith"]) < set(LEVELS["chain"])  # each level adds templates
    assert max(len(r["steps"]) for r in read("train", "bundled:chain")) == 3
    mean_len = {level: sum(len(r["question"]) for r in read("train", f"bundled:{level}")) / LEVEL_SIZES[level]["train"]
                for level in ("chain", "word")}
    assert mean_len["chain"] < mean_len["word"]  # word problems: the numbers must be read out of sentences
    with pytest.raises(ValueError, match="no level 'hard'"):
        split_path("bundled:hard", "train")


def test_split_assignment_is_a_function_of_the_canonical_form():
    assert split_of("buy_bags", (3, 4, 5)) == split_of("buy_bags", (3, 4, 5))
    buckets = [split_of("buy_bags", (a, b, 2)) for a in range(1, 40) for b in range(2, 10)]
    assert set(buckets) == {"train", "validation", "test"} and buckets.count("train") > 0.8 * len(buckets)


def test_generation_is_deterministic_and_idempotent(tmp_path):
    sizes = {"arith": {"train": 300, "validation": 30, "test": 30}, "word": {"train": 100, "test": 10}}
    a, b = build(tmp_path / "a", sizes=sizes), build(tmp_path / "b", sizes=sizes)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != ".lock")
    assert [str(f) for f in files] == ["arith/test.jsonl", "arith/train.jsonl", "arith/validation.jsonl",
                                       "manifest.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                                       "word/test.jsonl", "word/train.jsonl"]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    stamp = (a / "arith" / "train.jsonl").stat().st_mtime_ns
    assert build(a, sizes=sizes) == a and (a / "arith" / "train.jsonl").stat().st_mtime_ns == stamp  # complete: no rebuild


def test_tokenizer_fixed_ids_vocab_and_round_trip(tokenizer):
    assert (PAD_TOKEN_ID, EOS_TOKEN_ID, MASK_TOKEN_ID, ANSWER_OPEN_ID, ANSWER_CLOSE_ID) == (0, 1, 2, 3, 4)
    assert BUNDLED_VOCAB_SIZE == 512 and len(tokenizer) == 512
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids(["<|pad|>", "<|endoftext|>", "<|mask|>", "<answer>", "</answer>"]) == \
        [0, 1, 2, 3, 4]
    for row in read("validation") + read("test", "bundled:word"):
        text = "".join(render(ReasoningExample(row["question"], row["steps"], row["answer"])))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert max(ids) < 512 and tokenizer.decode(ids) == text
        assert ids.count(ANSWER_OPEN_ID) == 1 and ids[-1] == ANSWER_CLOSE_ID
    # digits are single tokens: a number is spelled digit by digit
    ids = tokenizer("x 2024 = 2000 + 24", add_special_tokens=False)["input_ids"]
    digits = [t for t in tokenizer.convert_ids_to_tokens(ids) if any(ch.isdigit() for ch in t)]
    assert digits == list("2024200024")
    # answers survive skip_special_tokens (only pad/eos/mask are special)
    assert tokenizer.decode([ANSWER_OPEN_ID, *tokenizer("7")["input_ids"], ANSWER_CLOSE_ID, EOS_TOKEN_ID, 0],
                            skip_special_tokens=True) == "<answer>7</answer>"


def test_tokenizer_without_mask_token(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<eos>": 0, "a": 1, "[UNK]": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="[UNK]").save_pretrained(tmp_path)
    with pytest.raises(DataError) as excinfo:
        load_tokenizer(str(tmp_path))
    message = str(excinfo.value)
    assert "\n" not in message and "no mask token" in message and "add_mask_token=True" in message
    tok = load_tokenizer(str(tmp_path), add_mask_token=True)
    assert tok.mask_token == "<|mask|>" and tok.mask_token_id == 3 and tok.pad_token_id == 0  # pad falls back to eos
