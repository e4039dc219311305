"""`make fuzz N=1000 SEED=0`: mutate every spec in specs/ and `specc check` each mutant.

    python benchmarks/fuzz.py --n 1000 --seed 0            # the table of figures; exit 1 on any failure
    python benchmarks/fuzz.py --n 40 --json                # machine-readable (tests/test_fuzz.py)
    python benchmarks/fuzz.py --n 1000 --keep fuzz-failures # failing mutants written there to replay

Each mutant applies one to three mutations to one spec: tree mutations of the parsed YAML (keys
renamed, values swapped for other types, huge or negative numbers, items deleted, duplicated or
moved, `repeat:` bombs, deeply nested structures and expressions) or text mutations of the file
(NUL and non-UTF-8 bytes, characters inserted or deleted, lines dropped, duplicated or re-indented,
the file truncated, a 5,000-digit int, an alias bomb, a `!!python` tag that would create a canary
file), and issue 25's hostile cases (benchmarks/fuzz_cases.py): recursive aliases, kwarg keys
that are code (such a mutant is also run through `specc codegen`, and the generated class is
instantiated on meta: nothing may run), backtracking `re:` rename rules, and every 25th case a
hostile checkpoint (a DAG of shared lists, a cycle, 200,000 levels) read by `specc export`.
A mutant passes when `specc check` exits 0, or 2 with every error located at file:line:col,
with no traceback and no "internal error", within `--seconds` (5) of CPU time (the child's, so a
busy machine cannot fail a correct check) and under a `--memory` (1 GB) address-space limit
beyond the warmed-up checker. Every check runs in a child forked from one
warmed-up process (torch imported once), so 1,000 mutants take minutes rather than an hour.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import random
import re
import resource
import select
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python benchmarks/fuzz.py` from anywhere

from benchmarks import fuzz_cases  # noqa: E402

SPECS = sorted((ROOT / "specs").glob("*.yaml"))
CANARY_NAME = "CANARY"
# values a swapped or replaced node may take: other types, edge numbers, expressions, references
ODD_VALUES: list[Any] = [None, True, False, 0, 1, -1, 2, 3, 7, 64, 1000, 2**31, 2**63, 10**9, 10**30, -10**9,
                         0.5, -0.0, 1e308, float("inf"), float("nan"), "", "x", "ReLU", "Linear", "$nope", "$i",
                         "$(1/0)", "$(2 ** 1000)", "$(10 ** 10 ** 9)", "$(max())", "$([1] * 10 ** 9)", "$in",
                         "$in.channels", "$(", "${", [], [1], [1, "a"], [[]], {}, {"a": 1}, {"Linear": None},
                         {"sequential": []}, {"parallel": {}}, {"residual": None}, "cat", "add"]
REPEATS: list[Any] = [10**9, 10**6, 20_000, 5_000, -5, 0, "many", 2.5, None, [3]]


@dataclass
class Outcome:
    """One checked mutant."""

    index: int
    spec: str
    mutations: list[str]
    code: int | None          # exit code; None when the child was killed or died
    seconds: float
    failure: str | None       # why it fails the contract, None when it passes
    output: str = ""
    wall_seconds: float = 0.0  # for the record: the limit applies to CPU time (`seconds`)


# ----- tree mutations (on the parsed YAML) -------------------------------------------------------
def _slots(tree: Any, path: tuple = ()) -> list[tuple[Any, Any, tuple]]:
    """Every (container, key-or-index, path) in the tree."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            found.append((tree, key, path + (key,)))
            found += _slots(value, path + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.append((tree, index, path + (index,)))
            found += _slots(value, path + (index,))
    return found


def _items(tree: Any) -> list[dict]:
    """Mappings that sit in a list: spec items (and a few other things, which is fine)."""
    return [container[key] for container, key, _ in _slots(tree)
            if isinstance(container, list) and isinstance(container[key], dict)]


def _typo(rng: random.Random, word: str) -> str:
    word = str(word)
    if len(word) < 2:
        return word + rng.choice("xs_")
    position = rng.randrange(len(word))
    edits = [word[:position] + word[position + 1:],                                 # drop
             word[:position] + rng.choice("abcdefghijklmnopqrstuvwxyz_.$ ") + word[position:],  # insert
             word[:position] + word[position + 1:position + 2] + word[position] + word[position + 2:]]  # swap
    return rng.choice(edits) or "x"


def rename_key(rng: random.Random, tree: Any) -> str:
    mappings = [(container, key) for container, key, _ in _slots(tree) if isinstance(container, dict)]
    if isinstance(tree, dict):
        mappings += [(tree, key) for key in tree]
    if not mappings:
        return "rename_key(none)"
    container, key = rng.choice(mappings)
    keys = [k for c, _ in mappings for k in c]
    new = _typo(rng, key) if rng.random() < 0.6 else rng.choice(keys)
    container[new] = container.pop(key)
    return f"rename_key({key!s:.20}->{new!s:.20})"


def swap_value(rng: random.Random, tree: Any) -> str:
    slots = _slots(tree)
    if not slots:
        return "swap_value(none)"
    container, key, path = rng.choice(slots)
    container[key] = rng.choice(ODD_VALUES)
    return f"swap_value({'.'.join(map(str, path))[:40]}={container[key]!r:.20})"


def delete_node(rng: random.Random, tree: Any) -> str:
    slots = _slots(tree)
    if not slots:
        return "delete(none)"
    container, key, path = rng.choice(slots)
    del container[key]
    return f"delete({'.'.join(map(str, path))[:40]})"


def duplicate_or_move(rng: random.Random, tree: Any) -> str:
    lists = [container for container, _, _ in _slots(tree) if isinstance(container, list) and container]
    if not lists:
        return "duplicate(none)"
    source, target = rng.choice(lists), rng.choice(lists)
    value = rng.choice(source)
    if rng.random() < 0.5:
        source.remove(value)
    target.insert(rng.randrange(len(target) + 1), json.loads(json.dumps(value, default=str)))
    return "duplicate_or_move"


def repeat_bomb(rng: random.Random, tree: Any) -> str:
    items = _items(tree)
    if not items:
        return "repeat(none)"
    count = rng.choice(REPEATS)
    rng.choice(items)["repeat"] = count
    return f"repeat({count!r})"


def deep_structure(rng: random.Random, tree: Any) -> str:
    lists = [container for container, _, _ in _slots(tree) if isinstance(container, list)]
    if not lists:
        return "deep(none)"
    depth = rng.choice([30, 40, 60])   # deeper ones are text mutations: PyYAML cannot dump them
    kind = rng.choice(["sequential", "repeat", "residual"])
    node: Any = "ReLU"
    for _ in range(depth):
        node = {"sequential": [node]} if kind != "residual" else {"residual": [node]}
        if kind == "repeat":
            node["repeat"] = 2
    target = rng.choice(lists)
    target.insert(rng.randrange(len(target) + 1), node)
    return f"deep({kind}x{depth})"


def deep_expression(rng: random.Random, tree: Any) -> str:
    slots = _slots(tree)
    if not slots:
        return "deep_expression(none)"
    container, key, _ = rng.choice(slots)
    depth = rng.choice([150, 1000, 5000])
    container[key] = rng.choice(["$(" + "+".join(["1"] * depth) + ")", "$(" + "-" * depth + "1)",
                                 "$(" + "(" * depth + "1" + ")" * depth + ")", "$(" + "[" * depth + "]" * depth + ")"])
    return f"deep_expression({depth})"


TREE_MUTATIONS: list[Callable[[random.Random, Any], str]] = [
    rename_key, rename_key, swap_value, swap_value, swap_value, delete_node, duplicate_or_move, repeat_bomb,
    deep_structure, deep_expression]


# ----- text mutations (on the file's bytes) ------------------------------------------------------
def text_mutation(rng: random.Random, data: bytes, canary: Path) -> tuple[bytes, str]:
    lines = data.split(b"\n")
    choice = rng.randrange(12)
    at = rng.randrange(len(data) + 1)
    line = rng.randrange(len(lines))
    if choice == 0:
        return data[:at] + b"\x00" + data[at:], "nul_byte"
    if choice == 1:
        return data[:at] + rng.choice([b"\xff", b"\xe9", b"\xc3"]) + data[at:], "non_utf8"
    if choice == 2:
        return data[:at] + bytes([rng.choice(b":-[]{}&*!|>'\"#%@`,? \t")]) + data[at:], "insert_char"
    if choice == 3:
        return data[:at] + data[at + 1:], "delete_char"
    if choice == 4:
        return b"\n".join(lines[:line] + lines[line + 1:]), "delete_line"
    if choice == 5:
        return b"\n".join(lines[:line] + [lines[line]] + lines[line:]), "duplicate_line"
    if choice == 6:
        indent = rng.choice([b"", b" ", b"  ", b"      ", b"\t"])
        return b"\n".join(lines[:line] + [indent + lines[line].lstrip()] + lines[line + 1:]), "indent"
    if choice == 7:
        return data[:at], "truncate"
    if choice == 8:
        numbers = list(re.finditer(rb"(?<![\w.])\d+(?![\w.])", data))
        if not numbers:
            return data, "huge_int(none)"
        number = rng.choice(numbers)
        return data[:number.start()] + b"9" * 5000 + data[number.end():], "huge_int"
    if choice == 9:
        bomb = [b"bomb_0: &b0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
        bomb += [f"bomb_{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]".encode() for i in range(1, 10)]
        return data + b"\n" + b"\n".join(bomb) + b"\n", "alias_bomb"
    if choice == 10:
        depth = rng.choice([200, 1000, 5000])
        nested = rng.choice([b"{sequential: [" * depth + b"ReLU" + b"]}" * depth, b"[" * depth + b"]" * depth,
                             b"{a: " * depth + b"1" + b"}" * depth])
        return re.sub(rb"(?m)^layers:.*$", lambda m: b"layers:\n  - " + nested, data, count=1), f"deep_text({depth})"
    tag = f"!!python/object/apply:os.system ['touch {canary}']".encode()
    return data.replace(b": ", b": " + tag + b" ", 1) if rng.random() < 0.5 else data + b"\nvars: " + tag + b"\n", \
        "python_tag"


def mutate(rng: random.Random, spec: Path, canary: Path) -> tuple[bytes, list[str]]:
    """One mutant of `spec`: one to three tree or text mutations (some of them issue 25's hostile cases)."""
    data, done = spec.read_bytes(), []
    for _ in range(rng.choice([1, 1, 2, 3])):
        chance = rng.random()
        if chance < 0.04:
            data, name = fuzz_cases.recursive_alias(rng, data)
            done.append(name)
            continue
        if chance < 0.12:
            tree = _parse(data)
            hostile = [lambda r, t: fuzz_cases.inject_kwarg_key(r, t, canary), fuzz_cases.bad_rename_rule]
            name = rng.choice(hostile)(rng, tree) if tree is not None else None
            dumped = _dump(tree) if name is not None else None
            if dumped is not None:
                data = dumped.encode("utf-8")
                done.append(name)
                continue
        if rng.random() < 0.55:
            tree = _parse(data)
            if tree is not None:
                name = rng.choice(TREE_MUTATIONS)(rng, tree)
                dumped = _dump(tree)
                if dumped is not None:
                    data = dumped.encode("utf-8")
                    done.append(name)
                    continue
        data, name = text_mutation(rng, data, canary)
        done.append(name)
    return data, done


def _parse(data: bytes) -> Any:
    """The mutant as data, read with specc's own bounded loader (an alias bomb added by an earlier
    mutation must not blow up the fuzzer itself); None when it does not load."""
    from specc.lang.errors import SpecError
    from specc.lang.source import load_yaml

    try:
        return load_yaml(data.decode("utf-8"))[0]
    except (SpecError, UnicodeDecodeError, ValueError, RecursionError):
        return None   # an earlier text mutation broke the YAML: mutate the text again instead


def _dump(tree: Any) -> str | None:
    try:
        return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=10**6)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None


# ----- checking ----------------------------------------------------------------------------------
_LOCATED = re.compile(r"^error: (?P<file>.+?):(?P<line>\d+):(?P<column>\d+): ")


def verdict(path: Path, code: int | None, output: str, exception: str | None, seconds: float,
            time_limit: float, canary: Path, located: bool = True) -> str | None:
    """Why a check result breaks the contract, or None (`seconds`: the child's CPU time)."""
    if canary.exists():
        return "canary created: code ran"
    if code is None:
        return f"killed after {seconds:.1f} s (time or memory)"
    if exception:
        return f"exception: {exception[:200]}"
    if "internal error" in output or "Traceback" in output:
        return "internal error"
    if code not in (0, 2):
        return f"exit {code}"
    if seconds > time_limit:
        return f"slow: {seconds:.1f} s"
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    if not located:
        return None
    if code == 2 and not errors:
        return "exit 2 without an error line"
    for line in errors:
        match = _LOCATED.match(line)
        if not match or match["file"] != str(path):
            return f"unlocated: {line[:160]}"
    return None


def checkpoint_verdict(checkpoint: Path, code: int | None, output: str, exception: str | None, seconds: float,
                       time_limit: float, canary: Path) -> str | None:
    """A hostile checkpoint must be refused: exit 2 with an error naming the file, in time."""
    general = verdict(checkpoint, code, output, exception, seconds, time_limit, canary, located=False)
    if general is not None:
        return general
    if code != 2 or not any(line.startswith("error: ") and str(checkpoint) in line for line in output.splitlines()):
        return f"not refused with an error naming the checkpoint: exit {code}: {output[-300:]}"
    return None


def check_in_child(path: Path, time_limit: float, memory_bytes: int, mode: str = "check",
                   checkpoint: Path | None = None) -> tuple[int | None, str, str | None, float]:
    """`specc check path` in a forked child under an address-space limit and a CPU-time limit.

    The time that counts is the child's CPU time (user + system, from wait4), not wall time: on a
    busy 2-core machine a correct check may wait seconds for a core, but cannot use more CPU. The
    child is stopped past `time_limit` + 1 s of CPU (RLIMIT_CPU), or killed past a wall-clock
    backstop of 10 x that (a child blocked without using CPU).

    Args:
        mode: "check"; "codegen" (also `specc codegen` the mutant and instantiate the generated
            class on meta); "checkpoint" (`specc export <spec> --checkpoint <checkpoint>`).

    Returns (exit code or None if killed, output, unexpected exception, CPU seconds)."""
    read_end, write_end = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(path, memory_bytes, time_limit, read_end, write_end, mode, checkpoint)   # never returns
    os.close(write_end)
    chunks, deadline = [], start + 10 * (time_limit + 1)
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.perf_counter()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(pipe.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    _, _, usage = os.wait4(pid, 0)
    seconds = usage.ru_utime + usage.ru_stime
    try:
        payload = json.loads(b"".join(chunks).decode())
    except ValueError:
        return None, "", None, seconds
    return payload["code"], payload["output"], payload["exception"], seconds


def _child(path: Path, memory_bytes: int, time_limit: float, read_end: int, write_end: int, mode: str,
           checkpoint: Path | None) -> None:
    """The forked checker: runs the check, writes one JSON object to the pipe and exits, whatever happens
    (even a MemoryError while reporting must not let it return into the fuzzer's loop)."""
    try:
        os.close(read_end)
        payload = {"code": -1, "output": "", "exception": None}
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
            used = resource.getrusage(resource.RUSAGE_SELF)     # the fork inherits the parent's CPU time
            cpu = int(used.ru_utime + used.ru_stime + time_limit) + 2
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            payload = _run_in_child(path, mode, checkpoint)
        except BaseException as error:  # noqa: BLE001 - the child reports whatever happened
            payload["exception"] = repr(error)[:2000]
        os.write(write_end, json.dumps(payload).encode())
    finally:
        os._exit(0)


def _run_in_child(path: Path, mode: str, checkpoint: Path | None) -> dict:
    from typer.testing import CliRunner

    from specc.cli import app

    def invoke(arguments: list[str]) -> tuple[int, str, str | None]:
        result = CliRunner().invoke(app, arguments)
        unexpected = result.exception if not isinstance(result.exception, SystemExit) else None
        return result.exit_code, result.output[:20000], repr(unexpected)[:2000] if unexpected else None

    if mode == "checkpoint":
        code, output, exception = invoke(["export", str(path), "--checkpoint", str(checkpoint), "-o",
                                          str(path.with_suffix(".safetensors")), "--no-check"])
        return {"code": code, "output": output, "exception": exception}
    code, output, exception = invoke(["check", str(path)])
    if mode == "codegen" and exception is None:
        generated = path.with_suffix(".py")
        codegen_code, codegen_output, exception = invoke(["codegen", str(path), "-o", str(generated)])
        output += codegen_output
        if codegen_code not in (0, 2):
            code = codegen_code
        if codegen_code == 0 and exception is None:
            exception = _instantiate(generated)
    return {"code": code, "output": output, "exception": exception}


def _instantiate(generated: Path) -> str | None:
    """Import the generated file and build its model class on meta: a payload would run here."""
    import ast
    import importlib.util

    import torch

    ast.parse(generated.read_text(encoding="utf-8"))
    module_spec = importlib.util.spec_from_file_location(f"fuzz_generated_{os.getpid()}", generated)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    classes = [value for value in vars(module).values() if isinstance(value, type)
               and issubclass(value, torch.nn.Module) and value.__module__ == module.__name__]
    with torch.device("meta"):
        classes[-1]()
    return None


def warm_up() -> int:
    """Import everything a check needs once, in the parent; returns its address-space size in bytes."""
    from typer.testing import CliRunner

    from specc.cli import app

    CliRunner().invoke(app, ["check", str(ROOT / "specs" / "mlp.yaml")])
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def run(n: int, seed: int, time_limit: float = 5.0, memory: int = 1 << 30, keep: Path | None = None,
        specs: list[Path] | None = None, progress: Callable[[str], None] = lambda line: None,
        verbose: bool = False) -> dict:
    """Check `n` seeded mutants of `specs` (default: every spec in specs/); the figures as a dict."""
    specs = specs or SPECS
    baseline = warm_up()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="specc-fuzz-") as folder:
        canary = Path(folder) / CANARY_NAME
        for index in range(n):
            rng = random.Random(f"{seed}:{index}")
            spec = specs[index % len(specs)]
            checkpoint = Path(folder) / f"hostile.{index}.pt"
            if index % 25 == 24:    # a hostile checkpoint, read by `specc export` of the smallest spec
                spec = ROOT / "specs" / "mlp.yaml"
                data, mutations = spec.read_bytes(), [fuzz_cases.hostile_checkpoint(rng, checkpoint)]
            else:
                data, mutations = mutate(rng, spec, canary)
            path = Path(folder) / f"{spec.stem}.{index}.yaml"
            path.write_bytes(data)
            mode = "checkpoint" if checkpoint.exists() else \
                "codegen" if any(m.startswith("inject") for m in mutations) else "check"
            start = time.perf_counter()
            code, output, exception, seconds = check_in_child(path, time_limit, baseline + memory, mode, checkpoint)
            wall = time.perf_counter() - start
            judge = checkpoint_verdict if mode == "checkpoint" else verdict
            failure = judge(checkpoint if mode == "checkpoint" else path, code, output, exception, seconds,
                            time_limit, canary)
            outcomes.append(Outcome(index, spec.name, mutations, code, round(seconds, 3), failure,
                                    output[-1500:] if failure else "", round(wall, 3)))
            if verbose or failure:
                progress(f"{'FAIL' if failure else 'ok'} #{index} {spec.name} {mutations} {seconds:.2f} s: {failure or code}")
                if keep is not None:
                    keep.mkdir(parents=True, exist_ok=True)
                    (keep / path.name).write_bytes(data)
                canary.unlink(missing_ok=True)
            for leftover in (path, checkpoint, path.with_suffix(".py"), path.with_suffix(".safetensors")):
                leftover.unlink(missing_ok=True)
    return summarize(outcomes, seed, time_limit, memory, baseline)


def summarize(outcomes: list[Outcome], seed: int, time_limit: float, memory: int, baseline: int) -> dict:
    codes = collections.Counter("killed" if o.code is None else str(o.code) for o in outcomes)
    slowest = max(outcomes, key=lambda o: o.seconds) if outcomes else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seed": seed, "mutants": len(outcomes), "specs": len({o.spec for o in outcomes}),
        "time_limit_s": time_limit, "memory_limit_bytes": memory, "checker_address_space_bytes": baseline,
        "exit_codes": dict(sorted(codes.items())),
        "max_seconds": slowest.seconds if slowest else 0.0,
        "slowest": f"#{slowest.index} {slowest.spec} {slowest.mutations}" if slowest else None,
        "mean_seconds": round(sum(o.seconds for o in outcomes) / max(1, len(outcomes)), 3),
        "max_wall_seconds": max((o.wall_seconds for o in outcomes), default=0.0),
        "mutations": dict(collections.Counter(m.split("(")[0] for o in outcomes for m in o.mutations).most_common()),
        "failures": [asdict(o) for o in outcomes if o.failure],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="mutants to check (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed; mutant i of a seed is always the same")
    parser.add_argument("--seconds", type=float, default=5.0, help="CPU-time limit per check (default 5)")
    parser.add_argument("--memory", type=float, default=1.0, help="GB of address space a check may add (default 1)")
    parser.add_argument("--keep", type=Path, help="write failing mutants to this folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--verbose", action="store_true", help="one line per mutant")
    args = parser.parse_args(argv)
    figures = run(args.n, args.seed, args.seconds, int(args.memory * (1 << 30)), args.keep,
                  progress=lambda line: print(line, file=sys.stderr, flush=True), verbose=args.verbose)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{figures['mutants']} mutants of {figures['specs']} specs, seed {figures['seed']}, {figures['date']}")
        print(f"exit codes: {figures['exit_codes']}")
        print(f"CPU time: max {figures['max_seconds']:.2f} s ({figures['slowest']}), mean {figures['mean_seconds']:.2f} s; "
              f"wall: max {figures['max_wall_seconds']:.2f} s")
        print(f"failures: {len(figures['failures'])}")
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
