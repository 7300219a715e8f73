"""Held-out split by question hash for sources without a separate eval set (chunksft.data.holdout)."""
import hashlib
from types import SimpleNamespace

import pytest

from chunksft.data import DataError, HELD_OUT_FRACTION, Part, build_dataset, is_held_out, plan_splits


def row(k, answer=None):
    return {"question": f"What is {k} + {k + 1}?", "steps": [f"{k} + {k + 1} = {2 * k + 1}"],
            "answer": answer or str(2 * k + 1)}


def questions(dataset, tokenizer):
    """The question of each encoded row, read back from its prompt tokens."""
    out = []
    for item in dataset:
        prompt = tokenizer.decode(item["input_ids"][:item["prompt_len"]])
        out.append(prompt.split("Question: ", 1)[1].split("\n\n", 1)[0])
    return out


def test_rule_is_sha256_of_the_question_and_pinned():
    # the documented rule, spelled out; pinned so a change of rule or fraction cannot pass silently
    for k in range(300):
        q = f"Question {k}"
        expected = int.from_bytes(hashlib.sha256(q.encode()).digest()[:8], "big") / 2 ** 64 < HELD_OUT_FRACTION
        assert is_held_out(q) == expected
    assert [k for k in range(200) if is_held_out(f"Question {k}")] == [1, 3, 21, 49, 63, 71, 82, 93, 94, 98, 119,
                                                                       134, 149, 161, 182]
    share = sum(is_held_out(f"What is {k} + {k + 1}?") for k in range(20000)) / 20000
    assert HELD_OUT_FRACTION == 0.05 and 0.04 < share < 0.06


def test_parts_are_disjoint_cover_the_file_and_are_deterministic(jsonl, tokenizer):
    rows = [row(k) for k in range(400)]
    rows += [row(3, answer="seven"), row(3, answer="7.0")]  # one question three times: one side only
    path = jsonl(rows)
    train, train_stats = build_dataset(path, tokenizer=tokenizer, hash_split="train")
    held, held_stats = build_dataset(path, tokenizer=tokenizer, hash_split="held_out")
    train_q, held_q = questions(train, tokenizer), questions(held, tokenizer)
    assert not set(train_q) & set(held_q)
    assert sorted(train_q + held_q) == sorted(r["question"] for r in rows)
    assert held_q == [r["question"] for r in rows if is_held_out(r["question"])]
    assert 5 <= len(held_q) <= 40
    assert train_stats.held_out == len(held_q) and train_stats.kept == len(train_q)
    assert f"; {len(held_q)} more rows held out for evaluation" in train_stats.summary()
    assert "held-out part" in held_stats.summary()
    again, _ = build_dataset(path, tokenizer=tokenizer, hash_split="held_out")
    assert [r["input_ids"] for r in again] == [r["input_ids"] for r in held]
    whole, whole_stats = build_dataset(path, tokenizer=tokenizer)  # no hash_split: every row, as before
    assert len(whole) == len(rows) and whole_stats.held_out is None and "held out" not in whole_stats.summary()


def test_max_rows_counts_rows_of_the_part(jsonl, tokenizer):
    path = jsonl([row(k) for k in range(400)])
    held, _ = build_dataset(path, tokenizer=tokenizer, hash_split="held_out", max_rows=3)
    assert questions(held, tokenizer) == [q for q in (row(k)["question"] for k in range(400)) if is_held_out(q)][:3]


def test_file_too_small_for_a_held_out_part_is_one_line(jsonl, tokenizer):
    path = jsonl([r for r in map(row, range(10)) if not is_held_out(r["question"])])
    with pytest.raises(DataError) as err:
        build_dataset(path, tokenizer=tokenizer, hash_split="held_out")
    assert "held-out part" in str(err.value) and "--eval_dataset_name" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="hash_split"):
        build_dataset(path, tokenizer=tokenizer, hash_split="validation")


def test_plan_splits(jsonl, tmp_path):
    local, other = jsonl([row(1)]), jsonl([row(2)], name="eval.jsonl")
    # a local file is one split: hash split, unless a separate eval file is given
    assert plan_splits(local, None) == (Part(local, "train", "train"), Part(local, "train", "held_out"))
    assert plan_splits(local, other) == (Part(local, "train"), Part(other, "validation"))
    assert plan_splits(local, str(tmp_path / "." / "data.jsonl"))[1].hash_split == "held_out"  # same file
    # the bundled data has its own splits
    assert plan_splits("bundled", None) == (Part("bundled", "train"), Part("bundled", "validation"))
    assert plan_splits("bundled:sums", None, eval_split="test") == (Part("bundled:sums", "train"),
                                                                    Part("bundled:sums", "test"))
    # a hub dataset: its eval split when it has one, else the hash split of its training split
    with_val = lambda name: {"train", "validation"}  # noqa: E731
    without = lambda name: {"train", "test"}  # noqa: E731
    assert plan_splits("org/set", None, list_splits=with_val) == (Part("org/set", "train"),
                                                                  Part("org/set", "validation"))
    assert plan_splits("org/set", None, list_splits=without) == (Part("org/set", "train", "train"),
                                                                 Part("org/set", "train", "held_out"))
    assert plan_splits("org/set", None, list_splits=lambda name: None)[1] == Part("org/set", "validation")
    # evaluating on the training split is never called held-out
    assert plan_splits("org/set", None, "train", "train", list_splits=with_val)[1].hash_split == "held_out"


def _datasets(dataset_name, eval_dataset_name, tokenizer):
    """Trainer._datasets as the loop runs it (no engine needed: it only reads cfg, tokenizer, print)."""
    from chunksft.train.config import TrainConfig
    from chunksft.train.loop import Trainer

    cfg = TrainConfig()
    cfg.data.dataset_name, cfg.data.eval_dataset_name = dataset_name, eval_dataset_name
    printed = []
    trainer = SimpleNamespace(cfg=cfg, tokenizer=tokenizer, print=printed.append)
    train, held_out = Trainer._datasets(trainer)
    return train, held_out, printed


def test_training_loop_never_evaluates_on_training_rows(jsonl, tokenizer):
    rows = [row(k) for k in range(400)]
    path, eval_path = jsonl(rows), jsonl([row(k) for k in range(1000, 1010)], name="eval.jsonl")
    train, held_out, printed = _datasets(path, None, tokenizer)
    train_q, held_q = questions(train, tokenizer), questions(held_out, tokenizer)
    n_held = sum(is_held_out(r["question"]) for r in rows)
    assert not set(train_q) & set(held_q) and len(train_q) == len(rows) - n_held
    assert held_q == [r["question"] for r in rows if is_held_out(r["question"])]
    assert any(line.startswith("data: ") and f"{n_held} more rows held out" in line for line in printed)
    # a separate eval file: train on the whole training file
    train, held_out, printed = _datasets(path, eval_path, tokenizer)
    assert len(train) == len(rows) and questions(held_out, tokenizer) == [row(k)["question"] for k in range(1000, 1010)]
    assert not any("held out" in line for line in printed)
