"""Located spec errors: every problem carries file:line:column, a stable code and a fix hint."""
from __future__ import annotations

import difflib
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator


@dataclass(frozen=True)
class Location:
    """A 1-based position in a spec file."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# Stable error codes, documented in docs/errors.md; editors and CI annotations key on them.
CODES = (
    "YAML_SYNTAX", "FILE_NOT_FOUND", "TYPE_ERROR", "MISSING_KEY", "UNKNOWN_KEY",
    "UNKNOWN_LAYER", "UNKNOWN_KWARG", "MISSING_ARGUMENT", "UNKNOWN_REFERENCE", "UNKNOWN_VAR",
    "EXPRESSION_ERROR", "DUPLICATE_NAME", "INVALID_ITEM", "IMPORT_ERROR", "SHAPE_MISMATCH",
    "LAYER_ERROR", "EXPECT_FAILED", "EXPORT_ERROR", "DATA_ERROR", "CHECKPOINT_ERROR",
    "YAML_TAG", "LIMIT_EXCEEDED", "SAFE_MODE", "UNKNOWN_VARIANT", "BATCH_DIM",
    "UNUSED_ITEM",   # a warning: compiling goes on
)


@dataclass
class Problem:
    """One mistake found in a spec."""

    message: str
    location: Location | None = None
    code: str = "TYPE_ERROR"
    suggestion: str | None = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        hint = f" (did you mean '{self.suggestion}'?)" if self.suggestion else ""
        extra = "".join(f"\n    {note}" for note in self.notes)
        return f"{where}{self.message}{hint}{extra}"

    def to_dict(self) -> dict:
        loc = self.location
        return {
            "code": self.code,
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "column": loc.column if loc else None,
            "message": self.message,
            "suggestion": self.suggestion,
        }


class SpecError(Exception):
    """Raised with every problem found; `str()` lists them one per line."""

    def __init__(self, problems: Problem | Iterable[Problem]):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def first(self) -> Problem:
        return self.problems[0]


class SpecWarning(UserWarning):
    """A located remark that does not stop the build (`UNUSED_ITEM`); `problem` holds its location."""

    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(str(problem))


@contextmanager
def spec_warnings_to(echo: Callable[[str], None]) -> Iterator[None]:
    """Within the block, spec warnings go to `echo` as `warning: file:line:col: ...` lines (the CLI's
    way), not as Python warnings; other warnings are shown as usual."""
    with warnings.catch_warnings():
        python_style = warnings.showwarning

        def show(message, category, *args, **kwargs) -> None:
            if issubclass(category, SpecWarning):
                echo(f"warning: {message}")
            else:
                python_style(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest known name to a misspelled one, case differences first (`Conv2D` -> `Conv2d`)."""
    choices = list(choices)
    lowered = {choice.lower(): choice for choice in choices}
    if str(word).lower() in lowered:
        return lowered[str(word).lower()]
    matches = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return matches[0] if matches else None
