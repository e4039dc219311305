"""A spec is untrusted input (issue 13): nothing in it may run code, and no input may exhaust the
machine. Each hostile spec below must give exit code 2 with a located message — no traceback, no
internal error, no hang. All are checked by `specc check` in ONE subprocess (so the suite pays
torch's start-up once) under a generous timeout and a 1 GB address-space limit; the size bombs
(expansion, build and reading bounds) must each answer within 5 s of CPU time (wall time on a
busy 2-core machine says nothing about the bound).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import specc
from specc.lang.errors import SpecError
from specc.lang.spec import parse_override

ROOT = Path(__file__).resolve().parent.parent
ADDRESS_SPACE = 1 << 30
HEADER = "inputs: {x: {shape: [8]}}\n"

# Checks every file given with the CLI in-process, printing one JSON object of results.
DRIVER = """
import json, sys, time
from typer.testing import CliRunner
from specc.cli import app
results = {}
for path in sys.argv[1:]:
    start = time.process_time()   # CPU time: a busy machine makes a check wait, not work longer
    result = CliRunner().invoke(app, ["check", path])
    unexpected = result.exception if not isinstance(result.exception, SystemExit) else None
    results[path] = {"code": result.exit_code, "output": result.output,
                     "exception": repr(unexpected) if unexpected else None,
                     "seconds": time.process_time() - start}
