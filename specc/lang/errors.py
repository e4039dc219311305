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
    "FIXED_DIM",     # a warning: a free tensor sized by a named dim fixes that dim
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
        self.partial = None                    # lang.spec.validate: the spec without its failing sections
        self.failed_sections: set[str] = set()
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def first(self) -> Problem:
        return self.problems[0]

    def _render_traceback_(self) -> list[str]:
        """What IPython/Jupyter shows instead of a traceback: the located problems, one per line."""
        return [f"SpecError: {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''} in the spec",
                *(f"  {line}" for problem in self.problems for line in str(problem).splitlines())]


def sorted_problems(problems: Iterable[Problem]) -> list[Problem]:
    """By file position (unlocated last), each distinct problem once: a mistake inside a block used N
    times is one problem whose notes list every use site."""
    merged: dict[tuple, Problem] = {}
    for problem in problems:
        key = (problem.message, problem.location, problem.code, problem.suggestion)
        if key not in merged:
            merged[key] = Problem(problem.message, problem.location, problem.code, problem.suggestion,
                                  list(problem.notes))
        else:
            notes = merged[key].notes
            notes.extend(note for note in problem.notes if note not in notes)
    unlocated = (float("inf"), 0, 0)
    return sorted((_joined_uses(problem) for problem in merged.values()),
                  key=lambda p: (p.location.file, p.location.line, p.location.column) if p.location else ("", *unlocated))


def _joined_uses(problem: Problem) -> Problem:
    """`in block 'dense' used at a:10:5` / `... a:11:5` -> `in block 'dense' used at a:10:5, a:11:5`."""
    joined: dict[str, list[str]] = {}
    for note in problem.notes:
        head, separator, site = note.rpartition(" used at ")
        joined.setdefault(head + separator if separator else note, []).append(site if separator else "")
    problem.notes = [head + ", ".join(sites) if head.endswith(" used at ") else head for head, sites in joined.items()]
    return problem


class SpecWarning(UserWarning):
    """A located remark that does not stop the command: an unused item (`UNUSED_ITEM`, its `problem`
    holds the location), or a `train:` mistake seen by `summary` or `draw` (a message)."""

    def __init__(self, problem: Problem | str):
        self.problem = problem if isinstance(problem, Problem) else None
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
