"""The C++ ops run on torch's intra-op threads (csrc/ uses at::parallel_for, which is parallel only
when the extension is compiled with OpenMP), inside the one OpenMP runtime torch loaded."""
import sys

import pytest
import torch

from tests.ops.cpp_support import require_cpp

pytestmark = pytest.mark.skipif(not torch.backends.openmp.is_available(), reason="torch built without OpenMP")


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_for_uses_every_intra_op_thread(threads, restore_threads):
    ext = require_cpp()
    torch.set_num_threads(threads)
    assert ext.parallel_for_threads() == threads


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_openmp_runtime_in_the_process():
    require_cpp()
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) == 1, f"two OpenMP runtimes loaded (the extension's threads would ignore torch's): {runtimes}"
