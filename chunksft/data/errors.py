"""Data errors and per-reason row accounting.

Fatal problems (a file that cannot be parsed, a row without a required field, a bad argument) raise
`DataError`, always one line naming the file, the row and the key, and the fix. Row-level problems
that only make one row unusable (no marker, empty response, too long) are *counted* in `DataStats`
instead; only a source with zero usable rows raises.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Counted row rejections: reason -> the fix, used in the error when every row is rejected.
REJECTION_FIXES = {
    "missing_marker": "render rows as 'Question: ...\\n\\nLet's solve this step by step:\\n...' "
                      "or give structured fields (question/steps/answer)",
    "missing_answer_tag": "end the response with <answer>...</answer>",
    "missing_final_answer": "gsm8k answers must end with '#### <answer>'",
    "empty_question": "give every row a non-empty question",
    "empty_response": "give every row reasoning steps or an answer",
    "no_assistant_turn": "end each conversation with an assistant reply after the last user turn",
    "prompt_too_long": "raise --max_length or shorten the question",
    "too_long": "raise --max_length or use overflow='truncate'",
}


class DataError(ValueError):
    """A one-line, actionable data error (file, row, key, fix)."""


@dataclass
class DataStats:
    """Row accounting of one `build_dataset` call.

    `rejected` counts unusable rows per reason, `first_rejected` remembers where each reason first
    occurred (e.g. "line 7") so an error can point at a concrete row. `truncated` rows are kept.
    """

    source: str
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    tokens: int = 0
    rejected: Counter = field(default_factory=Counter)
    first_rejected: dict = field(default_factory=dict)
    held_out: int | None = None  # rows set aside as held out by question hash (training part only)

    def reject(self, reason: str, where: str) -> None:
        self.rejected[reason] += 1
        self.first_rejected.setdefault(reason, where)

    def summary(self) -> str:
        """One line, e.g. `train.jsonl: 98/100 rows kept (3 truncated, 5120 tokens); rejected: missing_marker=2`."""
        rejected = ", ".join(f"{r}={n}" for r, n in self.rejected.most_common()) or "none"
        line = (f"{self.source}: {self.kept}/{self.rows} rows kept ({self.truncated} truncated, "
                f"{self.tokens} tokens); rejected: {rejected}")
        if self.held_out is not None:
            line += f"; {self.held_out} more rows held out for evaluation (never trained on)"
        return line

    def raise_if_empty(self) -> None:
        """Raise a one-line DataError naming the top rejection reason when no row is usable."""
        if self.kept:
            return
        if not self.rejected:
            held = f" ({self.held_out} rows are in the held-out part)" if self.held_out else ""
            raise DataError(f"{self.source}: no rows to train on{held}; check the file or the split name")
        reason, count = self.rejected.most_common(1)[0]
        raise DataError(f"{self.source}: no usable rows out of {self.rows}; top rejection: {reason} "
                        f"({count} rows, first at {self.first_rejected[reason]}); fix: {REJECTION_FIXES[reason]}")