print(json.dumps(results))
"""


@dataclass
class Hostile:
    """A spec that must be refused at `line` with every one of `words` in the message."""

    id: str
    text: str
    line: int
    words: tuple[str, ...]
    code: str = "EXPRESSION_ERROR"
    at_load: bool = True      # refused by `specc.load` already (else by the expansion in `specc.compile`)


def _alias_bomb(where: str) -> str:
    """Nine levels of nine aliases: 9**9 values once expanded."""
    lines = ["  a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    if where == "vars":
        return HEADER + "vars:\n" + "\n".join(lines) + "\nlayers: [ReLU]\n"
    return HEADER + "bomb:\n" + "\n".join(lines) + "\nlayers: [ReLU]\n"


def _block_chain(levels: int, uses: int = 1, last: str = "ReLU") -> str:
    """Blocks b0 .. b{levels}, each using the next `uses` times: nesting `levels` deep, uses**levels items."""
    lines = [HEADER.rstrip(), "blocks:"]
    for level in range(levels):
        lines += [f"  b{level}:", f"    layers: [{', '.join([f'b{level + 1}'] * uses)}]"]
    return "\n".join([*lines, f"  b{levels}:", f"    layers: [{last}]", "layers: [b0]"]) + "\n"


def _var(expression: str) -> str:
    return HEADER + f'vars:\n  l: [1]\n  s: abc\n  big: "{expression}"\nlayers:\n  - Linear: {{out_features: 2}}\n'


HOSTILE = [
    # ----- expressions: bounded, every failure located at its var (line 5) -----
    Hostile("power_tower", _var("$(10 ** 10 ** 9)"), 5, ("more than 1024 bits",)),
    Hostile("power_digits", _var("$(2 ** 99999)"), 5, ("more than 1024 bits",)),
    Hostile("list_repetition", _var("$(l * 300000000)"), 5, ("300,000,000 items", "100,000")),
    Hostile("string_repetition", _var("$(s * 300000000)"), 5, ("900,000,000 items",)),
    Hostile("string_repetition_left", _var("$(300000000 * s)"), 5, ("900,000,000 items",)),
    Hostile("string_doubling", HEADER + "vars:\n  s: " + "x" * 60_000 + "\n  t: $(s + s)\nlayers: [ReLU]\n",
            4, ("120,000 items",)),
    Hostile("max_of_nothing", _var("$(max())"), 5, ("max expected at least 1 argument",)),
    Hostile("negated_string", _var("$(-s)"), 5, ("bad operand type",)),
    Hostile("int_of_infinity", _var("$(int(1e400))"), 5, ("not a finite number",)),
    Hostile("round_digits", _var("$(round(5, -1000000))"), 5, ("round's digits",)),
    Hostile("string_format", _var("$('%0999999999d' % 1)"), 5, ("% works on numbers only",)),
    Hostile("deep_sum", _var("$(" + "+".join(["1"] * 1000) + ")"), 5, ("nests deeper than 100 levels",)),
    Hostile("deep_negation", _var("$(" + "-" * 1000 + "1)"), 5, ("nests deeper than 100 levels",)),
    Hostile("deep_parentheses", _var("$(" + "(" * 1000 + "1" + ")" * 1000 + ")"), 5, ("cannot parse",)),
    Hostile("unclosed_parenthesis", _var("$(max(1, 2)"), 5, ("without its closing",)),
    Hostile("dunder", _var("$(s.__class__)"), 5, ("may only use",)),
    # ----- YAML -----
    Hostile("alias_bomb_in_vars", _alias_bomb("vars"), 7, ("more than 20,000 values", "SPECC_MAX_YAML_NODES"),
            "LIMIT_EXCEEDED"),
    Hostile("alias_bomb_at_top", _alias_bomb("top"), 7, ("more than 20,000 values",), "LIMIT_EXCEEDED"),
    Hostile("many_values", HEADER + "vars: {a: [" + ", ".join(["1"] * 60_000) + "]}\nlayers: [ReLU]\n", 2,
            ("the YAML holds more than 20,000 values", "SPECC_MAX_YAML_NODES"), "LIMIT_EXCEEDED"),
    Hostile("huge_file", HEADER + "#" * 1_100_000 + "\nlayers: [ReLU]\n", 1,
            ("1,100,042 characters long, more than 1,000,000", "SPECC_MAX_SPEC_BYTES"), "LIMIT_EXCEEDED"),
    Hostile("deep_lists", HEADER + "layers:\n  - " + "[" * 1000 + "]" * 1000 + "\n", 3,
            ("nest deeper than 100 levels", "SPECC_MAX_NESTING"), "LIMIT_EXCEEDED"),
    Hostile("deep_sequential", HEADER + "layers:\n  - " + "{sequential: [" * 1000 + "ReLU" + "]}" * 1000 + "\n", 3,
            ("nest deeper than 100 levels",), "LIMIT_EXCEEDED"),
    Hostile("nul_byte", HEADER + "layers:\n  - Re\x00LU\n", 3, ("0x0000",), "YAML_SYNTAX"),
    Hostile("huge_int", HEADER + "vars: {a: " + "9" * 5000 + "}\nlayers: [ReLU]\n", 2, ("too large",), "LIMIT_EXCEEDED"),
    Hostile("huge_hex", HEADER + "vars: {a: 0x" + "f" * 5000 + "}\nlayers: [ReLU]\n", 2, ("too large",), "LIMIT_EXCEEDED"),
    Hostile("list_as_key", HEADER + "vars: {? [1, 2] : 3}\nlayers: [ReLU]\n", 2, ("a key must be a plain value",),
            "TYPE_ERROR"),
    # ----- expansion: repeats, blocks and structures are bounded, refused at once -----
    Hostile("repeat_bomb", HEADER + "layers:\n  - Linear: [4]\n    repeat: 1000000000\n", 4,
            ("1,000,000,000 repetitions", "more than 10,000 items", "SPECC_MAX_ITEMS"), "LIMIT_EXCEEDED", at_load=False),
    Hostile("repeat_in_repeat", HEADER + "blocks:\n  b:\n    layers:\n      - Linear: [8]\n        repeat: 5000\n"
            "layers:\n  - b: {}\n    repeat: 5000\n", 5, ("expands to more than 10,000 items", "in block 'b' used at"),
            "LIMIT_EXCEEDED", at_load=False),
    Hostile("block_doubling", _block_chain(30, uses=2), 64, ("expands to more than 10,000 items",), "LIMIT_EXCEEDED", at_load=False),
    Hostile("skipped_items", HEADER + "blocks:\n  b:\n    layers:\n" + "      - {ReLU: null, if: false}\n" * 2000
            + "layers:\n  - b: {}\n    repeat: 9000\n", 2000, ("expands to more than 10,000 items",), "LIMIT_EXCEEDED",
            at_load=False),
    Hostile("lstm_layers_bomb", "inputs: {x: {shape: [5, 8]}}\nlayers:\n  - LSTM: {hidden_size: 4, num_layers: 1000000000}\n", 3,
            ("more than 20,000 tensor operations", "LSTM 'LSTM'", "SPECC_MAX_BUILD_OPS"), "LIMIT_EXCEEDED", at_load=False),
    Hostile("many_lstms", "inputs: {x: {shape: [5, 8]}}\nlayers:\n  - LSTM: {hidden_size: 8}\n    repeat: 5000\n", 3,
            ("more than 20,000 tensor operations",), "LIMIT_EXCEEDED", at_load=False),
    Hostile("recursive_block", HEADER + "blocks:\n  a:\n    layers: [a]\nlayers: [a]\n", 4,
            ("block 'a' uses itself more than 64 levels deep", "SPECC_MAX_STRUCTURE_DEPTH"), "LIMIT_EXCEEDED", at_load=False),
    Hostile("block_chain", _block_chain(70), 132, ("structures nest more than 64 levels deep",), "LIMIT_EXCEEDED", at_load=False),
    Hostile("repeated_sequentials", HEADER + "layers:\n  - " + "{repeat: 1, sequential: [" * 40 + "ReLU" + "]}" * 40
            + "\n", 3, ("structures nest more than 64 levels deep",), "LIMIT_EXCEEDED", at_load=False),
    # ----- the name becomes runs/<name>/: an identifier, so no run can be written elsewhere -----
    Hostile("name_absolute", "name: /tmp/elsewhere\n" + HEADER + "layers: [ReLU]\n", 1,
            ("name: the name must be an identifier", "(got '/tmp/elsewhere')"), "TYPE_ERROR"),
    Hostile("name_parent", HEADER + "name: ../x\nlayers: [ReLU]\n", 2, ("must be an identifier", "(got '../x')"),
            "TYPE_ERROR"),
    Hostile("name_with_space", HEADER + "name: my model\nlayers: [ReLU]\n", 2, ("(got 'my model')",), "TYPE_ERROR"),
    Hostile("set_tag", HEADER + "vars: {a: !!set {1: null}}\nlayers: [ReLU]\n", 2, ("'!!set'",), "YAML_TAG"),
    Hostile("custom_tag", HEADER + "vars: {a: !foo 1}\nlayers: [ReLU]\n", 2, ("'!foo'",), "YAML_TAG"),
]


def _python_tags(canary: Path) -> list[Hostile]:
    """`!!python/*` tags on a mapping, a list, a scalar and a key: each would run `touch canary`."""
    command = f"touch {canary}"
    return [
        Hostile("python_tag_on_mapping", HEADER + f"vars: !!python/object/apply:os.system\n  args: ['{command}']\n"
                "layers: [ReLU]\n", 2, ("'!!python/object/apply:os.system' is not allowed",), "YAML_TAG"),
        Hostile("python_tag_on_list", HEADER + f"layers: !!python/object/apply:os.system ['{command}']\n", 2,
                ("'!!python/object/apply:os.system'",), "YAML_TAG"),
        Hostile("python_tag_on_scalar", HEADER + f"vars: {{a: !!python/object/apply:os.system '{command}'}}\n"
                "layers: [ReLU]\n", 2, ("!!python/object/apply:os.system",), "YAML_TAG"),
        Hostile("python_name_tag", HEADER + "vars: {a: !!python/name:os.system }\nlayers: [ReLU]\n", 2,
                ("'!!python/name:os.system'",), "YAML_TAG"),
        Hostile("python_tag_on_key", HEADER + f"vars: {{!!python/object/apply:os.system '{command}': 1}}\n"
                "layers: [ReLU]\n", 2, ("a key must be a plain value",), "YAML_TAG"),
    ]


def run_checks(paths: list[Path], timeout: float) -> dict:
    """`specc check` on every path in one subprocess limited to 1 GB of address space."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    finished = subprocess.run([sys.executable, "-c", DRIVER, *map(str, paths)], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, preexec_fn=limit_memory)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return json.loads(finished.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> tuple[dict, dict, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    canary = folder / "canary"
    cases = {case.id: case for case in [*HOSTILE, *_python_tags(canary)]}
    paths = {}
    for case in cases.values():
        paths[case.id] = folder / f"{case.id}.yaml"
        paths[case.id].write_bytes(case.text.encode("utf-8"))
    # generous: ~1 s each on a loaded 2-core machine would be 30 s; a hang or a bomb takes minutes
    results = run_checks(list(paths.values()), timeout=20 + 4 * len(paths))
    return cases, {key: results[str(path)] for key, path in paths.items()}, canary


