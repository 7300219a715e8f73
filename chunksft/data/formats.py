"""Dataset formats -> `ReasoningExample`s.

Sources are loaded through `datasets.load_dataset`: local .jsonl / .json / .parquet files, or a hub
name (optionally `name:config`, e.g. `openai/gsm8k:main`). Each row is mapped by one format:

- plain (question, steps as list or text, answer): as given; the bundled data.
- natural_reasoning (question, responses, reference_answer): steps = lines of
  `responses[0].response`, answer = `reference_answer`, else the response's last line; without a
  response, the lines of `reference_answer` (last line = answer).
- gsm8k (question, answer): lines before `####` are steps, with `<<...>>` calculator annotations
  removed; the answer is the text after `####` (a row without it is rejected and counted).
- alpaca (instruction, optional input, output): question = instruction, then a blank line and the input when
  non-empty; the output's last line is the answer and the lines before it are steps (so a one-line
  output is just the answer).
- messages ([{role, content}]): question = the last user turn; the first assistant turn after it
  gives an `<answer>` tag's content as answer (lines before it = steps), else last line = answer.
  `content` is a string or a list of parts (`[{"type": "text", "text": ...}]`, the OpenAI /
  Hugging Face chat format) whose texts are concatenated as chat templates do; a non-text part
  (image, audio...) is a DataError naming the row.
- text (a fully rendered row): split at the marker line (rows without it are rejected and
  counted, never guessed), answer from the `<answer>` tag; re-rendered canonically.

`auto` picks the format from the columns. A row missing a required field is a DataError naming the
file, row and key; row-level problems (no marker, empty response...) are returned as `Rejection`s.
`iter_questions` reads only the question of each row (prediction inputs: response fields optional).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from chunksft.data.errors import DataError
from chunksft.data.template import (ANSWER_OPEN, MARKER, QUESTION_PREFIX, MissingMarker, ReasoningExample, lines_of,
                                    normalize, split_reasoning, split_text)

FORMATS = ("plain", "natural_reasoning", "gsm8k", "alpaca", "messages", "text")
_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_CALCULATOR = re.compile(r"<<[^>]*>>")


@dataclass(frozen=True)
class Rejection:
    """A row that cannot be used; `reason` is a key of `errors.REJECTION_FIXES`."""

    reason: str


class _Row:
    """Field access for one row that turns a missing field into a one-line DataError."""

    def __init__(self, data: dict, where: str, fmt: str):
        self.data, self.where, self.fmt = data, where, fmt

    def get(self, key: str, *, required: bool = True, kind: type | tuple = str) -> Any:
        value = self.data.get(key)
        if value is None:
            if required:
                raise DataError(f"{self.where}: missing field {key!r} (format {self.fmt} needs "
                                f"{', '.join(REQUIRED[self.fmt])}); add it or pass the right format")
            return None
        if not isinstance(value, kind):
            raise DataError(f"{self.where}: field {key!r} has type {type(value).__name__}, expected "
                            f"{getattr(kind, '__name__', kind)}; fix the row")
        return value

    def error(self, key: str, problem: str, fix: str) -> DataError:
        return DataError(f"{self.where}: field {key!r} {problem}; {fix}")


def _plain(row: _Row) -> ReasoningExample | Rejection:
    steps = row.get("steps", kind=(list, str))
    if isinstance(steps, list) and not all(isinstance(s, str) for s in steps):
        raise row.error("steps", "must be a list of strings", "write one string per step")
    return ReasoningExample(row.get("question"), lines_of(steps) if isinstance(steps, str) else steps,
                            row.get("answer"))


def _natural_reasoning(row: _Row) -> ReasoningExample | Rejection:
    responses = row.get("responses", required=False, kind=list) or []
    reference = row.get("reference_answer", required=False) or ""
    first = responses[0] if responses else None
    if first is not None and not isinstance(first, dict):
        raise row.error("responses", "must be a list of {response: ...} objects", "fix the row")
    response = (first or {}).get("response") or ""
    if response.strip():
        steps, answer = split_reasoning(response, final_answer=reference)
    else:  # no model response: the reference answer is all the reasoning there is
        steps, answer = split_reasoning(reference)
    return ReasoningExample(row.get("question"), steps, answer)


def _gsm8k(row: _Row) -> ReasoningExample | Rejection:
    solution = row.get("answer")
    if "####" not in solution:
        return Rejection("missing_final_answer")
    reasoning, _, final = solution.rpartition("####")
    return ReasoningExample(row.get("question"), lines_of(_CALCULATOR.sub("", reasoning)), final.strip())


def _alpaca_question(row: _Row) -> str:
    question = row.get("instruction").strip()
    extra = (row.get("input", required=False) or "").strip()
    return f"{question}\n\n{extra}" if extra else question


def _alpaca(row: _Row) -> ReasoningExample | Rejection:
    steps, answer = split_reasoning(row.get("output"))
    return ReasoningExample(_alpaca_question(row), steps, answer)


def _content_text(row: _Row, i: int, content: Any) -> str:
    """The text of `messages[i].content`: a string, or a list of text parts concatenated."""
    if isinstance(content, str):
        return content
    key = f"messages[{i}].content"
    if not isinstance(content, list):
        raise row.error(key, f"has type {type(content).__name__}", "give a string or a list of "
                        "{'type': 'text', 'text': ...} parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise row.error(f"{key}[{j}]", f"is a {type(part).__name__}", "write {'type': 'text', 'text': ...}")
        if part.get("type") != "text":
            raise row.error(f"{key}[{j}]", f"is a part of type {part.get('type')!r}, but only text parts are "
                            "supported", "drop the non-text parts (or the row)")
        if not isinstance(part.get("text"), str):
            raise row.error(f"{key}[{j}]", "needs a string 'text'", "fix the part")
        texts.append(part["text"])
    return "".join(texts)


def _last_user_turn(row: _Row) -> tuple[list[dict], int]:
    """-> (turns as {"role", "content": text}, index of the last user turn)."""
    turns = []
    for i, turn in enumerate(row.get("messages", kind=list)):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or turn.get("content") is None:
            raise row.error(f"messages[{i}]", "needs string 'role' and 'content'", "fix the conversation")
        turns.append({"role": turn["role"], "content": _content_text(row, i, turn["content"])})
    users = [i for i, t in enumerate(turns) if t["role"] == "user"]
    if not users:
        raise row.error("messages", "has no user turn", "add a {'role': 'user', ...} message")
    return turns, users[-1]


def _messages(row: _Row) -> ReasoningExample | Rejection:
    turns, user = _last_user_turn(row)
    replies = [t for t in turns[user + 1:] if t["role"] == "assistant"]
    if not replies:
        return Rejection("no_assistant_turn")
    steps, answer = split_reasoning(replies[0]["content"])
    return ReasoningExample(turns[user]["content"], steps, answer)


def _question_of_prompt(prompt: str) -> str:
    """The question of a rendered prompt (everything up to and including the marker line)."""
    question = prompt[:prompt.rindex(MARKER)].strip()
    question = question[len(QUESTION_PREFIX):] if question.startswith(QUESTION_PREFIX) else question
    return question.strip()


def _text(row: _Row) -> ReasoningExample | Rejection:
    """Rows already rendered in our layout; they are re-rendered canonically after parsing."""
    try:
        prompt, response = split_text(row.get("text"))
    except MissingMarker:
        return Rejection("missing_marker")
    if ANSWER_OPEN not in response:
        return Rejection("missing_answer_tag" if response.strip() else "empty_response")
    steps, answer = split_reasoning(response)
    return ReasoningExample(_question_of_prompt(prompt), steps, answer)


MAPPERS: dict[str, Callable[[_Row], ReasoningExample | Rejection]] = {
    "plain": _plain, "natural_reasoning": _natural_reasoning, "gsm8k": _gsm8k,
    "alpaca": _alpaca, "messages": _messages, "text": _text,
}
REQUIRED = {
    "plain": ("question", "steps", "answer"), "natural_reasoning": ("question", "responses|reference_answer"),
    "gsm8k": ("question", "answer"), "alpaca": ("instruction", "output"), "messages": ("messages",),
    "text": ("text",),
}


def detect_format(columns: list[str], source: str) -> str:
    """Pick a format from the column names (most specific first)."""
    cols = set(columns)
    if "messages" in cols:
        return "messages"
    if "question" in cols and cols & {"responses", "reference_answer"}:
        return "natural_reasoning"
    if {"question", "steps"} <= cols:
        return "plain"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"question", "answer"} <= cols:
        return "gsm8k"
    if "text" in cols:
        return "text"
    raise DataError(f"{source}: cannot detect the data format from columns {sorted(cols)}; "
                    f"pass format= one of {', '.join(FORMATS)}")


def _diagnose_json(path: str) -> DataError | None:
    """Find the first undecodable byte or malformed JSON line of a file load_dataset refused."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return DataError(f"{path} line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {col}); "
                         f"re-encode the file as UTF-8")
    if not text.strip():
        return DataError(f"{path}: the file is empty; put the rows in it (JSONL: one JSON object per line)")
    if text.lstrip().startswith("["):  # a JSON array file
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return DataError(f"{path} line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}); "
                             f"fix the JSON array")
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return DataError(f"{path} line {number}: malformed JSON ({exc.msg} at column {exc.colno}); "
                             f"fix or delete that line (one JSON object per line)")
        if not isinstance(value, dict):
            return DataError(f"{path} line {number}: expected a JSON object, got {type(value).__name__}; "
                             f"write one object per line")
        key = _lone_surrogate_key(value)
        if key is not None:
            return DataError(f"{path} line {number}: field {key!r} holds a lone UTF-16 surrogate (a \\ud800-\\udfff "
                             "escape without its pair), which is not valid Unicode; fix the escape or delete that line")
    return None


