"""The summary where people look: an 80-column terminal (nothing cut, columns give way in the
documented order), the optional torchinfo columns, Jupyter's HTML and the REPL's repr."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from torch import nn
from typer.testing import CliRunner

import specc
from specc.cli import app
from specc.summary.layout import DROP_ORDER

ROOT = Path(__file__).resolve().parent.parent
MARKS = {"yes", "no", "partly", "-"}  # the Trainable column's cells, which may give way at 80 columns


def table_lines(text: str) -> list[str]:
    """The table's rows (between the header rule and the first blank line after it)."""
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines) if "━" in line) + 1
    end = next(index for index in range(start, len(lines)) if not lines[index].strip())
    return lines[start:end]


def table_tokens(text: str, left_out: tuple[str, ...] = ()) -> Counter:
    """Every word of the table's rows, a shape's sizes one by one (`[1, 64,` and `1×64×` alike give
    `1` and `64`), less the cells of the `left_out` columns (headers, as the note under the table names them)."""
    lines = table_lines(text)
    header = next(line for line in text.splitlines() if "Layer" in line)
    words = Counter()
    for line in lines:
        for column in left_out:   # a column's cells lie between the header before it and its own header's end
            end = header.index(column) + len(column)
            start = len(header[:header.index(column)].rstrip()) + 1
            line = line[:start] + " " * (end - start) + line[end:]
        for word in line.split():
            parts = word.strip("[],").split("×") if re.fullmatch(r"\[?[\w×]+[\],]*", word) else [word]
            words.update(part for part in parts if part)
    return words


@pytest.fixture(scope="module", params=["resnet18", "gpt2_small", "llama2_7b"])
def published(request):
    return specc.summary(ROOT / "specs" / f"{request.param}.yaml")


def left_out_columns(text: str) -> tuple[str, ...]:
    note = re.search(r"\(left out to fit \d+ columns: ([^;]+);", " ".join(text.split()))
    return tuple(note.group(1).split(", ")) if note else ()


def test_80_columns_keep_every_name_and_number_of_the_wide_table(published):
    wide, narrow = published.render("table"), published.render("table", width=80)
    assert max(map(len, wide.splitlines())) > 80  # the wide table really does not fit
    assert max(map(len, narrow.splitlines())) <= 80
    assert "…" not in narrow
    left_out = left_out_columns(narrow)
    assert left_out in ((), ("FLOPs",))   # FLOPs at most, named under the table; the totals keep the sum
    kept = table_tokens(narrow) + shared_note_tokens(narrow)
    for word, count in table_tokens(wide, left_out).items():
        if word not in MARKS:
            assert kept[word] >= count, f"{word!r} is cut or missing at 80 columns"
    for row in published.rows:  # and each figure is there, whole
        assert f"{row.params:,}" in narrow and row.name in narrow
    assert narrow.splitlines()[-4:] == wide.splitlines()[-4:]  # the totals and memory lines too


def shared_note_tokens(text: str) -> Counter:
    """A compact table writes a shared row's Params as `(shared)` and its count in a note:
    `(shared): parameters counted once, at an earlier row: head 38,597,376` gives `(shared` and `38,597,376)`,
    the words the wide table's `(shared 38,597,376)` cell has."""
    note = re.search(r"^\(shared\): parameters counted once, at an earlier row: (.+)$", text, re.MULTILINE)
    if not note:
        return Counter()
    counts = [item.rsplit(" ", 1)[1] for item in note.group(1).split(", ")]
    return Counter(["(shared"] * len(counts) + [f"{count})" for count in counts])


def shape_of(row, compact: bool) -> str:
    return "×".join(map(str, row.shape)) if compact else "[" + ", ".join(map(str, row.shape)) + "]"


