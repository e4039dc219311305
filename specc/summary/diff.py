"""`specc diff`: what changes between two specs (or one spec and its `--set` variant), item by item.

Both sides are summarized with every repetition expanded, so each item has its module path
(`layer2.0.conv1`); the two path lists are aligned in order (difflib), and each aligned item is
added, removed, changed (its type, its arguments, or, for a layer, its output shape, parameters
or FLOPs) or the same. A container whose own type is the same is not listed for what changed
inside it; an added or removed container stands for everything inside it.

    result = specc.summary.diff.diff("specs/resnet18.yaml", "specs/resnet34.yaml")
    print(result.render())                       # the table; "markdown" or "json" too
"""
from __future__ import annotations

import difflib
import io
import json
from dataclasses import dataclass, field
from typing import Any

from specc.lang.spec import load
from specc.lang.terminal import console_text
from specc.summary.layout import Column, Layout, fit_columns, print_fitted
from specc.summary.render import markdown_text, readable, shape_text
from specc.summary.rows import LayerRow
from specc.summary.summarize import summary

FORMATS = ("table", "markdown", "json")
MARKS = {"added": "+", "removed": "-", "changed": "~", "same": " "}


@dataclass
class ItemChange:
    """One aligned item: its row on each side (None where it is missing) and what differs."""

    path: str
    status: str                   # added | removed | changed | same
    a: LayerRow | None
    b: LayerRow | None
    args: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # argument -> (A's value, B's); missing: None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "a": _side(self.a), "b": _side(self.b),
                "args": {name: [_plain(old), _plain(new)] for name, (old, new) in self.args.items()}}


@dataclass
class SpecDiff:
    """The two specs' items aligned by path, and their totals."""

    a_name: str
    b_name: str
    items: list[ItemChange]       # every aligned item, in order (`changes` are the ones that differ)
    params: tuple[int, int]       # total unique parameters, A and B
    flops: tuple[int, int]        # forward FLOPs of the whole batch, A and B

    @property
    def changes(self) -> list[ItemChange]:
        return [item for item in self.items if item.status != "same"]

    def statuses(self) -> dict[str, str]:
        """B's item paths that are added or changed, with their status (what `--draw` colours)."""
        return {item.path: item.status for item in self.changes if item.b is not None}

    def removed(self) -> list[tuple[str, str]]:
        """A's removed items as (path, type)."""
        return [(item.path, item.a.type) for item in self.changes if item.status == "removed"]

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a_name, "b": self.b_name, "changes": [item.to_dict() for item in self.changes],
                "totals": {"params": list(self.params), "flops": list(self.flops)},
                "counts": {status: sum(item.status == status for item in self.items) for status in MARKS}}

    def render(self, output_format: str = "table", width: int | None = None) -> str:
        """The changes as a table (plain text), "markdown" or "json"; the table at most `width`
        characters wide where it can be (as the summary's table gives way: docs/summary.md), else
        as wide as its cells.

        Raises:
            ValueError: an unknown format.
        """
        if output_format == "json":
            return json.dumps(self.to_dict(), indent=2)
        if output_format == "markdown":
            return _markdown(self)
        if output_format == "table":
            return _table(self, width)
        raise ValueError(f"unknown format '{output_format}'; choose one of {', '.join(FORMATS)}")

    def __str__(self) -> str:
        return self.render()

    __repr__ = __str__


def diff(a: Any, b: Any = None, *, a_variables: dict | None = None, b_variables: dict | None = None,
         batch_size: int = 1) -> SpecDiff:
    """Compare spec `a` with spec `b` (default: `a` again, so `b_variables` make the difference).

    Args:
        a, b: specs (path, YAML text, dict or `Spec`).
        a_variables, b_variables: `--set` overrides for each side (a side with overrides is not
            held to its spec's `expect:` lines, which describe the spec as written).
        batch_size: of the example input (shapes and FLOPs include it).

    Raises:
        SpecError: either spec does not compile.
    """
    left = summary(side_spec(a, a_variables), batch_size=batch_size, expand=True)
    right = summary(side_spec(a if b is None else b, b_variables), batch_size=batch_size, expand=True)
    items = _fold_containers(_align(left.rows, right.rows))
    return SpecDiff(left.model, right.model, items, (left.total_params, right.total_params),
                    (left.flops, right.flops))