def _lone_surrogate_key(value: Any, key: str = "") -> str | None:
    """Key path (e.g. `messages[1].content`) of the first string holding a lone surrogate: JSON's
    `\\ud800` escapes decode to one, while a valid high+low pair decodes to a single character."""
    if isinstance(value, str):
        return key if any("\ud800" <= char <= "\udfff" for char in value) else None
    if isinstance(value, dict):
        children = ((f"{key}.{name}" if key else name, child) for name, child in value.items())
    else:
        children = ((f"{key}[{i}]", child) for i, child in enumerate(value if isinstance(value, list) else ()))
    return next((found for path, child in children if (found := _lone_surrogate_key(child, path)) is not None), None)


def _jsonl_line_numbers(path: str) -> list[int]:
    """1-based line number of each row (load_dataset skips blank lines)."""
    with open(path, "rb") as fh:
        return [n for n, line in enumerate(fh, start=1) if line.strip()]


def load_rows(source: str, split: str = "train") -> tuple[Any, Callable[[int], str], str]:
    """Load a local file or hub dataset -> (datasets.Dataset, where(row_index) -> "file line N", name).

    For a local file `split` is ignored (the file is the split).
    """
    import datasets  # heavy; only needed when loading

    if os.path.isfile(source):
        ext = os.path.splitext(source)[1].lower()
        if ext not in _LOCAL_BUILDERS:
            raise DataError(f"{source}: unsupported file type {ext!r}; use .jsonl, .json or .parquet")
        try:
            rows = datasets.load_dataset(_LOCAL_BUILDERS[ext], data_files=source, split="train")
        except Exception as exc:
            diagnosis = _diagnose_json(source) if ext != ".parquet" else None
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise (diagnosis or DataError(f"{source}: cannot be read ({reason}); check the file")) from exc
        if ext == ".jsonl":
            lines = _jsonl_line_numbers(source)
            return rows, lambda i: f"{source} line {lines[i]}", source
        return rows, lambda i: f"{source} row {i + 1}", source
    if os.path.exists(source) or source.endswith(tuple(_LOCAL_BUILDERS)):
        problem = "is not a file" if os.path.exists(source) else "does not exist"
        raise DataError(f"{source}: {problem}; pass a .jsonl/.json/.parquet file or a hub dataset name")
    name, _, config = source.partition(":")
    try:
        rows = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{source}: cannot load hub dataset split {split!r} ({reason}); "
                        f"check the name/split or pass a local file") from exc
    return rows, lambda i: f"{source}[{split}] row {i + 1}", source