def test_at_80_columns_each_row_keeps_one_line_its_shape_compact_if_need_be(published):
    wide, narrow = published.render("table", width=200), published.render("table", width=80)
    rows, lines = published.rows, table_lines(narrow)
    for row in rows:  # the wide table writes shapes as before: `[1, 64, 56, 56]`, `[1, block_size, 768]`
        assert shape_of(row, compact=False) in wide and shape_of(row, compact=True) not in wide
    compact = "[" not in "".join(lines)   # ResNet-18 fits once Trainable goes: its shapes stay as they are
    for row, line in zip(rows, (line for line in lines if line.split()[0:1] and not line.startswith(" " * 18))):
        assert row.name == line.split()[0] and shape_of(row, compact) in line   # named dims kept: 1×block_size×768
    assert len(lines) == len(rows)   # gpt2_small's tied head too: `(shared)`, its count under the table
    if any(row.shared_params for row in rows):
        assert "(shared)" in lines[-1] and "head 38,597,376" in narrow and "(shared 38,597,376)" in wide


@pytest.mark.parametrize("name", ["gpt_char", "vit_b_16", "bert", "transformer_encoder", "mobilenet_v3_small"])
def test_at_80_columns_compact_types_and_no_margins_come_before_a_row_wraps_or_a_column_goes(name):
    """These tables are a few characters too wide once Trainable has gone and shapes are compact:
    `MLP×12` (one word) and, where that is not enough, no blank margin left and right make room, so
    every row keeps one line and FLOPs stays (it was left out, or `×12` wrapped under its type)."""
    result = specc.summary(ROOT / "specs" / f"{name}.yaml")
    narrow, wide = result.render("table", width=80), result.render("table", width=300)
    lines, every = table_lines(narrow), narrow.splitlines()
    assert len(lines) == len(result.rows) and max(map(len, every)) <= 80
    rule = every.index(next(line for line in every if "━" in line))
    header = every.index(next(line for line in every if line.lstrip().startswith("Layer")))
    assert every[rule - 1].rstrip().endswith("FLOPs") and "left out" not in narrow
    assert every[1] == "" and every[rule + 1 + len(lines)] == ""   # blank lines around the table
    for row in result.rows:
        if row.count > 1:   # the wide table's `MLP ×12`, as one word
            assert f"{row.type}×{row.count}" in narrow and f"{row.type} ×{row.count}" in wide
    if name in ("gpt_char", "vit_b_16", "bert", "mobilenet_v3_small"):   # these need the margins too
        assert every[header].startswith("Layer") and lines[0].startswith(result.rows[0].name)


def test_at_80_columns_resnet_loses_only_the_trainable_column():
    narrow = specc.summary(ROOT / "specs" / "resnet18.yaml").render("table", width=80)
    header = next(line for line in narrow.splitlines() if "Layer" in line)
    assert "Trainable" not in header and "Params" in header and "FLOPs" in header
    assert "left out" not in narrow and "[1, 64, 56, 56]" in narrow


def test_columns_give_way_in_the_documented_order():
    result = specc.summary(ROOT / "specs" / "gpt2_small.yaml", columns=["all"])
    headers = {"params_percent": "% params", "kernel_size": "Kernel", "input_shape": "Input shape",
               "flops": "FLOPs", "output_shape": "Output shape", "type": "Type"}
    seen_left_out = []
    for width in range(200, 10, -2):
        text = result.render("table", width=width)
        note = re.search(r"\(left out to fit \d+ columns: ([^;]+);", " ".join(text.split()))
        left_out = note.group(1).split(", ") if note else []
        if left_out and left_out != (seen_left_out[-1] if seen_left_out else []):
            seen_left_out.append(left_out)
        assert "…" not in text
        assert all(word in text for word in ("wte", "feed_forward", "85,054,464", "(shared"))
    assert set(seen_left_out[-1]) == {headers[key] for key in DROP_ORDER}
    # each step leaves out one more, in DROP_ORDER
    assert [len(step) for step in seen_left_out] == list(range(1, len(DROP_ORDER) + 1))
    assert [next(h for h in step if h not in (seen_left_out[i - 1] if i else [])) for i, step in
            enumerate(seen_left_out)] == [headers[key] for key in DROP_ORDER]


