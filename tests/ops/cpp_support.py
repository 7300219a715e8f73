"""Shared by the C++ op tests: the extension must load wherever a C++ compiler exists (a broken build
fails the tests instead of silently falling back); without a compiler they are skipped."""
import shutil

import pytest

from chunksft.ops import _cpp


def require_cpp():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the cpp backend falls back to eager here")
    status = _cpp.status()
    assert status["available"], f"C++ extension failed to load: {status['error']}"
    return _cpp.load()
