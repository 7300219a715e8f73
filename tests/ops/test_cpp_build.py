"""The C++ extension's JIT build directory: shared by the interpreter names of one environment, and
not blocked by the leftover of a build that was killed."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chunksft.ops import _cpp
from tests.ops.cpp_support import require_cpp


def test_python_and_python3_of_one_environment_share_the_build(tmp_path, monkeypatch):
    monkeypatch.delenv("CHUNKSFT_CPP_BUILD_DIR", raising=False)
    alias = tmp_path / "python3"
    alias.symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(alias))
    shared = _cpp.build_dir()
    monkeypatch.setattr(sys, "executable", str(Path(sys.executable).resolve()))
    assert _cpp.build_dir() == shared


def test_a_build_killed_midway_does_not_block_the_next_load(tmp_path):
    """torch's `lock` file outlives a killed build and made every later `load` wait forever."""
    require_cpp()
    if not _cpp.status()["source"].startswith("JIT"):
        pytest.skip("this environment uses the prebuilt extension")
    library = _cpp.build_dir() / f"{_cpp.JIT_NAME}.so"
    shutil.copy2(library, tmp_path / library.name)  # a finished build (mtime kept: newer than csrc/) ...
    (tmp_path / "lock").touch()                     # ... and the lock of a later build that was killed
    code = "from chunksft.ops import _cpp; print(_cpp._jit_build().parallel_for_threads() >= 1)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CHUNKSFT_CPP_BUILD_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
    assert "left by a C++ build that did not finish" in out.stderr
    assert not (tmp_path / "lock").exists()