def test_a_narrow_table_says_which_rows_are_frozen():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    result = specc.summary(model, input_size=(1, 4))
    wide, narrow = result.render("table"), result.render("table", width=66)
    assert "Trainable   FLOPs" in wide and "Trainable   FLOPs" not in narrow
    assert "40 (frozen)" in narrow and "18 (frozen)" not in narrow
    assert "58 (partly frozen)" in narrow  # the model row: 40 of its 58 are frozen


def test_optional_columns_by_hand():
    result = specc.summary(ROOT / "specs" / "mnist_net.yaml", columns=["input_shape", "kernel_size", "params_percent"])
    lines = {line.split()[0]: line for line in result.render("table").splitlines() if line.startswith("  ")}
    assert re.search(r"conv1\s+Conv2d\s+\[1, 1, 28, 28\]\s+\[1, 32, 26, 26\]\s+\[3, 3\]\s+320\s+0\.03%", lines["conv1"])
    assert re.search(r"\[1, 64, 24, 24\]\s+\[1, 64, 12, 12\]\s+\[2, 2\]", lines["4"])  # MaxPool2d(2)
    assert f"{100 * 1_179_776 / 1_199_882:.2f}%" in lines["fc1"]
    assert [row.input_shape for row in result.rows][:2] == [[1, 1, 28, 28], [1, 32, 26, 26]]
    header = next(line for line in result.render("markdown").splitlines() if line.startswith("| Layer"))
    assert header == "| Layer | Type | Input shape | Output shape | Kernel | Params | % params | Trainable | FLOPs |"
    with pytest.raises(ValueError, match="unknown column 'bogus'"):
        specc.summary(ROOT / "specs" / "mnist_net.yaml", columns=["bogus"])


def test_module_rows_have_input_shapes_and_kernels():
    result = specc.summary(nn.Sequential(nn.Conv2d(3, 4, (3, 5)), nn.Flatten()), input_size=(2, 3, 8, 8))
    assert result.rows[1].input_shape == [2, 3, 8, 8] and result.rows[1].kernel_size == [3, 5]


def test_cli_columns_and_a_bad_column():
    runner = CliRunner()
    done = runner.invoke(app, ["summary", str(ROOT / "specs" / "mnist_net.yaml"), "--columns", "kernel_size"])
    assert done.exit_code == 0, done.output
    assert "Kernel" in done.output and "[3, 3]" in done.output and "% params" not in done.output
    done = runner.invoke(app, ["summary", str(ROOT / "specs" / "mnist_net.yaml"), "--columns", "kernel,all"])
    assert done.exit_code == 2 and "unknown column 'kernel'" in done.output


def test_repr_is_the_table_and_html_has_every_row():
    result = specc.summary(ROOT / "specs" / "resnet18.yaml", depth=1)
    assert repr(result) == str(result) == result.render("table")
    page = result._repr_html_()
    assert page.startswith("<div>") and page.count("<tr>") == len(result.rows) + 1 + 9  # header, rows, totals and memory
    for row in result.rows:
        assert f">{row.name}</span>" in page and f">{row.params:,}</td>" in page
    assert "Total params</td><td style=\"text-align:right\">11,689,512" in page


def test_html_escapes_names():
    model = nn.Sequential()
    model.add_module("a<b>", nn.Linear(2, 2))
    page = specc.summary(model, input_size=(1, 2))._repr_html_()
    assert "a&lt;b&gt;" in page and "<b>Sequential</b>" in page and "a<b>" not in page


