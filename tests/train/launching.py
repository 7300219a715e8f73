"""Helpers to launch real training processes (deepspeed launcher, torchrun, plain python) from tests.

All runs use one thread per rank (determinism, and no oversubscription of the 2-core machines).
"""
from __future__ import annotations

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
