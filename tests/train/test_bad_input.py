"""Bad-input matrix through the real CLI (docs/design.md §5, issue 8): every row must end with exactly one
`error...` line on stderr naming the problem (no traceback without DEBUG=1), a non-zero exit code,
and the checkpoint already in the output_dir byte-identical.

Input errors need no second rank: `python -m chunksft.train` runs as one process. Every case starts
from an output_dir holding a copy of run_a's step-3 checkpoint. Cases marked `faults_full` run in
`make test-faults` only.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from launching import HALF, NAN_RUNNER, assert_one_error_line, module_cmd, run, tree_digest

pytestmark = pytest.mark.faults
GOOD = '{"question": "Tom has 2 apples and buys 3 more. How many now?", "steps": ["2 + 3 = 5"], "answer": "5"}'


def _file(tmp: Path, name: str, content: bytes | str) -> str:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _no_mask_tokenizer(tmp: Path) -> str:
    """The bundled tokenizer with its mask token removed from the config and the vocabulary."""
    from chunksft.data import ensure_bundled

    out = tmp / "tokenizer"
    shutil.copytree(ensure_bundled() / "tokenizer", out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("mask_token", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    tok = json.loads((out / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|mask|>"]
    tok["model"]["vocab"].pop("<|mask|>", None)
    (out / "tokenizer.json").write_text(json.dumps(tok))
    return str(out)


# id -> (flags given the case's tmp folder, text the error line must contain); flags replace the
# shared ones (train_flags) where they name the same key.
CASES = {
    "malformed-json": (lambda t: ["--dataset_name", _file(t, "bad.jsonl", GOOD + "\n{\"question\": \"x\",\n")],
                       "bad.jsonl"),
    "missing-fields": (lambda t: ["--dataset_name", _file(t, "fields.jsonl", '{"prompt_text": "hi"}\n' * 3)],
                       "fields.jsonl"),
    "missing-marker": (lambda t: ["--dataset_name", _file(t, "marker.jsonl", '{"text": "just prose, no marker"}\n' * 3)],
                       "marker.jsonl"),
    "empty-response": (lambda t: ["--dataset_name", _file(t, "empty.jsonl",
                                                          '{"question": "q?", "steps": [], "answer": ""}\n' * 3)],
                       "empty_response"),
    "overlong-skip": (lambda t: ["--overlong", "skip", "--max_length", "32"], "rows"),
    "zero-rows": (lambda t: ["--dataset_name", _file(t, "blank.jsonl", "\n\n")], "blank.jsonl"),
    "non-utf8": (lambda t: ["--dataset_name", _file(t, "latin1.jsonl", GOOD.encode() + b"\n" + GOOD.replace(
        "apples", "pommes \xe9").encode("latin-1") + b"\n")], "latin1.jsonl"),
    "unknown-yaml-key": (lambda t: ["--config", _file(t, "cfg.yaml", "training:\n  learning_rat: 0.1\n")],
                         "unknown key 'training.learning_rat'"),
    "unknown-flag": (lambda t: ["--learning_rat", "0.1"], "--learning_rate"),
    "bad-probability": (lambda t: ["--mask_probability", "1.5"], "objective.mask_probability"),
    "bad-chunk-size": (lambda t: ["--chunk_size", "0"], "objective.chunk_size"),
    "checkpoint-config-mismatch": (lambda t: ["--learning_rate", "5e-4"], "training.learning_rate"),  # 1-rank resume
    "checkpoint-chunk-size-mismatch": (lambda t: ["--chunk_size", "8"], "objective.chunk_size"),
    "flash-attn-on-cpu": (lambda t: ["--attn_implementation", "flash_attention_2"], "flash"),
    "float16-on-cpu": (lambda t: ["--dtype", "float16"], "use --dtype float32 or --dtype bfloat16 on CPU"),
    "offline-hub-backbone": (lambda t: ["--name_or_path", "chunksft-tests/no-such-model"],
                             "'chunksft-tests/no-such-model' is not a local folder, and offline mode is on"),
    "backbone-folder-without-config": (lambda t: ["--name_or_path", str(t)], "the folder has no config.json"),
    "output-dir-is-a-file": (lambda t: ["--output_dir", _file(t, "out.txt", "")], "out.txt is a file"),
    "output-dir-read-only": (lambda t: ["--output_dir", "/sys/chunksft_out"],  # sysfs: not even root may write
                             "/sys/chunksft_out is not writable"),
}
FAST = {"unknown-flag", "bad-probability", "checkpoint-chunk-size-mismatch", "float16-on-cpu",
        "offline-hub-backbone"}  # malformed-json, empty file, lone surrogate, chat parts: tested in tests/data
# Environment of a case's run: the hub case runs in offline mode (same error path as a machine
# without network, without waiting for retries, and whatever the hub holds).
CASE_ENV = {"offline-hub-backbone": {"HF_HUB_OFFLINE": "1"}}


@pytest.fixture
def out_with_checkpoint(run_a, tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "out"
    shutil.copytree(run_a / "checkpoints" / f"global_step{HALF}", out / "checkpoints" / f"global_step{HALF}")
    return out, tree_digest(out / "checkpoints")


def _with(flags: list[str], overrides: list[str]) -> list[str]:
    """`flags` with the --key value pairs of `overrides` replacing or adding to them."""
    pairs = dict(zip(flags[::2], flags[1::2]))
    pairs.update(zip(overrides[::2], overrides[1::2]))
    return [item for pair in pairs.items() for item in pair]


@pytest.mark.parametrize("case", [pytest.param(c, id=c, marks=() if c in FAST else pytest.mark.faults_full)
                                  for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(case, out_with_checkpoint, train_flags):
    out, before = out_with_checkpoint
    make_flags, expected = CASES[case]
    flags = _with([*train_flags, "--output_dir", str(out)], make_flags(out.parent))
    proc = run(module_cmd("chunksft.train", *flags), check=False, log=out.parent / "cli.log", env=CASE_ENV.get(case))
    assert_one_error_line(proc, expected)
    assert tree_digest(out / "checkpoints") == before


@pytest.mark.faults_full
def test_nonfinite_losses_stop_with_one_line_and_keep_checkpoints(tmp_path, train_flags):
    """NaN on training forwards 2, 3 and 6 onwards: steps 1-3 run (two batches skipped), step 3 is
    saved, then 3 NaN in a row stop the run; the saved step 3 is complete and untouched afterwards."""
    proc = run([sys.executable, "-c", NAN_RUNNER, *train_flags, "--output_dir", str(tmp_path),
                "--max_nonfinite_in_a_row", "3", "--eval_interval", "0"], check=False)
    assert_one_error_line(proc, "non-finite losses in a row")
    marker = json.loads((tmp_path / "checkpoints" / f"global_step{HALF}" / "COMPLETE").read_text())
    from chunksft.checkpoint.tags import validate_tag

    assert marker["step"] == HALF and validate_tag(str(tmp_path / "checkpoints" / f"global_step{HALF}")) is None


@pytest.mark.faults_full
def test_hostfile_with_a_missing_node_is_one_line(tmp_path):
    hostfile = _file(tmp_path, "hostfile", "localhost slots=1\nnode-that-does-not-exist.invalid slots=1\n")
    proc = run(["bash", "launch/train.sh", "configs/train/tiny.yaml", "--output_dir", str(tmp_path / "out")],
               env={"HOSTFILE": hostfile, "NNODES": "2", "NPROC_PER_NODE": "1"}, check=False, timeout=120)
    assert_one_error_line(proc, "node-that-does-not-exist.invalid")
    short = _file(tmp_path, "short", "localhost slots=1\n")
    proc = run(["bash", "launch/train.sh", "configs/train/tiny.yaml", "--output_dir", str(tmp_path / "out")],
               env={"HOSTFILE": short, "NNODES": "2", "NPROC_PER_NODE": "1"}, check=False, timeout=120)
    assert_one_error_line(proc, "NNODES=2")
    assert not (tmp_path / "out").exists()


@pytest.mark.faults_full
def test_tokenizer_without_mask_token_and_resume_none_keep_saved_work(out_with_checkpoint, train_flags):
    """Not an error: a tokenizer without a mask token gets `<|mask|>` appended (the backbone has a
    free embedding row for it; without one build_model stops with a one-line ConfigError). With
    --resume none the run starts over in a folder that holds a complete global_step3: the old run
    moves to previous_runs/<time>/ (byte-identical) instead of being deleted or mixed with the new."""
    out, before = out_with_checkpoint
    flags = _with([*train_flags, "--output_dir", str(out)],
                  ["--tokenizer", _no_mask_tokenizer(out.parent), "--resume", "none", "--max_steps", str(HALF),
                   "--eval_interval", "0", "--eval_generate_rows", "0"])
    proc = run(module_cmd("chunksft.train", *flags), log=out.parent / "cli.log")
    assert "held another run: moved its files to" in proc.stdout
    (moved,) = (out / "previous_runs").iterdir()
    assert tree_digest(moved / "checkpoints") == before
    assert (out / "checkpoints" / f"global_step{HALF}" / "COMPLETE").exists()


@pytest.mark.parametrize("make_output,problem", [
    pytest.param(lambda t: _file(t, "model", "a file"), " is a file; pass a folder path", id="file"),
    pytest.param(lambda t: "/sys/chunksft_export", ": /sys is not writable", id="read-only",
                 marks=pytest.mark.faults_full)])
def test_export_to_a_file_or_read_only_place_is_one_line(tmp_path, make_output, problem):
    """export checks --output before it reads the checkpoint: a file in its place, or a place that
    takes no files (sysfs refuses them even to root), is one line, exit 2; nothing is written."""
    output = Path(make_output(tmp_path))
    before = output.read_bytes() if output.exists() else None
    proc = run(module_cmd("chunksft.export", "--checkpoint", str(tmp_path), "--output", str(output)), check=False)
    assert proc.returncode == 2
    assert_one_error_line(proc, f"--output {output}{problem}")
    assert (output.read_bytes() if output.exists() else None) == before
