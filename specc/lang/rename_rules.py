"""Rename rules for weight files (`--map rules.yaml`, `train.init_from.map`), bounded in time.

The rules and the tensor names may both come from strangers (a spec, a weights file), so no rule
may take long to try against a name. A Python regex can backtrack exponentially (`re:(a+)+$`
against 35 a's never returns), and even a glob written as a regex (`*.*.*.*` as `(.+?)\\.(.+?)...`)
backtracks polynomially. So:

- a glob (`h.*.attn.*`) is matched without a regex: its literal pieces are found left to right, the
  leftmost place each time, which is what a lazy regex would capture, in time linear in the name;
- a `re:` rule is refused when it can backtrack badly: a repeat inside a repeat (`(a+)+`), a repeat
  of alternatives (`(a|aa)*`), a backreference, or more than one unbounded repeat that is not ended by a
  character it cannot match (`(\\d+)\\.` is ended by its dot; `(.*)` is not): use a glob for those;
- a tensor name longer than SPECC_MAX_TENSOR_NAME characters (300) is refused before any rule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from specc.lang.errors import Problem, SpecError
from specc.lang.limits import limit, raise_hint

try:   # the regex parser moved in Python 3.11; both spell the same opcodes
    from re import _constants as _codes, _parser as _regex_parser  # type: ignore[attr-defined]
except ImportError:   # pragma: no cover - Python 3.10
    import sre_constants as _codes  # type: ignore[no-redef]
    import sre_parse as _regex_parser  # type: ignore[no-redef]

MAX_UNBOUNDED_REPEATS = 1     # `(.*)\.weight`; a second `(.*)` makes it n**2 per name and more: globs do that
_BIG_REPEAT = 100             # `a{1,100}` counts as bounded; `a{1,1000}` as unbounded


@dataclass(frozen=True)
class Rule:
    """One rename rule: a glob (pieces between its `*`s) or a checked regex, and its replacement."""

    written: str
    replacement: str
    pieces: tuple[str, ...] | None = None     # a glob's literal pieces ("h.", ".attn.", "")
    regex: re.Pattern | None = None

    def rename(self, name: str) -> str | None:
        """The new name when the rule matches all of `name`, else None."""
        if self.regex is not None:
            return self.regex.sub(self.replacement, name) if self.regex.fullmatch(name) else None
        groups = _glob_groups(self.pieces, name)
        if groups is None:
            return None
        parts = self.replacement.split("*")
        return "".join(part + (groups[index] if index < len(groups) and index < len(parts) - 1 else "")
                       for index, part in enumerate(parts))


def compile_rules(rules: Any) -> list[Rule]:
    """Check and compile `{pattern: replacement}` rules.

    Raises:
        SpecError: TYPE_ERROR for a rule that is not a string, a bad regex, or a regex that could
            backtrack for a long time (the message says which construct and how to write it instead).
    """
    if not isinstance(rules, dict):
        raise SpecError(Problem(f"weights_map must be 'auto', 'strict' or a mapping of rename rules, got {rules!r}",
                                None, "TYPE_ERROR"))
    compiled = []
    for pattern, replacement in rules.items():
        if not isinstance(pattern, str) or not isinstance(replacement, (str, int)):
            raise SpecError(Problem(f"weights_map: a rename rule is `pattern: replacement` of strings, got "
                                    f"{pattern!r}: {replacement!r}", None, "TYPE_ERROR"))
        if pattern.startswith("re:"):
            compiled.append(Rule(pattern, str(replacement), regex=_checked_regex(pattern)))
        else:
            compiled.append(Rule(pattern, str(replacement), pieces=tuple(pattern.split("*"))))
    return compiled


def check_name_length(name: str) -> None:
    """Refuse a tensor name longer than SPECC_MAX_TENSOR_NAME before a `re:` rule is tried on it."""
    if len(name) > limit("MAX_TENSOR_NAME"):
        raise SpecError(Problem(f"weights: a tensor name is {len(name):,} characters long ({name[:60]!r}...), "
                                f"more than rename rules are tried on ({raise_hint('MAX_TENSOR_NAME')})",
                                None, "CHECKPOINT_ERROR"))


def _glob_groups(pieces: tuple[str, ...], name: str) -> list[str] | None:
    """What each `*` (one character or more) matched, or None: linear in the name."""
    first, *middle, last = pieces if len(pieces) > 1 else (pieces[0], pieces[0])
    if len(pieces) == 1:
        return [] if name == first else None
    if not name.startswith(first) or len(name) < len(first) + len(last):
        return None
    end = len(name) - len(last)
    if not name.endswith(last):
        return None
    groups, position = [], len(first)
    for piece in middle:
        found = name.find(piece, position + 1, end)   # a star takes at least one character
        if found < 0 or found + len(piece) > end:
            return None
        groups.append(name[position:found])
        position = found + len(piece)
    if end - position < 1:
        return None
    return [*groups, name[position:end]]


def _checked_regex(pattern: str) -> re.Pattern:
    expression = pattern[3:]
    try:
        parsed = _regex_parser.parse(expression)
        regex = re.compile(expression)
    except (re.error, RecursionError, OverflowError) as error:
        raise SpecError(Problem(f"weights_map: bad rename rule {pattern!r}: {error}", None, "TYPE_ERROR")) from None
    reason = _backtracking(parsed, inside_repeat=False, counter=[0])
    if reason is not None:
        raise SpecError(Problem(f"weights_map: the rename rule {pattern!r} could take a very long time to try "
                                f"({reason}); write it as a glob (`h.*.attn.*`) or a simpler regex", None, "TYPE_ERROR"))
    return regex


def _backtracking(parsed: Any, inside_repeat: bool, counter: list[int]) -> str | None:
    """The first construct of a parsed regex that can backtrack badly, or None.

    An unbounded repeat followed by a character it cannot match (`(\\d+)\\.`) ends where that
    character is, so it costs nothing extra; the others (`(.*)`, a repeat at the end) are counted.
    """
    atoms = _linear(parsed)
    for index, (operation, argument) in enumerate(atoms):
        if operation in (_codes.GROUPREF, _codes.GROUPREF_EXISTS):
            return "a backreference"
        if operation in (_codes.MAX_REPEAT, _codes.MIN_REPEAT, getattr(_codes, "POSSESSIVE_REPEAT", None)):
            low, high, body = argument
            if inside_repeat:
                return "a repeat inside a repeat"
            following = atoms[index + 1] if index + 1 < len(atoms) else None
            if (high == _codes.MAXREPEAT or high > _BIG_REPEAT) and not _stops_at(body, following):
                counter[0] += 1
                if counter[0] > MAX_UNBOUNDED_REPEATS:
                    return "more than one unbounded repeat (`*`, `+`) not ended by a character it cannot match"
            if any(op == _codes.BRANCH for op, _ in _flatten(body)):
                return "a repeat of alternatives"
            reason = _backtracking(body, inside_repeat=True, counter=counter)
        elif operation == _codes.BRANCH:
            reason = next(filter(None, (_backtracking(branch, inside_repeat, counter) for branch in argument[1])), None)
        elif operation in (_codes.ASSERT, _codes.ASSERT_NOT):
            reason = _backtracking(argument[1], inside_repeat, counter)
        else:
            reason = None
        if reason is not None:
            return reason
    return None


def _linear(parsed: Any) -> list:
    """The pattern's items in order, groups opened (`a(\\d+)\\.` -> a, \\d+, \\.)."""
    atoms = []
    for operation, argument in parsed:
        if operation == _codes.SUBPATTERN:
            atoms.extend(_linear(argument[-1]))
        else:
            atoms.append((operation, argument))
    return atoms


