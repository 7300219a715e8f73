import json

import pytest

from chunksft.data import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()  # the bundled tokenizer, built on first use


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def jsonl(tmp_path):
    """jsonl(rows, name=...) -> path of a JSONL file written in tmp_path."""
    return lambda rows, name="data.jsonl": write_jsonl(tmp_path / name, rows)
