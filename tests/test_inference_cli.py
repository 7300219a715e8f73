"""python -m chunksft.generate / chunksft.evaluate on an exported folder."""
import json

import pytest
import torch

from chunksft import evaluate, generate
from chunksft.data import extract_answer, load_tokenizer
from chunksft.models import HybridConfig, HybridModel


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    HybridModel(HybridConfig(max_recursive_steps=2)).save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    return str(out)


def test_generate_prints_response_and_chunk_steps(exported, capsys):
    assert generate.main(["--model", exported, "--prompt", "Tom has 3 apples.", "--refine",
                          "--max_new_tokens", "32"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() != ""
    assert captured.err.count("refinement steps") == 2  # two chunks of 16 for 32 new tokens


def test_evaluate_prints_accuracy_table(exported, capsys):
    assert evaluate.main(["--model", exported, "--rows", "4", "--max_new_tokens", "32"]) == 0
    out = capsys.readouterr().out
    assert "| bundled:test (4 rows) | 0.0% | 0.0% |" in out  # a random model answers nothing right


def test_bad_model_dir_is_one_line(tmp_path, capsys):
    assert generate.main(["--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --model") and "\n" not in err


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_generate_input_writes_one_prediction_per_row(exported, tmp_path, capsys):
    questions = ["Tom has 3 apples and buys 4 more. How many now?", "What is 12 + 30?", "What is 7 * 6?"]
    rows = [{"question": questions[0]},                              # question only
            {"question": questions[1], "answer": "step\n#### 42"},  # gsm8k-style, answer unused
            {"question": questions[2], "steps": ["7 * 6 = 42"], "answer": "42"}]
    src = tmp_path / "questions.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pred" / "predictions.jsonl"
    assert generate.main(["--model", exported, "--input", str(src), "--output", str(out), "--refine",
                          "--max_new_tokens", "32", "--batch_size", "2"]) == 0
    predictions = _read_jsonl(out)
    assert [p["question"] for p in predictions] == questions
    for p in predictions:
        assert set(p) == {"question", "response", "answer", "refinement_steps"}
        assert isinstance(p["response"], str) and p["answer"] == extract_answer(p["response"])
        assert 1 <= len(p["refinement_steps"]) <= 2  # 32 new tokens = at most two chunks of 16
        assert all(1 <= s <= 2 for s in p["refinement_steps"])  # max_recursive_steps=2
    assert "3 predictions" in capsys.readouterr().err
    # without --refine: no refinement_steps; other formats give the same questions
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                                     {"role": "user", "content": q}]}) + "\n" for q in questions))
    plain_out = tmp_path / "plain.jsonl"
    assert generate.main(["--model", exported, "--input", str(chat), "--output", str(plain_out),
                          "--max_new_tokens", "16", "--steps_per_chunk", "1"]) == 0
    predictions = _read_jsonl(plain_out)
    assert [p["question"] for p in predictions] == questions
    assert all(set(p) == {"question", "response", "answer"} for p in predictions)


def test_generate_input_row_without_question_is_one_line(exported, tmp_path, capsys):
    src = tmp_path / "questions.jsonl"
    src.write_text(json.dumps({"question": "What is 1 + 1?"}) + "\n\n" + json.dumps({"question": "  "}) + "\n")
    out = tmp_path / "predictions.jsonl"
    assert generate.main(["--model", exported, "--input", str(src), "--output", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: --input")  # (progress bars aside)
    assert f"{src} line 3" in errors[0] and "no question" in errors[0]  # the blank line 2 is not a row
    assert not out.exists()
