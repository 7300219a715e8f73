import pytest

from chunksft.data import DataError, ReasoningExample, build_dataset, iter_examples, iter_questions
from chunksft.data.formats import Rejection


def examples(path, **kw):
    return [item for _, item in iter_examples(path, **kw)]


def test_natural_reasoning_with_and_without_responses(jsonl):
    path = jsonl([
        {"question": "What is 2 + 3 * 4?", "reference_answer": "14",
         "responses": [{"response_model": "m", "response": "First 3 * 4 = 12.\n\nThen 2 + 12 = 14."}]},
        {"question": "Capital of France?", "reference_answer": "Paris", "responses": []},
        {"question": "Sum of 1 and 1?", "reference_answer": "",
         "responses": [{"response_model": "m", "response": "1 + 1 = 2\nSo the sum is 2"}]},
    ])
    assert examples(path) == [
        ReasoningExample("What is 2 + 3 * 4?", ["First 3 * 4 = 12.", "Then 2 + 12 = 14."], "14"),
        ReasoningExample("Capital of France?", [], "Paris"),
        ReasoningExample("Sum of 1 and 1?", ["1 + 1 = 2"], "So the sum is 2"),
    ]


def test_gsm8k_steps_answer_and_calculator_annotations(jsonl):
    path = jsonl([
        {"question": "Natalia sold clips to 48 friends in April, and half as many in May. How many altogether?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                   "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"},
        {"question": "No final answer?", "answer": "It is 5."},
    ])
    first, second = examples(path)
    assert first.steps == ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = 72 clips altogether."]
    assert first.answer == "72"
    assert second == Rejection("missing_final_answer")


def test_alpaca_with_and_without_input(jsonl):
    path = jsonl([
        {"instruction": "Add the numbers.", "input": "2 and 5", "output": "2 + 5 = 7\n7"},
        {"instruction": "Name a primary colour.", "input": "", "output": "Red"},
    ])
    assert examples(path) == [ReasoningExample("Add the numbers.\n\n2 and 5", ["2 + 5 = 7"], "7"),
                              ReasoningExample("Name a primary colour.", [], "Red")]


def test_messages_last_user_turn_and_assistant_reply(jsonl):
    path = jsonl([
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"},
                      {"role": "user", "content": "And times 3?"},
                      {"role": "assistant", "content": "4 * 3 = 12\n<answer>12</answer>"}]},
        {"messages": [{"role": "user", "content": "Unanswered?"}]},
    ])
    first, second = examples(path)
    assert first == ReasoningExample("And times 3?", ["4 * 3 = 12"], "12")
    assert second == Rejection("no_assistant_turn")


def test_messages_content_as_a_list_of_text_parts(jsonl):
    """The OpenAI / Hugging Face chat format: content as [{"type": "text", "text": ...}] parts,
    concatenated; mixed with string contents in one file (Arrow stores such a column as JSON)."""
    def text(*texts):
        return [{"type": "text", "text": t} for t in texts]

    path = jsonl([
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": text("What is ", "2 + 3?")},
                      {"role": "assistant", "content": text("2 + 3 = 5\n", "<answer>5</answer>")}]},
        {"messages": [{"role": "user", "content": "What is 2 + 4?"},
                      {"role": "assistant", "content": "<answer>6</answer>"}]},
    ])
    assert examples(path) == [ReasoningExample("What is 2 + 3?", ["2 + 3 = 5"], "5"),
                              ReasoningExample("What is 2 + 4?", [], "6")]
    assert [q for _, q in iter_questions(path)] == ["What is 2 + 3?", "What is 2 + 4?"]


def test_messages_non_text_part_is_one_line_naming_row_and_part(jsonl):
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    path = jsonl([{"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                                {"role": "assistant", "content": "<answer>1</answer>"}]},
                  {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is shown?"}, image]},
                                {"role": "assistant", "content": "<answer>1</answer>"}]}])
    for read in (iter_examples, iter_questions):
        with pytest.raises(DataError) as err:
            list(read(path))
        assert str(err.value) == (f"{path} line 2: field 'messages[0].content[1]' is a part of type 'image_url', but "
                                  "only text parts are supported; drop the non-text parts (or the row)")