def test_train_result_repr_is_short(tmp_path):
    from specc.train.training import TrainResult

    result = TrainResult(tmp_path / "run", "completed", history=[{"epoch": 1}, {"epoch": 2}],
                         metrics={"train": {"loss": 0.5}, "val": {"loss": 0.25, "accuracy": 0.9123456}})
    assert repr(result) == f"TrainResult(completed, 2 epochs, val: loss 0.25, accuracy 0.9123, {tmp_path / 'run'})"


def test_collapsed_repeats_keep_their_input_shape_and_kernel():
    result = specc.summary(ROOT / "specs" / "resnet18.yaml", columns=["all"])
    conv = next(row for row in result.rows if row.path == "layer1.*.conv1")
    assert conv.count == 2 and conv.input_shape == [1, 64, 56, 56] and conv.kernel_size == [3, 3]


def test_rows_of_renamed_containers_use_the_state_dict_path():
    """`names: {body: "", shortcut: downsample}` (resnet18): the shortcut's row is `downsample`, at the
    path its weights have in the state_dict, and so are its layers."""
    result = specc.summary(ROOT / "specs/resnet18.yaml", device="meta")
    keys = set(specc.build(ROOT / "specs/resnet18.yaml", device="meta").state_dict())
    rows = {row.path: row for row in result.rows}
    assert rows["layer2.0.downsample"].name == "downsample" and rows["layer2.0.downsample"].type == "shortcut"
    assert "layer2.0.0.shortcut" not in rows
    layers = [row for row in result.rows if row.kind == "layer" and row.params and "*" not in row.path]
    assert layers and all(f"{row.path}.weight" in keys for row in layers)
    assert re.search(r"^\s+downsample\s+shortcut\b", result.render("table"), re.M)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "bert"])
def test_every_row_path_is_a_module_or_a_marked_flat_structure(name):
    """`--format json`: a row's path is a module of the compiled model (`*` stands for each repetition),
    or a structure with no module of its own (`flat:`), marked `<enclosing module> (<kind>, flat)`;
    a layer's path is the prefix of its weights in the state_dict."""
    spec = ROOT / "specs" / f"{name}.yaml"
    runner_result = CliRunner().invoke(app, ["summary", str(spec), "--format", "json"])
    assert runner_result.exit_code == 0, runner_result.output
    rows = json.loads(runner_result.output)["rows"]
    model = specc.build(spec, device="meta")
    modules, keys = set(dict(model.named_modules())), set(model.state_dict())

    def is_module(path):
        pattern = re.compile(re.escape(path).replace(r"\*", r"\d+") + r"\Z")
        return any(pattern.match(module) for module in modules)

    flat_rows = []
    for row in rows:
        if row["kind"] == "function":
            continue   # a function item (flatten, matmul) is a call, not a module
        flat = re.fullmatch(r"(?:(\S+) )?\(" + re.escape(row["type"]) + r"(?: (\w+))?, flat\)", row["path"])
        if flat:
            flat_rows.append(row)
            assert row["name"] == " ".join(filter(None, [flat[2], "(flat)"])), row
            assert flat[1] is None or is_module(flat[1]), row
        else:
            assert is_module(row["path"]), row
        if row["kind"] == "layer" and row["params"] and "*" not in row["path"]:
            assert any(key.startswith(row["path"] + ".") for key in keys), row
    if name == "resnet18":
        assert [row["path"] for row in flat_rows[:2]] == ["layer1.* (residual, flat)", "layer2.0 (residual, flat)"]
    if name == "squeezenet1_1":   # `flat: true`, `names: {expand1x1: "", expand3x3: ""}`, `name: expand`
        assert [(row["path"], row["name"]) for row in flat_rows[:3]] == [
            ("features.3 (parallel expand, flat)", "expand (flat)"),
            ("features.3 (branch expand1x1, flat)", "expand1x1 (flat)"),
            ("features.3 (branch expand3x3, flat)", "expand3x3 (flat)")]
    assert len({row["path"] for row in rows}) == len(rows)   # paths key the rows (summary diff)