_CATEGORIES = {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_WORD": r"\w",
               "CATEGORY_NOT_WORD": r"\W", "CATEGORY_SPACE": r"\s", "CATEGORY_NOT_SPACE": r"\S"}


def _stops_at(body: Any, following: Any) -> bool:
    """True when `following` is a literal character that the repeat's one-character body cannot match."""
    atoms = _linear(body)
    if following is None or following[0] != _codes.LITERAL or len(atoms) != 1:
        return False
    character = chr(following[1])
    operation, argument = atoms[0]
    if operation == _codes.LITERAL:
        return chr(argument) != character
    if operation == _codes.NOT_LITERAL:
        return chr(argument) == character
    if operation != _codes.IN:
        return False
    matched, negated = False, False
    for kind, value in argument:
        if kind == _codes.NEGATE:
            negated = True
        elif kind == _codes.LITERAL:
            matched |= chr(value) == character
        elif kind == _codes.RANGE:
            matched |= value[0] <= ord(character) <= value[1]
        elif kind == _codes.CATEGORY and str(value) in _CATEGORIES:
            matched |= re.fullmatch(_CATEGORIES[str(value)], character) is not None
        else:
            return False       # anything else: assume it may match
    return matched == negated


def _flatten(parsed: Any):
    """Every (operation, argument) of a parsed regex, groups opened (repeats' bodies included)."""
    for operation, argument in parsed:
        yield operation, argument
        if operation == _codes.SUBPATTERN:
            yield from _flatten(argument[-1])
        elif operation in (_codes.MAX_REPEAT, _codes.MIN_REPEAT):
            yield from _flatten(argument[2])