def _guarded(rows, source: str) -> Iterator[dict]:
    """Iterate rows; Arrow decodes strings lazily, so undecodable bytes may only surface here."""
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        diagnosis = _diagnose_json(source) if source.endswith((".json", ".jsonl")) else None
        raise (diagnosis or DataError(f"{source}: not valid UTF-8 ({exc.reason}); re-encode it as UTF-8")) from exc


def iter_examples(source: str, *, format: str = "auto", split: str = "train", max_rows: int | None = None
                  ) -> Iterator[tuple[str, ReasoningExample | Rejection]]:
    """Yield (where, normalized ReasoningExample or Rejection) for each row of `source`."""
    if format != "auto" and format not in MAPPERS:
        raise DataError(f"unknown data format {format!r}; use auto or one of {', '.join(FORMATS)}")
    rows, where, name = load_rows(source, split)
    fmt = detect_format(rows.column_names, name) if format == "auto" else format
    if max_rows is not None:
        rows = rows.select(range(min(max_rows, len(rows))))
    mapper = MAPPERS[fmt]
    for i, data in enumerate(_guarded(rows, name)):
        ref = where(i)
        result = mapper(_Row(data, ref, fmt))
        if isinstance(result, ReasoningExample):
            result = normalize(result)
            if not result.question:
                result = Rejection("empty_question")
            elif not result.steps and not result.answer:
                result = Rejection("empty_response")
        yield ref, result