def test_plain_schema_jsonl_and_parquet_agree(jsonl, tmp_path):
    import datasets

    rows = [{"question": "Tom has 2 bags of 3 apples.", "steps": ["2 * 3 = 6"], "answer": "6"},
            {"question": "q2", "steps": ["a\nb"], "answer": "c"}]
    parquet = str(tmp_path / "plain.parquet")
    datasets.Dataset.from_list(rows).to_parquet(parquet)
    expected = [ReasoningExample("Tom has 2 bags of 3 apples.", ["2 * 3 = 6"], "6"),
                ReasoningExample("q2", ["a", "b"], "c")]  # multi-line steps -> one step per line
    assert examples(jsonl(rows)) == expected
    assert examples(parquet) == expected


def test_rendered_text_rows_and_missing_marker_is_counted(jsonl, tokenizer):
    path = jsonl([
        {"text": "Question: 1 + 2?\n\nLet's solve this step by step:\n1 + 2 = 3\n<answer>3</answer>"},
        {"text": "Question: 1 + 2?\nAnswer: 3"},
    ])
    assert examples(path) == [ReasoningExample("1 + 2?", ["1 + 2 = 3"], "3"), Rejection("missing_marker")]
    dataset, stats = build_dataset(path, tokenizer=tokenizer)
    assert len(dataset) == 1 and stats.rejected == {"missing_marker": 1}
    assert "missing_marker=1" in stats.summary()


@pytest.mark.parametrize("rows,fmt", [
    ([{"question": "q", "steps": [], "answer": "a"}], "plain"),
    ([{"question": "q", "answer": "x\n#### 1"}], "gsm8k"),
    ([{"question": "q", "reference_answer": "a"}], "natural_reasoning"),
    ([{"instruction": "i", "output": "o"}], "alpaca"),
    ([{"messages": [{"role": "user", "content": "u"}]}], "messages"),
])
def test_auto_detects_format_from_columns(rows, fmt):
    from chunksft.data import detect_format

    assert detect_format(list(rows[0]), "f") == fmt


def test_iter_questions_reads_only_the_question_of_every_format(jsonl):
    cases = {
        "plain": ({"question": " Q1 ", "steps": ["a"], "answer": "1"}, "Q1"),
        "question only": ({"question": "Q2"}, "Q2"),
        "gsm8k": ({"question": "Q3", "answer": "no final answer"}, "Q3"),  # a row training would reject
        "natural_reasoning": ({"question": "Q4", "reference_answer": "4", "responses": []}, "Q4"),
        "alpaca": ({"instruction": "Add", "input": "2 and 3"}, "Add\n\n2 and 3"),
        "messages": ({"messages": [{"role": "user", "content": "old"}, {"role": "assistant", "content": "x"},
                                   {"role": "user", "content": "Q6"}]}, "Q6"),
        "text": ({"text": "Question: Q7\n\nLet's solve this step by step:\n"}, "Q7"),
    }
    for name, (data, question) in cases.items():
        assert [q for _, q in iter_questions(jsonl([data, data], name=f"{name}.jsonl"))] == [question] * 2, name
    for bad, fix in (({"text": "no marker"}, "'text'"), ({"instruction": ""}, "'instruction'"),
                     ({"question": None, "x": 1}, "'question'")):
        path = jsonl([bad], name="bad.jsonl")
        with pytest.raises(DataError) as err:
            list(iter_questions(path))
        assert str(err.value).startswith(f"{path} line 1: no question") and fix in str(err.value)
    with pytest.raises(DataError, match="no question column"):
        list(iter_questions(jsonl([{"foo": 1}], name="cols.jsonl")))
