"""Which columns the summary table shows and how wide each is, so that it fits the width it is
given without ever cutting a name or a number.

At a narrow width the table gives way in a fixed order (docs/summary.md, "Narrow terminals"):
the Trainable column goes first (rows that are not trainable say so in Params), then nesting is
indented by one space instead of two, then shapes are written compactly (`1×64×56×56` for
`[1, 64, 56, 56]`: one word, so a row keeps one line), a repeated row's type as `MLP×12`, and a row's
shared weights as `(shared)`, their count going to a line under the table, then the table's blank
margins left and right go, then cells wrap between words, then the optional columns go, then FLOPs,
Output shape and Type (after each, margins and unwrapped cells are tried again). Layer and Params
always stay; a cell is never cut inside a word.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

LayerRow = ModelSummary = Any  # see render.py: the records are used through their attributes only


@dataclass(frozen=True)
class Column:
    key: str                      # the name `--columns` and `columns=` take
    header: str
    justify: str                  # left | right | center
    wraps: bool                   # its cells may break between words at a narrow width


COLUMNS = {column.key: column for column in (
    Column("layer", "Layer", "left", False),
    Column("type", "Type", "left", True),
    Column("input_shape", "Input shape", "left", True),
    Column("output_shape", "Output shape", "left", True),
    Column("kernel_size", "Kernel", "left", True),
    Column("params", "Params", "right", True),
    Column("params_percent", "% params", "right", False),
    Column("trainable", "Trainable", "center", False),
    Column("flops", "FLOPs", "right", False),
)}
DEFAULT_COLUMNS = ("layer", "type", "output_shape", "params", "trainable", "flops")
OPTIONAL_COLUMNS = ("input_shape", "kernel_size", "params_percent")
# after Trainable has gone and the cells wrap: what leaves next, first to last
DROP_ORDER = ("params_percent", "kernel_size", "input_shape", "flops", "output_shape", "type")


def chosen_columns(extra: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The default columns plus `extra` optional ones (`"all"` for every one), in the table's order.

    Raises:
        ValueError: a name that is not an optional column.
    """
    unknown = [name for name in extra if name not in OPTIONAL_COLUMNS and name != "all"]
    wanted = set(OPTIONAL_COLUMNS) if "all" in extra else set(extra)
    if unknown:
        raise ValueError(f"unknown column '{unknown[0]}'; the optional columns: {', '.join(OPTIONAL_COLUMNS)} (or all)")
    return tuple(key for key in COLUMNS if key in DEFAULT_COLUMNS or key in wanted)


@dataclass
class Fitted:
    """The table as it will be drawn: its columns, their content widths and every row's cells."""

    columns: list[Column]
    widths: list[int]
    rows: list[list[str]]
    left_out: list[str]           # headers of the columns dropped to fit
    compact: bool = False         # shapes as `1×64×56×56`, shared counts under the table
    margins: bool = True          # a blank column left and right of the table


def fit(result: ModelSummary, cell: Callable[..., str], width: int) -> Fitted:
    """Choose columns and widths so the table is at most `width` characters wide where it can be.

    `cell(row, key, trainable_shown, indent, compact=...)` gives a cell's text. The table gives way
    one step at a time (see the module's docstring); when even Layer and Params at their longest
    word do not fit, it is as narrow as it can be and wider than `width`.
    """
    keys, indent, wrapping, compact, margins = list(result.columns), "  ", False, False, True
    while True:
        texts = [[cell(row, key, "trainable" in keys, indent, compact=compact) for row in result.rows]
                 for key in keys]
        natural, minimum = _measure(keys, texts, wrapping)
        fitted = functools.partial(_fitted, result, keys, texts=texts, compact=compact, margins=margins)
        if table_width(natural, margins) <= width:
            return fitted(natural)
        if wrapping and table_width(minimum, margins) <= width:
            return fitted(_shrink(natural, minimum, texts, table_width(natural, margins) - width))
        if "trainable" in keys:
            keys.remove("trainable")
        elif indent == "  ":
            indent = " "
        elif not compact:  # before any cell wraps: a shape on one line beats one split over three
            compact = True
        elif margins:      # four blank characters that hold no figure
            margins = False
        elif not wrapping:
            wrapping = True
        elif any(key in keys for key in DROP_ORDER):
            keys.remove(next(key for key in DROP_ORDER if key in keys))
            margins, wrapping = True, False   # the narrower table may fit with its margins, unwrapped
        else:
            return fitted(minimum)


def _measure(keys: list[str], texts: list[list[str]], wrapping: bool) -> tuple[list[int], list[int]]:
    """Each column's natural width (its longest cell) and narrowest (its longest word, when wrapping)."""
    natural, minimum = [], []
    for key, cells in zip(keys, texts):
        column = [COLUMNS[key].header, *cells]
        natural.append(max(len(text) for text in column))
        minimum.append(max(len(word) for text in column for word in (text.split() or [""]))
                       if wrapping and COLUMNS[key].wraps else natural[-1])
    return natural, minimum


def table_width(widths: list[int], margins: bool = True) -> int:
    """rich's SIMPLE_HEAVY box: one space of padding each side of a cell, one between columns, one per edge
    (without `margins`: no edge, and no padding on the outer side of the first and last cells)."""
    inner = sum(widths) + 2 * len(widths) + (len(widths) - 1)
    return inner + 2 if margins else inner - 2


def _shrink(natural: list[int], minimum: list[int], texts: list[list[str]], excess: int) -> list[int]:
    """Take `excess` characters, one at a time, from the column where the table then grows the
    fewest lines (a row is as tall as its most wrapped cell); taking them all from one column wins
    when that gives fewer lines (one step at a time cannot see that a column, once wrapped, is free)."""
    widths = _shrink_stepwise(natural, minimum, texts, excess)
    for index in range(len(natural)):
        if natural[index] - excess >= minimum[index]:
            single = natural[:index] + [natural[index] - excess] + natural[index + 1:]
            if _height(texts, single) < _height(texts, widths):
                widths = single
    return widths


def _shrink_stepwise(natural: list[int], minimum: list[int], texts: list[list[str]], excess: int) -> list[int]:
    widths = list(natural)
    for _ in range(excess):
        narrower = [index for index in range(len(widths)) if widths[index] > minimum[index]]
        index = min(narrower, key=lambda i: (_height(texts, widths[:i] + [widths[i] - 1] + widths[i + 1:]), -widths[i]))
        widths[index] -= 1
    return widths


def _height(texts: list[list[str]], widths: list[int]) -> int:
    return sum(max(_lines(text, width) for text, width in zip(row, widths)) for row in zip(*texts))


@functools.lru_cache(maxsize=65536)
def _lines(text: str, width: int) -> int:
    """How many lines `text` takes wrapped between words at `width` (its words all fit)."""
    lines, used = 1, 0
    for word in text.split():
        if used and used + 1 + len(word) > width:
            lines, used = lines + 1, len(word)
        else:
            used += len(word) + (1 if used else 0)
    return lines


def _fitted(result: ModelSummary, keys: list[str], widths: list[int], *, texts: list[list[str]],
            compact: bool, margins: bool) -> Fitted:
    """The Trainable column is not reported as left out: its cells live on in Params."""
    left_out = [COLUMNS[key].header for key in result.columns if key not in keys and key != "trainable"]
    return Fitted([COLUMNS[key] for key in keys], widths, [list(cells) for cells in zip(*texts)], left_out, compact,
                  margins)
