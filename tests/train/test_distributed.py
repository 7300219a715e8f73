"""Real 2-rank DeepSpeed ZeRO-3 on CPU: storage, exact resume, two nodes, world-size change, export."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from launching import HALF, STEPS, assert_same_weights, deepspeed_cmd, module_cmd, read_jsonl, run
from planted_code import plant_code


def test_reference_run_logs_and_checkpoints(run_a):
    metrics = read_jsonl(run_a / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert all(m["loss"] > 0 and m["skipped"] == 0 for m in metrics)
    evals = read_jsonl(run_a / "eval.jsonl")
    assert [e["step"] for e in evals] == [HALF, STEPS]
    assert {"eval_loss", "accuracy", "accuracy_refined", "mean_refinement_steps"} <= set(evals[-1])
    assert (run_a / "loss.png").stat().st_size > 0
    assert any((run_a / "tensorboard").iterdir())
    for step in (HALF, STEPS):
        marker = json.loads((run_a / "checkpoints" / f"global_step{step}" / "COMPLETE").read_text())
        assert marker["step"] == step and marker["world_size"] == 2
    log = (run_a / "launch.log").read_text()
    assert "resolved config (hash" in log and "held-out answer accuracy" in log


def test_zero3_stores_about_one_over_world_per_rank(run_a):
    info = json.loads((run_a / "run_info.json").read_text())
    assert info["world_size"] == 2
    for local in info["local_elements"]:
        # Parameters under DeepSpeed's persistence threshold (norm weights) are replicated.
        assert 0.45 * info["parameters"] <= local <= 0.55 * info["parameters"]


def test_interrupted_resume_matches_uninterrupted(run_a, run_b):
    """N steps + save + fresh-process resume (past an incomplete newer tag) + N == 2N steps."""
    a, b = read_jsonl(run_a / "metrics.jsonl"), read_jsonl(run_b / "metrics.jsonl")
    assert [m["step"] for m in b] == list(range(1, STEPS + 1))
    for ma, mb in zip(a, b):
        assert (ma["step"], ma["loss"], ma["lr"]) == (mb["step"], mb["loss"], mb["lr"])
    assert_same_weights(run_b, run_a)


def test_two_nodes_resumed_from_the_previous_complete_tag(run_b):
    # The faked newer tag had no marker: the two-node resume went back to step 3 and kept it.
    assert (run_b / "checkpoints" / "global_step5").is_dir()
    assert not (run_b / "checkpoints" / "global_step5" / "COMPLETE").exists()
    assert (run_b / "checkpoints" / f"global_step{STEPS}" / "COMPLETE").exists()
    info = json.loads((run_b / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["start_step"] == HALF


def test_world_size_change_through_universal_checkpoint(run_a, tmp_path, train_flags):
    """2 ranks -> 1 rank (plain python): continues at the saved step with the saved held-out loss."""
    shutil.copytree(run_a / "checkpoints" / f"global_step{HALF}", tmp_path / "checkpoints" / f"global_step{HALF}")
    proc = run(module_cmd("chunksft.train", *train_flags, "--output_dir", str(tmp_path), "--eval_at_start", "true",
                          "--stop_at_step", str(HALF + 1), "--eval_generate_rows", "0"))
    assert "universal checkpoint" in proc.stdout
    assert (tmp_path / "checkpoints" / f"global_step{HALF}_universal" / "COMPLETE").exists()
    saved = next(e for e in read_jsonl(run_a / "eval.jsonl") if e["step"] == HALF)
    resumed = read_jsonl(tmp_path / "eval.jsonl")[0]
    assert resumed["step"] == HALF
    assert resumed["eval_loss"] == pytest.approx(saved["eval_loss"], rel=1e-5)
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [HALF + 1]
    assert json.loads((tmp_path / "run_info.json").read_text())["world_size"] == 1


def test_export_reproduces_engine_logits(run_a, tmp_path):
    from transformers import AutoModelForCausalLM

    from chunksft.models import HybridModel

    out = tmp_path / "hf"
    run(module_cmd("chunksft.export", "--checkpoint", str(run_a), "--output", str(out)))
    reference = torch.load(run_a / "eval_logits.pt")
    model = HybridModel.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(input_ids=reference["input_ids"], attention_mask=reference["attention_mask"]).logits
    torch.testing.assert_close(logits, reference["logits"], rtol=1e-4, atol=1e-4)
    backbone = AutoModelForCausalLM.from_pretrained(out / "backbone").eval()
    assert type(backbone).__module__.startswith("transformers.")
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(tensor, model.backbone.state_dict()[name])
    card = (out / "README.md").read_text()
    assert f"global_step{STEPS}` (step {STEPS})" in card and "`backbone/` is weights only" in card


def test_code_in_a_checkpoint_is_never_run(run_a, tmp_path, train_flags):
    """run_a's tag with a pickle that would write a file (marker re-written to match): export,
    universal conversion and resume each stop with one line, and the file never appears."""
    tag_dir = tmp_path / "checkpoints" / f"global_step{HALF}"
    shutil.copytree(run_a / "checkpoints" / f"global_step{HALF}", tag_dir)
    canary = tmp_path / "canary"
    plant_code(tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt", canary)
    for cmd in (module_cmd("chunksft.export", "--checkpoint", str(tmp_path), "--output", str(tmp_path / "hf")),
                module_cmd("chunksft.checkpoint.universal", "--checkpoint", str(tmp_path)),
                module_cmd("chunksft.train", *train_flags, "--output_dir", str(tmp_path), "--resume", str(tag_dir))):
        proc = run(cmd, check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
        assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "model_states.pt: refused without loading it" in errors[0]
        assert not canary.exists()
    assert not (tmp_path / "hf").exists() and not tag_dir.with_name(tag_dir.name + "_universal").exists()


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path):
    proc = run(module_cmd("chunksft.export", "--checkpoint", str(tmp_path), "--output", str(tmp_path / "o")),
               check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no global_step<N> checkpoint" in proc.stderr


def test_universal_cli_converts_newest_tag(run_a, tmp_path):
    shutil.copytree(run_a / "checkpoints" / f"global_step{STEPS}", tmp_path / "checkpoints" / f"global_step{STEPS}")
    proc = run(module_cmd("chunksft.checkpoint.universal", "--checkpoint", str(tmp_path)))
    universal = tmp_path / "checkpoints" / f"global_step{STEPS}_universal"
    assert str(universal) in proc.stdout
    assert json.loads((universal / "COMPLETE").read_text())["universal"] is True
    assert any((universal / "zero").iterdir())


def test_muon_bd3_run_learns_and_resumes_exactly(tmp_path, train_flags):
    """The default job's stage-1 optimizer: DeepSpeed's Muon (matrices) + AdamW (the rest) on 2 ZeRO-3
    ranks, bd3 mode. The loss falls, and steps 1..3 + save + fresh-process resume + 4..6 equal 1..6."""
    assert train_flags[0] == "--config"
    flags = ["--config", "configs/train/tiny_bd3.yaml", *train_flags[2:], "--optimizer", "muon",
             "--learning_rate", "0.006", "--eval_interval", "0", "--eval_generate_rows", "0", "--eval_loss_rows", "0"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run([*deepspeed_cmd(2), *flags, "--output_dir", str(whole)], log=tmp_path / "whole.log")
    run([*deepspeed_cmd(2), *flags, "--output_dir", str(parts), "--stop_at_step", str(HALF)], log=tmp_path / "p1.log")
    run([*deepspeed_cmd(2), *flags, "--output_dir", str(parts)], log=tmp_path / "p2.log")
    a, b = read_jsonl(whole / "metrics.jsonl"), read_jsonl(parts / "metrics.jsonl")
    assert "mean_rate" in a[0], "a bd3 run (it logs the mean masking rate)"
    assert a[-1]["loss"] < a[0]["loss"]
    assert [(m["step"], m["loss"], m["lr"]) for m in a] == [(m["step"], m["loss"], m["lr"]) for m in b]
    assert_same_weights(parts, whole)
