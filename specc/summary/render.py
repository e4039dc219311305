"""Formatting a `ModelSummary`: a rich table for people, markdown for documents, json and csv for tools.

The json keys and csv columns are a stable interface, documented in docs/summary.md.
"""
from __future__ import annotations

import csv
import functools
import io
import json
from html import escape
from typing import TYPE_CHECKING, Any, Callable

from specc.lang.terminal import console_text, output_width
from specc.summary.layout import COLUMNS, Fitted, fit, print_fitted, rich_table

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

# What is rendered: a `specc.summary.rows.ModelSummary` and its `LayerRow`s. Not imported, since
# rows imports this module to render itself; the renderer needs only their attributes.
ModelSummary = LayerRow = Any


FORMATS = ("table", "markdown", "json", "csv")
CSV_COLUMNS = ("name", "path", "type", "kind", "depth", "count", "output_shape",
               "params", "shared_params", "trainable_params", "flops")
ALIGN = {"left": ":--", "right": "--:", "center": ":-:"}
UNITS = ("", "K", "M", "G", "T", "P", "E")
PLAIN_WIDTH = 200  # off a terminal the table keeps its natural width rather than wrapping at 80


def render(result: "ModelSummary", output_format: str = "table", width: int | None = None) -> str:
    """The summary as text in one of FORMATS; the table uses plain characters, no colour.

    Raises:
        ValueError: an unknown format.
    """
    if output_format == "json":
        return json.dumps(result.to_dict(), indent=2)
    if output_format == "csv":
        return csv_text(result)
    if output_format == "markdown":
        return markdown(result)
    if output_format == "table":
        from rich.console import Console

        # force_jupyter=False: in a notebook rich would display the table itself and leave the buffer empty
        console = Console(file=io.StringIO(), width=width or PLAIN_WIDTH, color_system=None, highlight=False,
                          force_jupyter=False)
        _print_table(result, console)
        return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()).rstrip()
    raise ValueError(f"unknown format '{output_format}'; choose one of {', '.join(FORMATS)}")


def print_summary(result: "ModelSummary", output_format: str = "table", console: "Console | None" = None) -> None:
    """Print to stdout: the table in colour and fitted to the terminal, other formats as plain text."""
    from rich.console import Console

    console = console or Console(highlight=False)
    if output_format != "table" or not console.is_terminal:
        # pipes and files get plain text, no padding or colour, as wide as COLUMNS says when it is set
        print(render(result, output_format, output_width()))
        return
    _print_table(result, console)


def _print_table(result: "ModelSummary", console: "Console") -> None:
    console.print(f"[bold]{console_text(result.model)}[/bold]  {console_text(_inputs_text(result))}")
    fitted = fit(result, cell_of(result), console.width)
    note = shared_note(result) if fitted.compact else None
    print_fitted(console, fitted, _row_styles(result), [console_text(note)] if note else [])
    for lines in (totals(result), memory(result)):
        console.print("\n".join(f"{label}: {value}" for label, value in lines), end="\n\n")


def table(result: "ModelSummary", fitted: Fitted | None = None) -> "Table":
    """The rows as a rich Table; containers (blocks, branches, residuals) in bold, nested by indent.

    `fitted` (layout.fit) sets the columns and their widths; without it every column at its natural width.
    """
    return rich_table(fitted or fit(result, cell_of(result), 10 ** 6), _row_styles(result))


def _row_styles(result: "ModelSummary") -> list[str | None]:
    return ["bold" if row.children else None for row in result.rows]


def cell(row: "LayerRow", key: str, trainable_shown: bool = True, indent: str = "  ", *,
         total_params: int | None = None, compact: bool = False) -> str:
    """One cell of the table (`key` is a layout.COLUMNS key). Without the Trainable column, a row
    that is not trainable says so in Params; `compact` writes shapes as `1×64×56×56`."""
    if key == "layer":
        return indent * row.depth + row.name
    if key == "type":   # compact: `MLP×12`, one word, as a compact shape is
        count = (("×" if compact else " ×") + str(row.count)) if row.count > 1 else ""
        return row.type + count + (" (unused)" if row.unused else "")
    if key == "input_shape":
        return shape_text(row.input_shape, compact)
    if key == "output_shape":
        return shape_text(row.shape, compact)
    if key == "kernel_size":
        return shape_text(row.kernel_size, compact)
    if key == "params":
        mark = "" if trainable_shown or trainable_text(row) in ("yes", "-") else f" ({_frozen(row)})"
        return params_text(row, compact) + mark
    if key == "params_percent":
        return f"{100 * row.params / total_params:.2f}%" if row.params and total_params else "-"
    if key == "trainable":
        return trainable_text(row)
    return readable(row.flops)