@pytest.mark.parametrize("case_id", [case.id for case in HOSTILE] + [case.id for case in _python_tags(Path("c"))])
def test_hostile_spec_is_a_located_error(checked, case_id):
    cases, results, canary = checked
    case, result = cases[case_id], results[case_id]
    assert result["exception"] is None, result
    assert result["code"] == 2, result["output"]
    assert "internal error" not in result["output"] and "Traceback" not in result["output"]
    assert f"{case_id}.yaml:{case.line}:" in result["output"], result["output"]
    for word in case.words:
        assert word in result["output"], result["output"]
    assert not canary.exists()


@pytest.mark.parametrize("case", [case for case in HOSTILE if case.code != "EXPRESSION_ERROR"],
                         ids=lambda case: case.id)
def test_hostile_yaml_is_refused_by_load_with_its_code(case, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(case.text.encode("utf-8"))
    with pytest.raises(SpecError) as raised:
        specc.load(path) if case.at_load else specc.compile(specc.load(path), device="meta")
    assert raised.value.first.code == case.code
    assert raised.value.first.location.line == case.line


@pytest.mark.parametrize("case_id", [case.id for case in HOSTILE if not case.at_load or case.id in ("many_values", "huge_file")])
def test_size_bombs_answer_within_5_seconds(checked, case_id):
    assert checked[1][case_id]["seconds"] < 5, checked[1][case_id]


def test_python_tags_never_run_in_process(tmp_path):
    canary = tmp_path / "canary"
    for case in _python_tags(canary):
        with pytest.raises(SpecError) as raised:
            specc.load(case.text)
        assert raised.value.first.code == "YAML_TAG", case.id
    assert not canary.exists()


def test_the_yaml_limits_can_be_raised(monkeypatch, tmp_path):
    deep = HEADER + "vars: {a: " + "[" * 150 + "1" + "]" * 150 + "}\nlayers: [ReLU]\n"
    with pytest.raises(SpecError, match="SPECC_MAX_NESTING"):
        specc.load(deep)
    monkeypatch.setenv("SPECC_MAX_NESTING", "200")
    assert specc.load(deep).vars["a"][0][0][0]
    monkeypatch.setenv("SPECC_MAX_NESTING", "lots")
    with pytest.raises(SpecError, match="SPECC_MAX_NESTING='lots' must be a positive integer"):
        specc.load(deep)


@pytest.mark.parametrize("text, words", [
    ("width=[1, 2", "expected ',' or ']'"),
    ("width={a: 1", "expected ',' or '}'"),
    ("width=!!python/object/apply:os.system [ls]", "YAML tag"),
    ("width=a\x00b", "0x0000"),
])
def test_malformed_set_values_are_usage_errors(text, words):
    with pytest.raises(SpecError) as raised:
        parse_override(text)
    assert f"--set {text.split('=')[0]}=" in raised.value.first.message
    assert words in raised.value.first.message


def test_malformed_set_through_the_cli_exits_2():
    from typer.testing import CliRunner

    from specc.cli import app

    result = CliRunner().invoke(app, ["check", str(ROOT / "specs" / "mnist_net.yaml"), "--set", "width=[1, 2"])
    assert result.exit_code == 2
    assert "error: --set width=[1, 2: the value is not valid YAML" in result.output


def test_non_utf8_spec_is_located(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"inputs: {x: {shape: [8]}}\nlayers: [R\xe9LU]\n")
    with pytest.raises(SpecError) as raised:
        specc.load(path)
    assert "not UTF-8" in raised.value.first.message and raised.value.first.location.file == str(path)


def test_expansion_limits_can_be_raised_and_name_their_variable(monkeypatch):
    spec = HEADER + "layers:\n  - Linear: [8]\n    repeat: 30\n"
    monkeypatch.setenv("SPECC_MAX_ITEMS", "20")
    with pytest.raises(SpecError) as raised:
        specc.compile(spec, device="meta")
    assert (raised.value.first.code, raised.value.first.location.line) == ("LIMIT_EXCEEDED", 4)
    assert "the limit is 20; set SPECC_MAX_ITEMS to raise it" in raised.value.first.message
    monkeypatch.setenv("SPECC_MAX_ITEMS", "31")
    assert len(specc.compile(spec, device="meta").graph.nodes) == 31   # the input and 30 Linears
    monkeypatch.setenv("SPECC_MAX_ITEMS", "29")   # a repeat under the bound, but too many items in all
    with pytest.raises(SpecError, match="the spec expands to more than 29 items"):
        specc.compile(HEADER + "layers:\n  - ReLU\n  - Linear: [8]\n    repeat: 29\n", device="meta")


def test_a_block_may_use_itself_when_an_if_ends_it(monkeypatch):
    spec = HEADER + ("blocks:\n  tower:\n    args: {n: null}\n    layers:\n      - Linear: [8]\n"
                     "      - tower: {n: $(n - 1)}\n        if: $(n > 1)\nlayers:\n  - tower: {n: 5}\n")
    assert sum(node.op == "module" for node in specc.compile(spec, device="meta").graph.nodes) == 5
    monkeypatch.setenv("SPECC_MAX_STRUCTURE_DEPTH", "3")
    with pytest.raises(SpecError, match="block 'tower' uses itself more than 3 levels deep"):
        specc.compile(spec, device="meta")


def test_yaml_nesting_raised_past_the_reader_is_still_located(monkeypatch):
    monkeypatch.setenv("SPECC_MAX_NESTING", "5000")
    deep = HEADER + "layers:\n  - " + "{sequential: [" * 1000 + "ReLU" + "]}" * 1000 + "\n"
    with pytest.raises(SpecError) as raised:
        specc.load(deep)
    assert raised.value.first.code == "LIMIT_EXCEEDED" and "SPECC_MAX_NESTING=5000" in raised.value.first.message


def test_a_file_named_unlike_an_identifier_still_round_trips_through_safetensors(tmp_path):
    """Only an explicit `name:` must be an identifier; the file stem is stored as the name only when it is one."""
    from specc.weights.loading import save_weights

    path = tmp_path / "my-model.yaml"
    path.write_text(HEADER + "layers:\n  - Linear: [3]\n")
    compiled = specc.compile(path)
    save_weights(compiled, tmp_path / "weights.safetensors")
    rebuilt = specc.build(tmp_path / "weights.safetensors")
    assert rebuilt.get_submodule("0").weight.equal(compiled.module.get_submodule("0").weight)


def test_the_build_budget_is_far_above_real_models_and_can_be_lowered(monkeypatch):
    assert specc.compile(ROOT / "specs" / "llama2_7b.yaml", device="meta").spec.name == "llama2_7b"
    monkeypatch.setenv("SPECC_MAX_BUILD_OPS", "800")   # llama2_7b needs 811
    with pytest.raises(SpecError) as raised:
        specc.compile(ROOT / "specs" / "llama2_7b.yaml", device="meta")
    assert raised.value.first.code == "LIMIT_EXCEEDED" and "SPECC_MAX_BUILD_OPS" in raised.value.first.message
