"""Helpers to launch real training processes (deepspeed launcher, torchrun, plain python) from tests.

All runs use one thread per rank (determinism, and no oversubscription of the 2-core machines).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STEPS, HALF = 6, 3
# Run-only flags (not in the config hash): no evaluation, TensorBoard or plot, so a run costs its
# launch and its training steps only.
QUIET = ["--eval_interval", "0", "--eval_loss_rows", "0", "--eval_generate_rows", "0", "--tensorboard", "false",
         "--plot", "false"]

# Runs chunksft.train with the model's training loss made NaN on chosen forward calls (1-based).
NAN_RUNNER = """
import sys
import chunksft.models.hybrid as hybrid
original = hybrid.HybridModel.forward
calls = [0]
def forward(self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    if self.training:
        calls[0] += 1
        if calls[0] in (2, 3) or calls[0] >= 6:
            out.loss = out.loss * float("nan")
    return out
hybrid.HybridModel.forward = forward
from chunksft.train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_env(**extra: str) -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env.pop("DEBUG", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd: list[str], *, timeout: int = 600, check: bool = True, log: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` from the repository root (extra `env` variables); on an unexpected exit code fail
    with the output's tail."""
    proc = subprocess.run(cmd, cwd=REPO, env=run_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)
    if log is not None:
        log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:6])} ... exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def launch_pair(cmd: list[str], envs: list[dict[str, str]], *, timeout: int = 600) -> None:
    """Start `cmd` once per "node" (one `envs` entry each) at the same time and wait for all."""
    procs = [subprocess.Popen(cmd, cwd=REPO, env=run_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for env in envs]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        if proc.returncode != 0:
            pytest.fail(f"node launcher exited {proc.returncode}:\n{out[-6000:]}")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def module_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def deepspeed_cmd(nproc: int, *extra: str) -> list[str]:
    return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port()), *extra,
            "--module", "chunksft.train"]


def final_weights(run_dir: Path, step: int = STEPS) -> dict:
    """fp32 weights of a run's checkpoint global_step{step}, consolidated from its ZeRO-3 shards."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=f"global_step{step}")


def assert_same_weights(run_dir: Path, reference: Path, step: int = STEPS) -> None:
    """Bitwise-equal final weights of two runs."""
    import torch

    wa, wb = final_weights(reference, step), final_weights(run_dir, step)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (relative path -> digest): to prove files were not touched."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def start(cmd: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` from the repository root in the background, output to `log`."""
    return subprocess.Popen(cmd, cwd=REPO, env=run_env(**(env or {})), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True)


def assert_one_error_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    """A failed run that printed exactly one `error...` line on stderr, containing `expected`, and no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
