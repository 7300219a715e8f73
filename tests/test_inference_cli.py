"""python -m chunksft.generate / chunksft.evaluate on an exported folder."""
import pytest
import torch

from chunksft import evaluate, generate
from chunksft.data import load_tokenizer
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
