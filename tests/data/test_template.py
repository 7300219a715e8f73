import pytest

from chunksft.data.template import (MARKER, MissingMarker, ReasoningExample, extract_answer, render, split_reasoning,
                                    split_text)


def test_render_layout_matches_design():
    prompt, response = render(ReasoningExample("Tom has 3 bags of 4 apples. How many?", ["3 * 4 = 12"], "12"))
    assert prompt == "Question: Tom has 3 bags of 4 apples. How many?\n\nLet's solve this step by step:\n"
    assert response == "3 * 4 = 12\n<answer>12</answer>"
    assert MARKER == "Let's solve this step by step:"


def test_split_text_at_marker_includes_marker_line_in_prompt():
    prompt, response = render(ReasoningExample("q?", ["a", "b"], "c"))
    assert split_text(prompt + response) == (prompt, response)


def test_text_without_marker_is_rejected_not_guessed():
    with pytest.raises(MissingMarker):
        split_text("Question: q?\nSolution:\n1 + 1 = 2\n<answer>2</answer>")


def test_split_reasoning_rules():
    assert split_reasoning("x = 1\n\n  y = 2 \n") == (["x = 1"], "y = 2")
    assert split_reasoning("x = 1\ny = 2", final_answer="2") == (["x = 1", "y = 2"], "2")
    assert split_reasoning("x = 1\n<answer>7</answer>\n") == (["x = 1"], "7")
    assert split_reasoning("  \n") == ([], "")
    assert extract_answer("1 + 1 = 2\n<answer> 2 </answer><|endoftext|>") == "2"
    assert extract_answer("no tag") is None