def side_spec(spec: Any, variables: dict | None) -> Any:
    """The spec with its overrides; a spec's `expect:` lines hold for its own vars, not for a variant."""
    if not variables:
        return spec
    loaded = load(spec, variables)
    return loaded.model_copy(update={"expect": None})


def _align(a_rows: list[LayerRow], b_rows: list[LayerRow]) -> list[ItemChange]:
    """Pair the rows by path in order; unpaired ones are removed (A only) or added (B only)."""
    a_paths, b_paths = [row.path for row in a_rows], [row.path for row in b_rows]
    items = []
    for tag, a_start, a_end, b_start, b_end in difflib.SequenceMatcher(None, a_paths, b_paths, autojunk=False).get_opcodes():
        if tag == "equal":
            for a_row, b_row in zip(a_rows[a_start:a_end], b_rows[b_start:b_end]):
                items += [ItemChange(a_row.path, "removed", a_row, None), ItemChange(b_row.path, "added", None, b_row)] \
                    if _replaced(a_row, b_row) else [_compare(a_row, b_row)]
            continue
        items += [ItemChange(row.path, "removed", row, None) for row in a_rows[a_start:a_end]]
        items += [ItemChange(row.path, "added", None, row) for row in b_rows[b_start:b_end]]
    return items


def _compare(a: LayerRow, b: LayerRow) -> ItemChange:
    args = {name: (a.args.get(name), b.args.get(name)) for name in {**a.args, **b.args}
            if a.args.get(name) != b.args.get(name)}
    leaf = not a.children and not b.children  # a container's figures are its items': those say what changed
    figures = leaf and (a.shape != b.shape or a.params != b.params or a.shared_params != b.shared_params
                        or a.flops != b.flops)
    changed = a.type != b.type or a.kind != b.kind or bool(args) or figures
    return ItemChange(a.path, "changed" if changed else "same", a, b, args)


def _replaced(a: LayerRow, b: LayerRow) -> bool:
    """An unnamed item (its path ends in its index) of another type is another item, not a changed one."""
    return a.name.isdigit() and (a.type != b.type or a.kind != b.kind)


def _fold_containers(items: list[ItemChange]) -> list[ItemChange]:
    """Drop the items inside an added or removed container: the container's row stands for them."""
    kept, folded = [], []
    for item in items:
        if any(item.path.startswith(prefix) for prefix in folded if item.status in ("added", "removed")):
            continue
        row = item.a or item.b
        if item.status in ("added", "removed") and row.children:
            folded.append(item.path + ".")
        kept.append(item)
    return kept


# ----- rendering --------------------------------------------------------------------------------
COLUMNS = {column.key: column for column in (
    Column("mark", "", "left", False),
    Column("item", "Item", "left", False),
    Column("type", "Type", "left", True),
    Column("changed", "Changed", "left", True),
    Column("output_shape", "Output shape", "left", True),
    Column("params", "Params", "right", True),
    Column("flops", "FLOPs", "right", False),
)}
HEADERS = tuple(column.header for column in COLUMNS.values())
# a narrow terminal: shapes compact, no margins, cells wrapped between words, then these columns go
STEPS = ("compact", "margins", "wrap", "drop")
DROP_ORDER = ("flops", "output_shape", "type")


