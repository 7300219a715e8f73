"""Bad input: each case is one line naming the file, the row (1-based line for JSONL), the key and the fix."""
import pytest

from chunksft.data import DataError, build_dataset

GOOD = '{"question": "q", "steps": ["1 + 1 = 2"], "answer": "2"}\n'


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_malformed_json_line_names_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + "\n" + '{"question": "q", "steps": [}\n')  # blank line 2, broken line 3
    with pytest.raises(DataError) as excinfo:
        build_dataset(str(path), tokenizer=tokenizer)
    message = one_line_error(excinfo)
    assert f"{path} line 3: malformed JSON" in message and "fix or delete" in message


def test_non_utf8_bytes_name_line(tmp_path, tokenizer):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD.encode() + '{"question": "caf\xe9", "steps": [], "answer": "x"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as excinfo:
        build_dataset(str(path), tokenizer=tokenizer)
    message = one_line_error(excinfo)
    assert f"{path} line 2: not valid UTF-8" in message and "0xe9" in message and "re-encode" in message


def test_missing_field_names_line_and_key(tmp_path, tokenizer):
    path = tmp_path / "missing.jsonl"
    path.write_text(GOOD + GOOD + '{"question": "q", "steps": ["x"]}\n')
    with pytest.raises(DataError) as excinfo:
        build_dataset(str(path), tokenizer=tokenizer, format="plain")
    message = one_line_error(excinfo)
    assert f"{path} line 3: missing field 'answer'" in message and "add it" in message


def test_missing_marker_in_every_row_names_reason_and_first_row(jsonl, tokenizer):
    path = jsonl([{"text": "no marker here"}, {"text": "nor here"}])
    with pytest.raises(DataError) as excinfo:
        build_dataset(path, tokenizer=tokenizer)
    message = one_line_error(excinfo)
    assert path in message and "missing_marker (2 rows, first at" in message and "line 1" in message
    assert "Let's solve this step by step" in message  # the fix


def test_empty_response_is_counted_and_fatal_when_alone(jsonl, tokenizer):
    empty = {"question": "q", "steps": ["  "], "answer": ""}
    dataset, stats = build_dataset(jsonl([empty, {"question": "q", "steps": [], "answer": "1"}]), tokenizer=tokenizer)
    assert len(dataset) == 1 and stats.rejected == {"empty_response": 1} and stats.first_rejected["empty_response"]
    path = jsonl([empty], name="only_empty.jsonl")
    with pytest.raises(DataError) as excinfo:
        build_dataset(path, tokenizer=tokenizer)
    message = one_line_error(excinfo)
    assert path in message and "empty_response" in message and f"{path} line 1" in message


def test_row_longer_than_max_length_names_line(jsonl, tokenizer):
    path = jsonl([{"question": "q", "steps": ["1 + 1 = 2"], "answer": "2"},
                  {"question": "q", "steps": ["1 + 1 = 2"] * 30, "answer": "2"}])
    with pytest.raises(DataError) as excinfo:
        build_dataset(path, tokenizer=tokenizer, chunk_size=16, max_length=64, overflow="error")
    message = one_line_error(excinfo)
    assert f"{path} line 2: row has" in message and "max_length 64" in message and "truncate/skip" in message


@pytest.mark.parametrize("chunk_size", [0, -16])
def test_non_positive_chunk_size(jsonl, tokenizer, chunk_size):
    with pytest.raises(DataError) as excinfo:
        build_dataset(jsonl([{"question": "q", "steps": [], "answer": "1"}]), tokenizer=tokenizer,
                      chunk_size=chunk_size)
    assert "chunk_size must be a positive integer" in one_line_error(excinfo)


def test_wrong_field_type_names_key(jsonl, tokenizer):
    path = jsonl([{"question": "q", "steps": [1, 2], "answer": "3"}])
    with pytest.raises(DataError) as excinfo:
        build_dataset(path, tokenizer=tokenizer)
    assert f"{path} line 1: field 'steps'" in one_line_error(excinfo)


def test_unknown_columns_ask_for_a_format(jsonl, tokenizer):
    path = jsonl([{"prompt": "p", "completion": "c"}])
    with pytest.raises(DataError) as excinfo:
        build_dataset(path, tokenizer=tokenizer)
    assert "cannot detect the data format" in one_line_error(excinfo) and "pass format=" in str(excinfo.value)


def test_missing_local_file(tmp_path, tokenizer):
    with pytest.raises(DataError) as excinfo:
        build_dataset(str(tmp_path / "nope.jsonl"), tokenizer=tokenizer)
    assert "nope.jsonl: does not exist" in one_line_error(excinfo)


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["zero-bytes", "blank-lines"])
def test_empty_file_is_named(tmp_path, tokenizer, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as excinfo:
        build_dataset(str(path), tokenizer=tokenizer)
    assert one_line_error(excinfo) == f"{path}: the file is empty; put the rows in it (JSONL: one JSON object per line)"


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00"], ids=["lone-high", "lone-low"])
def test_lone_surrogate_names_line_and_key(tmp_path, tokenizer, escape):
    """JSON allows a `\\ud800` escape without its pair, which no UTF-8 text can hold: the file line and
    the key are named. A valid pair (the emoji of line 1) is fine."""
    path = tmp_path / "surrogate.jsonl"
    path.write_text(GOOD.replace('"q"', '"q \\ud83d\\ude00"')
                    + '{"question": "q", "steps": ["1 + 1 = 2", "x ' + escape + ' y"], "answer": "2"}\n')
    with pytest.raises(DataError) as excinfo:
        build_dataset(str(path), tokenizer=tokenizer)
    message = one_line_error(excinfo)
    assert message.startswith(f"{path} line 2: field 'steps[1]' holds a lone UTF-16 surrogate")
    assert "fix the escape or delete that line" in message