def cell_of(result: "ModelSummary") -> Callable[..., str]:
    """`cell` for this summary's rows (the % params column needs the total)."""
    return functools.partial(cell, total_params=result.total_params)


def html(result: "ModelSummary") -> str:
    """An HTML table (Jupyter's `_repr_html_`): every chosen column, nesting by indent, then the totals."""
    columns = [COLUMNS[key] for key in result.columns]
    head = "".join(f'<th style="text-align:{column.justify}">{escape(column.header)}</th>' for column in columns)
    body = []
    for row in result.rows:
        texts = [cell(row, column.key, indent="", total_params=result.total_params) for column in columns]
        texts[0] = f'<span style="padding-left:{1.5 * row.depth}em">{escape(texts[0])}</span>'
        weight = "font-weight:bold;" if row.children else ""
        body.append("<tr>" + "".join(
            f'<td style="{weight}text-align:{column.justify};white-space:nowrap">'
            f'{text if index == 0 else escape(text)}</td>'
            for index, (column, text) in enumerate(zip(columns, texts))) + "</tr>")
    footer = "".join(f"<tr><td>{escape(label)}</td><td style=\"text-align:right\">{escape(value)}</td></tr>"
                     for label, value in [*totals(result), *memory(result)])
    return (f"<div><b>{escape(result.model)}</b> {escape(_inputs_text(result))}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<table>{footer}</table></div>")


def _frozen(row: "LayerRow") -> str:
    return "frozen" if row.trainable_params == 0 else "partly frozen"


def totals(result: "ModelSummary") -> list[tuple[str, str]]:
    """The parameter and FLOP totals as (label, value) lines."""
    lines = [("Total params", f"{result.total_params:,}"),
             ("Trainable params", f"{result.trainable_params:,}"),
             ("Non-trainable params", f"{result.non_trainable_params:,}"),
             (f"Forward FLOPs{_batch_note(result)}", _flops_text(result.flops))]
    if result.show_backward:
        lines += [("Backward FLOPs (estimate: 2x forward)", _flops_text(result.backward_flops)),
                  ("Forward + backward FLOPs", _flops_text(result.flops + result.backward_flops))]
    return lines


def memory(result: "ModelSummary") -> list[tuple[str, str]]:
    """The memory of a training step, torchsummary's lines plus the gradients, in MiB or MB."""
    sizes, unit = result.memory_in(result.memory_unit), result.memory_unit
    return [(f"Input size ({unit})", f"{sizes['input']:.2f}"),
            (f"Forward/backward pass size ({unit})", f"{sizes['forward_backward']:.2f}"),
            (f"Params size ({unit})", f"{sizes['params']:.2f}"),
            (f"Gradients size ({unit})", f"{sizes['gradients']:.2f}"),
            (f"Estimated Total Size ({unit})", f"{sizes['total']:.2f}")]


def markdown(result: "ModelSummary") -> str:
    """A GitHub-flavoured markdown table, nesting shown with em-spaces, then the totals. Every text
    from the spec (names, types, the file name) is escaped: a document renders it as text."""
    columns = [COLUMNS[key] for key in result.columns]
    lines = [f"### {markdown_text(result.model)}", "", markdown_text(_inputs_text(result)), "",
             "| " + " | ".join(column.header for column in columns) + " |",
             "|" + "|".join(ALIGN[column.justify] for column in columns) + "|"]
    lines += ["| " + " | ".join(_markdown_cell(row, column.key, result.total_params) for column in columns) + " |"
              for row in result.rows]
    lines += ["", "| Total | |", "|:--|--:|"]
    lines += [f"| {label} | {value} |" for label, value in [*totals(result), *memory(result)]]
    return "\n".join(lines)