def cells(item: ItemChange, compact: bool = False) -> list[str]:
    """The seven cells of one change: mark, path, type, arguments, shape, params and FLOPs (A → B);
    `compact` writes shapes as `1×64×56×56`."""
    a, b = item.a, item.b
    arguments = ", ".join(f"{name} {_value(old)} → {_value(new)}" for name, (old, new) in sorted(item.args.items()))
    return [MARKS[item.status], item.path,
            _pair(a and _type(a), b and _type(b)),
            arguments,
            _pair(a and shape_text(a.shape, compact), b and shape_text(b.shape, compact)),
            _pair(a and _params(a), b and _params(b), _delta(a and a.params, b and b.params, "{:+,}")),
            _pair(a and readable(a.flops), b and readable(b.flops))]


def totals(result: SpecDiff) -> list[tuple[str, str]]:
    counts = result.to_dict()["counts"]
    (params_a, params_b), (flops_a, flops_b) = result.params, result.flops
    return [("Items", f"{counts['added']} added, {counts['removed']} removed, {counts['changed']} changed, "
                      f"{counts['same']} the same"),
            ("Total params", f"{params_a:,} → {params_b:,} ({params_b - params_a:+,}"
                             f"{_percent(params_a, params_b)})"),
            ("Forward FLOPs", f"{flops_a:,} → {flops_b:,} ({readable(abs(flops_b - flops_a))} "
                              f"{'more' if flops_b >= flops_a else 'fewer'}{_percent(flops_a, flops_b)})")]


def _table(result: SpecDiff, width: int | None) -> str:
    from rich.console import Console

    # force_jupyter=False: in a notebook rich would display the table itself and leave the buffer empty
    console = Console(file=io.StringIO(), width=width or 10 ** 4, color_system=None, highlight=False,
                      force_jupyter=False)
    console.print(f"{console_text(result.a_name)} → {console_text(result.b_name)}")
    if result.changes:
        fitted = fit_columns(COLUMNS, list(COLUMNS), lambda layout: _column_texts(result, layout), width or 10 ** 4,
                             STEPS, DROP_ORDER)
        print_fitted(console, fitted)
    else:
        console.print("\nno item differs\n")
    console.print("\n".join(f"{label}: {value}" for label, value in totals(result)))
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()).rstrip()


def _column_texts(result: SpecDiff, layout: Layout) -> list[list[str]]:
    by_key = dict(zip(COLUMNS, zip(*(cells(item, layout.compact) for item in result.changes))))
    return [list(by_key[key]) for key in layout.keys]


def _markdown(result: SpecDiff) -> str:
    lines = [f"### {markdown_text(result.a_name)} → {markdown_text(result.b_name)}", ""]
    if result.changes:
        lines += ["| " + " | ".join(HEADERS) + " |", "|:-:|:--|:--|:--|:--|--:|--:|"]
        lines += ["| " + " | ".join(markdown_text(cell, formatting=False) for cell in cells(item)) + " |" for item in result.changes]
    else:
        lines.append("no item differs")
    lines += ["", "| Total | |", "|:--|:--|"] + [f"| {label} | {value} |" for label, value in totals(result)]
    return "\n".join(lines)


def _pair(old: str | None, new: str | None, delta: str = "") -> str:
    """`A → B` where they differ; one value where they agree or where one side is missing."""
    if old == new or old is None or new is None:
        return old if new is None else new
    return f"{old} → {new}{delta}"


def _delta(old: int | None, new: int | None, style: str) -> str:
    return f" ({style.format(new - old)})" if old is not None and new is not None and old != new else ""


def _percent(old: int, new: int) -> str:
    return f", {100 * (new - old) / old:+.1f}%" if old else ""


def _type(row: LayerRow) -> str:
    return row.type


def _params(row: LayerRow) -> str:
    return f"{row.params:,}" if not row.shared_params else f"{row.params:,} (+{row.shared_params:,} shared)"


def _value(value: Any) -> str:
    return "-" if value is None else str(value)


def _side(row: LayerRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"type": row.type, "kind": row.kind, "output_shape": row.shape, "params": row.params,
            "shared_params": row.shared_params, "flops": row.flops, "args": {k: _plain(v) for k, v in row.args.items()}}


def _plain(value: Any) -> Any:
    """A JSON-ready value: numbers, strings, lists and dicts as they are, anything else as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)
