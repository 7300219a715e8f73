"""python -m chunksft.generate / chunksft.evaluate on an exported folder."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from chunksft import evaluate, generate
from chunksft.data import extract_answer, load_tokenizer
from chunksft.checkpoint.export import save_export
from chunksft.models import HybridConfig, HybridModel


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The folder `python -m chunksft.export` writes (HybridModel, tokenizer, model card, backbone/),
    of a randomly initialised model."""
    out = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    save_export(HybridModel(HybridConfig(max_recursive_steps=2)), load_tokenizer(), str(out),
                source="a randomly initialised model (test fixture)")
    return str(out)


def test_generate_prints_response_and_chunk_steps(exported, capsys):
    assert generate.main(["--model", exported, "--prompt", "Tom has 3 apples.", "--refine",
                          "--max_new_tokens", "32"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() != ""
    assert captured.err.count("refinement steps") == 2  # two chunks of 16 for 32 new tokens


def test_evaluate_prints_accuracy_table(exported, capsys, tmp_path):
    """Also writes the scores as JSON, into a folder that does not exist yet."""
    scores = tmp_path / "not" / "yet" / "scores.json"
    assert evaluate.main(["--model", exported, "--rows", "4", "--max_new_tokens", "32", "--output", str(scores)]) == 0
    out = capsys.readouterr().out
    assert "| bundled:test (4 rows) | 0.0% | 0.0% |" in out  # a random model answers nothing right
    assert json.loads(scores.read_text())["rows"] == 4


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


def _one_error_line(err: str) -> str:
    """The only `error` line of a CLI's stderr (progress bars aside), without a traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("cli, flags", [(generate, ["--prompt", "What is 1 + 1?"]), (evaluate, ["--rows", "2"])],
                         ids=["generate", "evaluate"])
def test_bare_backbone_folder_is_refused(exported, cli, flags, capsys):
    """backbone/ loaded as a HybridModel would get a random head and print a table: one line, exit 2."""
    assert cli.main(["--model", f"{exported}/backbone", *flags]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert line.startswith(f"error: --model {exported}/backbone: config.json has model_type 'qwen3'")
    assert "not its backbone/" in line and captured.out == ""


def _copy_export(exported, tmp_path):
    copy = tmp_path / "hf"
    shutil.copytree(exported, copy)
    return copy


def test_export_without_head_weights_is_refused(exported, tmp_path, capsys):
    copy = _copy_export(exported, tmp_path)
    weights = load_file(copy / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("head.")}, copy / "model.safetensors",
              metadata={"format": "pt"})
    assert generate.main(["--model", str(copy), "--prompt", "What is 1 + 1?"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{copy}: " in line and "weight(s) missing from the folder (they would be random), e.g. head." in line


def _tokenizer_with_more_tokens(tokenizer):
    tokenizer.add_tokens([f"extra{i}" for i in range(600)])  # 512 embedding rows


def _tokenizer_padding_with_eos(tokenizer):
    tokenizer.pad_token = tokenizer.eos_token  # pad id 1, the model pads with 0


@pytest.mark.parametrize("change, expected", [
    (_tokenizer_with_more_tokens, "the tokenizer has 1112 tokens but the model 512 embedding rows"),
    (_tokenizer_padding_with_eos, "the tokenizer's pad_token_id is 1, the model config's 0"),
], ids=["vocabulary", "special_ids"])
def test_tokenizer_that_does_not_fit_the_model_is_refused(exported, tmp_path, change, expected, capsys):
    copy = _copy_export(exported, tmp_path)
    tokenizer = load_tokenizer(str(copy))
    change(tokenizer)
    tokenizer.save_pretrained(copy)
    assert evaluate.main(["--model", str(copy), "--rows", "2"]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert expected in line and "use the tokenizer exported with the model" in line and captured.out == ""


@pytest.mark.parametrize("cli, flags, expected", [
    (evaluate, ["--rows", "0"], "error: --rows 0: the number of held-out rows to evaluate must be at least 1"),
    (generate, ["--prompt", "x", "--max_new_tokens", "0"],
     "error: --max_new_tokens 0: the number of tokens to generate must be at least 1"),
    (generate, ["--prompt", "x", "--steps_per_chunk", "0"],
     "error: --steps_per_chunk 0: the number of denoising forwards per chunk must be at least 1"),
], ids=["evaluate_rows", "generate_max_new_tokens", "generate_steps_per_chunk"])
def test_nothing_to_do_is_one_line(exported, cli, flags, expected, capsys):
    assert cli.main(["--model", exported, *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().startswith(expected) and "\n" not in captured.err.strip() and captured.out == ""


def test_generate_decodes_like_evaluate_by_default(exported, tmp_path, capsys):
    """Without --steps_per_chunk, generate uses the model's own value (what evaluate and the
    training-time evaluation decode with), not a fixed one."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    config["steps_per_chunk"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    outputs = []
    for flags in ([], ["--steps_per_chunk", "1"]):
        assert generate.main(["--model", str(folder), "--prompt", "Compute 4 * 8 + 6.", "--max_new_tokens", "32",
                              *flags]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]


def test_export_folder_has_a_model_card(exported):
    card = (Path(exported) / "README.md").read_text()
    for needed in ("HybridModel.from_pretrained", "python -m chunksft.generate --model DIR", "bidirectional",
                   "`backbone/` is weights only", "not valid"):
        assert needed in card
    backbone_card = (Path(exported) / "backbone" / "README.md").read_text()
    assert "weights only" in backbone_card and "not valid" in backbone_card