def _markdown_cell(row: "LayerRow", key: str, total_params: int) -> str:
    text = cell(row, key, indent="", total_params=total_params)
    if key == "layer":
        return "&emsp;" * row.depth + markdown_text(text)
    return markdown_text(text) if key == "type" else text   # the other columns are specc's numbers


def markdown_text(text: str, *, formatting: bool = True) -> str:
    """`text` shown as itself in markdown: HTML (`<img onerror=...>`) as entities, line breaks and
    other control characters as spaces, `|` escaped (a table cell); with `formatting`, markdown's
    emphasis, code and link punctuation backslash-escaped too (names; shapes need not be)."""
    text = "".join(" " if ord(character) < 32 or 127 <= ord(character) < 160 else character for character in str(text))
    text = escape(text, quote=False)
    special = _MARKDOWN_PUNCTUATION if formatting else {"\\", "|"}
    return "".join(f"\\{character}" if character in special else character for character in text)


# Characters markdown may read as formatting (links, emphasis, code, tables, headings, lists).
_MARKDOWN_PUNCTUATION = set("\\`*_[]|~")


def csv_text(result: "ModelSummary") -> str:
    """One line per row under CSV_COLUMNS; output_shape is JSON (`[1, 32, 26, 26]`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        record = row.to_dict()
        record["output_shape"] = json.dumps(record["output_shape"])
        writer.writerow(record)
    return buffer.getvalue().rstrip("\n")


def shape_text(shape: list | None, compact: bool = False) -> str:
    """`[1, 32, 26, 26]` (`compact`: `1×32×26×26`, one word that never wraps); a tuple output lists
    its shapes; `-` for non-tensors."""
    if shape is None:
        return "-"
    if all(isinstance(size, (int, str)) for size in shape):  # a str is a named dim ("seq")
        if compact:
            return "×".join(map(str, shape)) if shape else "[]"  # a scalar keeps its brackets
        return "[" + ", ".join(map(str, shape)) + "]"
    return ", ".join(shape_text(item, compact) for item in shape)


def params_text(row: "LayerRow", compact: bool = False) -> str:
    """Parameters counted at this row; weights it shares with an earlier row (tie:, share:) in brackets
    (`compact`: without their count, which `shared_note` then gives under the table)."""
    if row.shared_params and not row.params:
        return "(shared)" if compact else f"(shared {row.shared_params:,})"
    if row.shared_params:
        return f"{row.params:,} (+shared)" if compact else f"{row.params:,} (+{row.shared_params:,} shared)"
    return f"{row.params:,}"


def shared_note(result: "ModelSummary") -> str | None:
    """The counts a compact table leaves out of its `(shared)` cells, so that no figure is lost."""
    shared = [f"{row.path} {row.shared_params:,}" for row in result.rows if row.shared_params]
    return f"(shared): parameters counted once, at an earlier row: {', '.join(shared)}" if shared else None


def trainable_text(row: "LayerRow") -> str:
    if row.params == 0:
        return "-"
    if row.trainable_params == row.params:
        return "yes"
    return "no" if row.trainable_params == 0 else "partly"


def readable(number: int) -> str:
    """`12_345_678` -> `12.35 M`; below a thousand the number itself."""
    value, unit = float(number), 0
    while abs(value) >= 1000 and unit < len(UNITS) - 1:
        value, unit = value / 1000, unit + 1
    return f"{number:,}" if unit == 0 else f"{value:.2f} {UNITS[unit]}"


def _flops_text(flops: int) -> str:
    """`24,038,272 (24.04 MFLOPs)`: exact, then readable."""
    return f"{flops:,}" if flops < 1000 else f"{flops:,} ({readable(flops)}FLOPs)"


def _inputs_text(result: "ModelSummary") -> str:
    inputs = ", ".join(f"{info.name} {shape_text(info.shape)} {info.dtype}" for info in result.inputs)
    return f"input {inputs} · device {result.device}"


def _batch_note(result: "ModelSummary") -> str:
    return f" (batch of {result.batch_size})" if result.batch_size is not None else ""
