"""The chunk_sft text layout (docs/design.md §1.2).

    Question: {question}\\n\\nLet's solve this step by step:\\n{step 1}\\n{step 2}...\\n<answer>{answer}</answer>

followed by EOS (added in token space by the encoder, not here). The prompt is everything up to and
including the marker line; the response is the rest. With no steps, the response is just the
answer tag.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

QUESTION_PREFIX = "Question: "
MARKER = "Let's solve this step by step:"
PROMPT_SUFFIX = f"\n\n{MARKER}\n"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

_ANSWER_TAG = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class ReasoningExample:
    """One training row: a question, one reasoning step per line, and the final answer."""

    question: str
    steps: list[str]
    answer: str


class MissingMarker(ValueError):
    """Raised by `split_text` for a text without the marker line (callers count it)."""


def lines_of(text: str) -> list[str]:
    """Non-empty, stripped lines: multi-line reasoning becomes one step per line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def normalize(example: ReasoningExample) -> ReasoningExample:
    """Strip whitespace and split multi-line steps, so every step is exactly one line."""
    steps = [line for step in example.steps for line in lines_of(step)]
    return ReasoningExample(example.question.strip(), steps, example.answer.strip())


def render_prompt(question: str) -> str:
    return f"{QUESTION_PREFIX}{question}{PROMPT_SUFFIX}"


def render_response(steps: list[str], answer: str) -> str:
    return "\n".join([*steps, f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"])


def render(example: ReasoningExample) -> tuple[str, str]:
    """-> (prompt, response); prompt + response is the full text (without EOS)."""
    return render_prompt(example.question), render_response(example.steps, example.answer)


def split_text(text: str) -> tuple[str, str]:
    """Split a full text at the marker line -> (prompt incl. the marker line, response).

    Raises MissingMarker when the marker line is absent: the prompt boundary is never guessed.
    """
    idx = text.find(MARKER)
    if idx < 0:
        raise MissingMarker(f"no {MARKER!r} line")
    end = idx + len(MARKER)
    if text.startswith("\n", end):  # the marker *line* includes its newline
        end += 1
    return text[:end], text[end:]


def split_reasoning(text: str, final_answer: str | None = None) -> tuple[list[str], str]:
    """Reasoning text -> (steps, answer), the one rule every loader shares.

    - an explicit `final_answer` (non-empty): every line of `text` is a step;
    - else an `<answer>...</answer>` tag in `text`: its content is the answer, lines before it are steps;
    - else the last non-empty line is the answer and the lines before it are the steps.
    Empty text and no final answer gives ([], "").
    """
    if final_answer is not None and final_answer.strip():
        return lines_of(text), final_answer.strip()
    tag = _ANSWER_TAG.search(text)
    if tag:
        return lines_of(text[:tag.start()]), tag.group(1).strip()
    lines = lines_of(text)
    if not lines:
        return [], ""
    return lines[:-1], lines[-1]


def extract_answer(text: str) -> str | None:
    """The content of the last `<answer>...</answer>` in a generated text, or None."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None
