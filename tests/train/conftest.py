"""Real multi-process DeepSpeed ZeRO-3 runs on CPU (gloo), shared across the tests of this folder.

Each launch costs 10-60 s on the 2-core machines, so every run is a session fixture that several
tests inspect; all use a small slice of the bundled data.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from launching import HALF, STEPS, deepspeed_cmd, free_port, launch_pair, run


@pytest.fixture(scope="session")
def data_files(tmp_path_factory) -> dict[str, str]:
    """64 training and 8 held-out rows of the bundled data as local jsonl files."""
    from chunksft.data.bundled import split_path

    out = tmp_path_factory.mktemp("data")
    for split, n in (("train", 64), ("validation", 8)):
        lines = split_path("bundled", split).read_text().splitlines()[:n]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return {"train": str(out / "train.jsonl"), "validation": str(out / "validation.jsonl")}


@pytest.fixture(scope="session")
def train_flags(data_files) -> list[str]:
    """Flags shared by every test run: 6 steps of 2 rows per rank, saves and evals at 3 and 6."""
    return ["--config", "configs/train/tiny.yaml", "--dataset_name", data_files["train"],
            "--eval_dataset_name", data_files["validation"], "--batch_size", "2", "--max_steps", str(STEPS),
            "--warmup_steps", "2", "--save_interval", str(HALF), "--eval_interval", str(HALF), "--keep_last", "3",
            "--eval_loss_rows", "4", "--eval_generate_rows", "2", "--max_new_tokens", "32", "--steps_per_chunk", "2",
            "--progress_bar", "false", "--backend", "eager"]


@pytest.fixture(scope="session")
def run_a(tmp_path_factory, train_flags) -> Path:
    """Uninterrupted reference: deepspeed launcher, one node, 2 ranks, steps 1..6."""
    out = tmp_path_factory.mktemp("run_a")
    run([*deepspeed_cmd(2), *train_flags, "--output_dir", str(out), "--save_eval_logits", "true"],
        log=out / "launch.log")
    return out


@pytest.fixture(scope="session")
def run_b(tmp_path_factory, train_flags) -> Path:
    """Interrupted twin of run_a through the launch scripts: launch/train_torchrun.sh runs steps
    1..3 and stops; a newer incomplete tag is faked (a save killed midway); then two "nodes"
    (launch/train.sh twice, NODE_RANK 0 and 1, loopback rendezvous) resume in fresh processes and
    run steps 4..6."""
    out = tmp_path_factory.mktemp("run_b")
    config, flags = train_flags[1], [*train_flags[2:], "--output_dir", str(out)]
    run(["bash", "launch/train_torchrun.sh", config, *flags, "--stop_at_step", str(HALF)],
        env={"NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port())}, log=out / "launch1.log")
    ckpts = out / "checkpoints"
    shutil.copytree(ckpts / f"global_step{HALF}", ckpts / "global_step5")
    (ckpts / "global_step5" / "COMPLETE").unlink()
    node = {"NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    launch_pair(["bash", "launch/train.sh", config, *flags], [{**node, "NODE_RANK": str(rank)} for rank in (0, 1)])
    return out