def _question_field(row: _Row) -> str | None:
    return row.get("question", required=False)


def _alpaca_question_only(row: _Row) -> str | None:
    return _alpaca_question(row) if row.data.get("instruction") is not None else None


def _messages_question(row: _Row) -> str | None:
    if row.data.get("messages") is None:
        return None
    turns, user = _last_user_turn(row)
    return turns[user]["content"]


def _text_question(row: _Row) -> str | None:
    try:
        prompt, _ = split_text(row.get("text", required=False) or "")
    except MissingMarker:
        return None  # the prompt boundary is never guessed
    return _question_of_prompt(prompt)


# Question-only readers (prediction inputs need no response): format -> question or None.
QUESTION_READERS: dict[str, Callable[[_Row], str | None]] = {
    "plain": _question_field, "natural_reasoning": _question_field, "gsm8k": _question_field,
    "alpaca": _alpaca_question_only,
    "messages": _messages_question,
    "text": _text_question,
}
QUESTION_HINT = {
    "plain": "a non-empty 'question' string", "natural_reasoning": "a non-empty 'question' string",
    "gsm8k": "a non-empty 'question' string", "alpaca": "a non-empty 'instruction' string",
    "messages": "a user turn in 'messages'",
    "text": f"a 'text' rendered as 'Question: ...\\n\\n{MARKER}'",
}


def detect_question_format(columns: list[str], source: str) -> str:
    """The format whose question field a row has (prediction inputs may have no response columns)."""
    cols = set(columns)
    for column, fmt in (("messages", "messages"), ("question", "plain"), ("instruction", "alpaca"), ("text", "text")):
        if column in cols:
            return fmt
    raise DataError(f"{source}: no question column in {sorted(cols)}; give each row a 'question' "
                    f"(or 'instruction', 'messages', 'text')")


def iter_questions(source: str, *, format: str = "auto", split: str = "train") -> Iterator[tuple[str, str]]:
    """Yield (where, question) for each row of `source` in any supported format; only the question
    is read (response fields may be absent). A row without a usable question is a one-line
    DataError naming the file and the row."""
    if format != "auto" and format not in MAPPERS:
        raise DataError(f"unknown data format {format!r}; use auto or one of {', '.join(FORMATS)}")
    rows, where, name = load_rows(source, split)
    fmt = detect_question_format(rows.column_names, name) if format == "auto" else format
    reader = QUESTION_READERS[fmt]
    for i, data in enumerate(_guarded(rows, name)):
        ref = where(i)
        question = reader(_Row(data, ref, fmt))
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{ref}: no question (format {fmt} needs {QUESTION_HINT[fmt]}); "
                            f"fix or delete that row")
        yield ref, question.strip()
