"""Which columns the summary table (and `specc diff`'s, through `fit_columns`) shows and how wide
each is, so that it fits the width it is given without ever cutting a name or a number.

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

LayerRow = ModelSummary = Table = Any  # see render.py: the records are used through their attributes only


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


@dataclass
class Layout:
    """How far a table has given way so far (`fit_columns`)."""

    keys: list[str]               # the columns still shown
    indent: str = "  "            # per nesting level
    compact: bool = False         # cells as one word where they can be: `1×64×56×56`, `MLP×12`
    margins: bool = True
    wrapping: bool = False        # cells may break between words


SUMMARY_STEPS = ("trainable", "indent", "compact", "margins", "wrap", "drop")


def fit(result: ModelSummary, cell: Callable[..., str], width: int) -> Fitted:
    """Choose the summary's columns and widths so the table is at most `width` characters wide where it can be.

    `cell(row, key, trainable_shown, indent, compact=...)` gives a cell's text. The table gives way
    one step at a time (see the module's docstring); when even Layer and Params at their longest
    word do not fit, it is as narrow as it can be and wider than `width`.
    """
    def texts_of(layout: Layout) -> list[list[str]]:
        return [[cell(row, key, "trainable" in layout.keys, layout.indent, compact=layout.compact)
                 for row in result.rows] for key in layout.keys]

    # the Trainable column is not reported as left out: its cells live on in Params
    return fit_columns(COLUMNS, list(result.columns), texts_of, width, SUMMARY_STEPS, DROP_ORDER, quiet=("trainable",))


def fit_columns(columns: dict[str, Column], keys: list[str], texts_of: Callable[[Layout], list[list[str]]],
                width: int, steps: tuple[str, ...], drop_order: tuple[str, ...], quiet: tuple[str, ...] = ()) -> Fitted:
    """Any table that gives way by `steps` (of SUMMARY_STEPS, in order) until it is at most `width` wide.

    `texts_of(layout)` gives each shown column's cells; `drop_order` the columns that may go, first to
    last; `quiet` the columns whose leaving the note under the table does not name.
    """
    layout = Layout(list(keys))
    while True:
        texts = texts_of(layout)
        natural, minimum = _measure(columns, layout.keys, texts, layout.wrapping)
        if table_width(natural, layout.margins) <= width:
            widths = natural
        elif layout.wrapping and table_width(minimum, layout.margins) <= width:
            widths = _shrink(natural, minimum, texts, table_width(natural, layout.margins) - width)
        elif _give_way(layout, steps, drop_order):
            continue
        else:
            widths = minimum
        left_out = [columns[key].header for key in keys if key not in layout.keys and key not in quiet]
        return Fitted([columns[key] for key in layout.keys], widths, [list(cells) for cells in zip(*texts)], left_out,
                      layout.compact, layout.margins)


def _give_way(layout: Layout, steps: tuple[str, ...], drop_order: tuple[str, ...]) -> bool:
    """Take the first of `steps` that still changes the table; False when none is left."""
    for step in steps:
        if step == "trainable" and "trainable" in layout.keys:
            layout.keys.remove("trainable")
        elif step == "indent" and layout.indent == "  ":
            layout.indent = " "
        elif step == "compact" and not layout.compact:   # before any cell wraps: one line beats three
            layout.compact = True
        elif step == "margins" and layout.margins:        # four blank characters that hold no figure
            layout.margins = False
        elif step == "wrap" and not layout.wrapping:
            layout.wrapping = True
        elif step == "drop" and any(key in layout.keys for key in drop_order):
            layout.keys.remove(next(key for key in drop_order if key in layout.keys))
            layout.margins, layout.wrapping = True, False   # the narrower table may fit with margins, unwrapped
        else:
            continue
        return True
    return False


def _measure(columns: dict[str, Column], keys: list[str], texts: list[list[str]],
             wrapping: bool) -> tuple[list[int], list[int]]:
    """Each column's natural width (its longest cell) and narrowest (its longest word, when wrapping)."""
    natural, minimum = [], []
    for key, cells in zip(keys, texts):
        column = [columns[key].header, *cells]
        natural.append(max(len(text) for text in column))
        minimum.append(max(len(word) for text in column for word in (text.split() or [""]))
                       if wrapping and columns[key].wraps else natural[-1])
    return natural, minimum


def print_fitted(console: Any, fitted: Fitted, styles: list[str | None] | None = None, notes: list[str] = ()) -> None:
    """Print the table at `console`'s width (wider where even the columns that always stay do not fit:
    longer lines, not cut ones), then `notes` (rich markup escaped) and the line naming the columns
    left out; a blank line after them."""
    width = console.width
    console.width = max(width, table_width(fitted.widths, fitted.margins))
    try:
        if not fitted.margins:   # the box's top and bottom edges were the blank lines around the table
            console.print()
        console.print(rich_table(fitted, styles), crop=False)
        if not fitted.margins:
            console.print()
    finally:
        console.width = width
    lines = list(notes)
    if fitted.left_out:
        lines.append(f"(left out to fit {width} columns: {', '.join(fitted.left_out)}; "
                     "a wider terminal or --format markdown shows them)")
    if lines:
        console.print("\n".join(lines), end="\n\n")


def rich_table(fitted: Fitted, styles: list[str | None] | None = None) -> "Table":
    """The fitted rows as a rich Table (SIMPLE_HEAVY: a heavy rule under the header, no lines between
    columns); `styles` one per row."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from specc.lang.terminal import printable

    grid = Table(box=box.SIMPLE_HEAVY, header_style="bold", show_edge=fitted.margins, pad_edge=fitted.margins)
    for column, width in zip(fitted.columns, fitted.widths):
        grid.add_column(column.header, justify=column.justify, width=width, no_wrap=not column.wraps)
    for row, style in zip(fitted.rows, styles or [None] * len(fitted.rows)):
        grid.add_row(*(Text(printable(text)) for text in row), style=style)
    return grid


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
