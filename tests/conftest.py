"""Session-wide test settings, imported before any test module is collected.

Triton kernels run in Triton's CPU interpreter in tests (docs/design.md §6). `TRITON_INTERPRET` must be
set before the first `@triton.jit` is created, and test modules of every folder import chunksft
(and deepspeed imports triton), so it is set here rather than in tests/ops.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")


# Fault-injection suite (tests/train/test_faults.py, test_bad_input.py): every test is marked
# `faults`; `make test` runs its fast subset, `make test-faults` (pytest --faults -m faults) adds the
# tests also marked `faults_full`.
def pytest_addoption(parser):
    parser.addoption("--faults", action="store_true", help="also run the tests marked faults_full (make test-faults)")


def pytest_configure(config):
    config.addinivalue_line("markers", "faults: fault-injection and bad-input tests (make test-faults runs all)")
    config.addinivalue_line("markers", "faults_full: slow fault-injection cases, run only with --faults")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--faults"):
        return
    import pytest

    skip = pytest.mark.skip(reason="slow fault-injection case: make test-faults (pytest --faults)")
    for item in items:
        if "faults_full" in item.keywords:
            item.add_marker(skip)
