"""The spec schema (pydantic v2) and `load()`: YAML text -> validated `Spec`.

Layer items stay free-form here (a layer's kwargs are checked against its real signature by the
compiler); everything else — inputs, vars, blocks, outputs, tie, init, train, expect — is typed.
"""
from __future__ import annotations

import keyword
import os
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from specc.lang.errors import Problem, SpecError, did_you_mean
from specc.lang.safety import safe_mode_problems, safe_scope
from specc.lang.source import SourceMap, load_yaml, read_spec_text
from specc.lang.tokenizer_vars import with_stand_in
from specc.lang.train_config import TrainConfig

DTYPES = ("float32", "float64", "float16", "bfloat16", "long", "int64", "int32", "bool")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VARIANT = "variant"   # the reserved override key choosing one of `variants:` (build(..., variant="large"))


def is_name(text: Any) -> bool:
    """A name that can become Python code (forward's arguments, submodule attributes): an identifier
    and no keyword — a branch named `as` made the generated forward a SyntaxError."""
    return isinstance(text, str) and bool(IDENTIFIER.match(text)) and not keyword.iskeyword(text)


def _names_only(value: dict, what: str = "") -> dict:
    """`value`, whose keys must all be names (`is_name`).

    Raises:
        ValueError: the first key that is not, called `what` (`block arg 'x' ...`).
    """
    for key in value:
        if not is_name(str(key)):
            raise ValueError(f"{what}'{key}' is not a valid name (letters, digits and _; not starting with a digit; "
                             f"no Python keyword)")
    return value


def is_path(text: Any) -> bool:
    """A module path an item may be named with: names or numbers joined by dots (`head`, `resnets.0`,
    `attention.self.query`), so a spec can hold a layer wherever a library's state_dict has it."""
    return isinstance(text, str) and all(part.isdigit() and part.isascii() or is_name(part)
                                         for part in text.split("."))

Item = Union[str, dict[str, Any]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """A named model input; `shape` leaves out the batch dim; a string entry names a var (symbolic dim)."""

    shape: list[Union[int, str]] = Field(description="shape without the batch dim, e.g. [3, 32, 32]")
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]


class BlockSpec(_Strict):
    """A reusable, parameterised sub-graph; `args` with value null are required."""

    args: dict[str, Any] = Field(default_factory=dict)
    layers: list[Item] = Field(min_length=1)

    @field_validator("args")
    @classmethod
    def _args_are_names(cls, value: dict) -> dict:
        # an arg becomes a constructor parameter in the code `specc codegen` writes
        return _names_only(value, "block arg ")


class ExpectSpec(_Strict):
    """Checks verified whenever the spec compiles."""

    params: int | None = None
    trainable_params: int | None = None
    output_shape: Union[list[int], list[list[int]], None] = None
    flops: float | None = None


class Spec(_Strict):
    """A validated model spec. `source` maps data paths back to file:line:column."""

    name: str | None = None
    inputs: dict[str, InputSpec] = Field(min_length=1)
    vars: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    blocks: dict[str, BlockSpec] = Field(default_factory=dict)
    imports: list[str] = Field(default_factory=list)
    layers: list[Item] = Field(min_length=1)
    outputs: Union[str, list[str], None] = None
    tie: dict[str, str] = Field(default_factory=dict)
    init: dict[str, Union[str, dict[str, Any]]] = Field(default_factory=dict)
    expect: ExpectSpec | None = None
    train: TrainConfig | None = None

    _source: SourceMap | None = PrivateAttr(default=None)
    _raw: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _tokenizer_stand_in(cls, data: Any) -> Any:
        # `$tokenizer.vocab_size` vars: a stand-in until a run sets the real size (lang/tokenizer_vars.py)
        return with_stand_in(data)

    @field_validator("inputs", "vars", "blocks", "variants")
    @classmethod
    def _names_are_identifiers(cls, value: dict) -> dict:
        return _names_only(value)

    @field_validator("name")
    @classmethod
    def _name_is_an_identifier(cls, value: str | None) -> str | None:
        # the name becomes the run folder (runs/<name>/) and the class name: no `/`, `..` or spaces
        if value is not None and not IDENTIFIER.match(value):
            raise ValueError("the name must be an identifier (letters, digits and _; not starting with a digit), "
                             "like an item's name")
        return value

    @field_validator("vars")
    @classmethod
    def _variant_is_reserved(cls, value: dict) -> dict:
        if VARIANT in value:
            raise ValueError(f"'{VARIANT}' is reserved (it chooses one of `variants:`); rename the var")
        return value

    @property
    def source(self) -> SourceMap:
        return self._source or SourceMap("<spec>")

    @property
    def file(self) -> str:
        return self.source.file

    @property
    def raw(self) -> dict:
        """The spec as plain data (after overrides), e.g. to store in checkpoints."""
        return self._raw

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.file == "<spec>":
            return "model"
        # a file name that is not UTF-8 (bytes kept as surrogates) is shown with \x escapes
        return os.fsencode(Path(self.file).stem).decode("utf-8", "backslashreplace")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self._raw, sort_keys=False)


def load(path_or_text: str | Path | dict | Spec, overrides: dict[str, Any] | None = None, *,
         safe: bool | None = None) -> Spec:
    """Read and validate a spec.

    Args:
        path_or_text: a path to a YAML file, YAML text, an already parsed dict, or a `Spec`.
        overrides: `{"width": 128}` sets a var; a dotted key (`"train.epochs"`) sets any spec key;
            `{"variant": "large"}` first applies the spec's variant `large` (the other overrides after it).
        safe: True refuses `imports:`, `train.data.dataset:` and `train.compile` options (SAFE_MODE), for
            specs from strangers; default: safe when SPECC_SAFE=1 (`specc --safe`).

    Returns:
        The validated `Spec`.

    Raises:
        SpecError: with every problem found, each located at file:line:column.
    """
    with safe_scope(safe):
        return _load(path_or_text, overrides)


def _load(path_or_text: str | Path | dict | Spec, overrides: dict[str, Any] | None) -> Spec:
    if isinstance(path_or_text, Spec):
        if not overrides:
            _refuse_in_safe_mode(path_or_text.raw, path_or_text.source)
            return path_or_text
        data, source = _copy(path_or_text.raw), path_or_text.source
    elif isinstance(path_or_text, dict):
        data, source = _copy(path_or_text), SourceMap("<spec>")
    else:
        text, file = read_spec_text(path_or_text)
        data, source = load_yaml(text, file)
    if not isinstance(data, dict):
        raise SpecError(Problem("a spec must be a YAML mapping with at least `inputs:` and `layers:`",
                                source.locate(()), "TYPE_ERROR"))
    overrides = dict(overrides or {})
    variant = overrides.pop(VARIANT, None)
    check_variants(data, source)
    if variant is not None:
        apply_variant(data, variant, source)
    apply_overrides(data, overrides, source)
    _refuse_lone_surrogates(data, source)
    _refuse_in_safe_mode(data, source)
    return validate(data, source)


def _refuse_lone_surrogates(data: Any, source: SourceMap) -> None:
    """A YAML escape like "\\ud800" gives a string no UTF-8 file, terminal or validator can hold:
    refused at its line (an iterative walk: the YAML's nesting is bounded, not small)."""
    pending: list[tuple[tuple, Any]] = [((), data)]
    while pending:
        path, value = pending.pop()
        entries = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in entries:
            for text in (key, item):
                if isinstance(text, str) and not _encodable(text):
                    raise SpecError(Problem(f"'{text.encode('utf-8', 'backslashreplace').decode()}' holds a lone "
                                            f"surrogate (an unpaired \\ud800-\\udfff escape), which is not text",
                                            source.locate((*path, key)), "TYPE_ERROR"))
            pending.append(((*path, key), item))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_in_safe_mode(data: dict, source: SourceMap) -> None:
    problems = safe_mode_problems(data, source.locate)
    if problems:
        raise SpecError(problems)


# Top-level keys the model itself is built without. A mistake in one of them must not hide the
# mistakes of the model (the compiler checks the spec without them too: build.compiler.load_model_spec),
# and a `train:` mistake does not stop `summary` or `draw`.
MODEL_KEYS = ("inputs", "vars", "blocks", "imports", "layers")


def validate(data: dict, source: SourceMap) -> Spec:
    """Validate parsed data against the schema; pydantic errors become located problems.

    Raises:
        SpecError: every schema problem. When they all lie outside MODEL_KEYS, the error's `partial`
            is the spec without the failing sections and `failed_sections` names them.
    """
    try:
        spec = Spec.model_validate(data)
    except ValidationError as error:
        spec_error = SpecError(sorted(_problems_from(error, source), key=_position))
        spec_error.failed_sections = {str(entry["loc"][0]) for entry in error.errors() if entry["loc"]}
        spec_error.partial = _partial(data, spec_error.failed_sections, source)
        raise spec_error from None
    spec._source = source
    spec._raw = data
    return spec


def _partial(data: dict, failed: set[str], source: SourceMap) -> Spec | None:
    if not failed or failed & set(MODEL_KEYS):
        return None
    kept = {key: value for key, value in data.items() if key not in failed}
    try:
        spec = Spec.model_validate(kept)
    except ValidationError:
        return None
    spec._source, spec._raw = source, kept
    return spec


def apply_overrides(data: dict, overrides: dict[str, Any], source: SourceMap) -> None:
    """Set vars (`width=128`), top-level keys (`name=run2`, `train={...}`) or dotted spec keys
    (`train.epochs=5`, `vars.extra=3`) in place.

    A bare name is a var the spec declares or uses (`$name`, or a name inside `$(...)`), else a
    top-level key; anything else is refused (a typo must not be ignored), listing the vars.

    Raises:
        SpecError: UNKNOWN_VAR / UNKNOWN_KEY for a name the spec has no place for.
    """
    for key, value in overrides.items():
        key = str(key)
        known = data.get("vars") if isinstance(data.get("vars"), dict) else {}
        if "." not in key and (key in known or key in _used_names(data)):
            data["vars"] = {**known, key: value}
        elif "." not in key and key in Spec.model_fields:
            data[key] = value
        elif "." not in key:
            raise SpecError(_unknown_override(key, known, source))
        else:
            _set_dotted(data, key, value, source)


def _used_names(data: Any) -> set[str]:
    """Every name a `$...` string of the spec could refer to: a var may be used without being
    declared, then it must be given (`specc.build(spec, causal=True)`)."""
    names: set[str] = set()
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and "$" in value:
            names.update(_WORD.findall(value))
    return names


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _unknown_override(key: str, known: dict, source: SourceMap) -> Problem:
    variables = ", ".join(map(str, known)) or "none"
    return Problem(f"--set {key}: no var named '{key}' (the spec's vars: {variables}; a spec key is set by its "
                   f"path, e.g. train.epochs=5)", source.locate(("vars",)), "UNKNOWN_VAR",
                   did_you_mean(key, [*map(str, known), *Spec.model_fields]))


def _set_dotted(data: dict, key: str, value: Any, source: SourceMap) -> None:
    *parents, last = key.split(".")
    if parents[0] not in Spec.model_fields:
        raise SpecError(Problem(f"--set {key}: a spec has no key '{parents[0]}' (its keys: "
                                f"{', '.join(Spec.model_fields)})", None, "UNKNOWN_KEY",
                                did_you_mean(parents[0], list(Spec.model_fields))))
    target = data
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise SpecError(Problem(f"--set {key}: '{part}' is not a mapping", None, "TYPE_ERROR"))
    target[last] = value


def check_variants(data: dict, source: SourceMap) -> None:
    """Every variant is a mapping of overrides whose keys exist: a var of `vars:` or a dotted key
    of a top-level section (`expect.params`). Checked whether or not the variant is chosen."""
    variants = data.get("variants")
    if variants is None:
        return
    if not isinstance(variants, dict):
        raise SpecError(Problem("variants must be a mapping like {small: {width: 32}, large: {width: 128}}",
                                source.locate(("variants",)), "TYPE_ERROR"))
    known_vars = data.get("vars") if isinstance(data.get("vars"), dict) else {}   # a bad `vars:` is pydantic's to report
    problems = []
    for name, overrides in variants.items():
        if not isinstance(overrides, dict):
            problems.append(Problem(f"variant '{name}' must be a mapping of var overrides like {{width: 32}}",
                                    source.locate(("variants", name)), "TYPE_ERROR"))
            continue
        for key in overrides:
            head = str(key).split(".", 1)[0]
            if "." in str(key) and head not in Spec.model_fields:
                problems.append(Problem(f"variant '{name}': '{key}' sets no spec key", source.locate(("variants", name, key)),
                                        "UNKNOWN_KEY", did_you_mean(head, Spec.model_fields)))
            elif "." not in str(key) and key not in known_vars:
                problems.append(Problem(f"variant '{name}': no var named '{key}' (a variant overrides `vars:`)",
                                        source.locate(("variants", name, key)), "UNKNOWN_VAR", did_you_mean(str(key), known_vars)))
    if problems:
        raise SpecError(problems)


def apply_variant(data: dict, name: Any, source: SourceMap) -> None:
    """Apply variant `name`'s overrides in place; later errors about a var it sets point at the variant."""
    variants = data.get("variants") or {}
    if name not in variants:
        listed = ", ".join(map(str, variants)) or "none"
        message = (f"no variant '{name}'; the spec's variants are: {listed}" if variants
                   else f"no variant '{name}': the spec has no `variants:`")
        raise SpecError(Problem(message, source.locate(("variants",)), "UNKNOWN_VARIANT",
                                did_you_mean(str(name), list(map(str, variants)))))
    for key, value in variants[name].items():
        path = ("vars", key) if "." not in key else tuple(key.split("."))
        source.keys[path] = source.locate(("variants", name, key))
    apply_overrides(data, _copy(variants[name]), source)


def parse_override(text: str) -> tuple[str, Any]:
    """`"width=128"` -> `("width", 128)`; the value is read as YAML, so numbers and lists keep their type."""
    if "=" not in text:
        raise SpecError(Problem(f"--set expects key=value, got '{text}'", None, "TYPE_ERROR"))
    key, value = text.split("=", 1)
    if key.strip() == VARIANT:
        raise SpecError(Problem(f"--set {VARIANT}=...: choose a variant with --variant {value.strip() or 'NAME'}",
                                None, "TYPE_ERROR"))
    if not value.strip():
        return key.strip(), ""
    try:  # the same loader as spec files: no tags, no alias bombs, bounded nesting
        parsed, _ = load_yaml(value, f"--set {key.strip()}")
    except SpecError as error:
        problem = error.first
        raise SpecError(Problem(f"--set {text[:80]}: the value is not valid YAML ({problem.message})", None,
                                problem.code)) from None
    return key.strip(), parsed


def _problems_from(error: ValidationError, source: SourceMap) -> list[Problem]:
    problems = []
    for entry in error.errors():
        path = tuple(part for part in entry["loc"] if not _is_union_tag(part))
        path += getattr((entry.get("ctx") or {}).get("error"), "subpath", ())   # call_args.ArgumentError
        kind = entry["type"]
        if kind == "extra_forbidden":
            model_fields = _fields_at(path[:-1])
            key = path[-1]
            problems.append(Problem(f"unknown key '{key}'", source.locate(path), "UNKNOWN_KEY",
                                    did_you_mean(str(key), model_fields)))
        elif kind == "missing":
            problems.append(Problem(f"missing required key '{path[-1]}'", source.locate(path[:-1]), "MISSING_KEY"))
        else:
            message = entry["msg"].removeprefix("Value error, ")
            where = ".".join(str(part) for part in path)
            given = entry.get("input")
            shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {_shorten(repr(given))})"
            problems.append(Problem(f"{where}: {message}{shown}", source.locate(path), "TYPE_ERROR"))
    return problems


def _shorten(text: str, length: int = 80) -> str:
    """A value echoed in a message: a 10,000-character expression is shown by its start."""
    return text if len(text) <= length else f"{text[:length]}… ({len(text):,} characters)"


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the tried member type (e.g. "str", "list[int]") into loc for unions
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "dict", "none"})


def _fields_at(path: tuple) -> list[str]:
    model: Any = Spec
    for part in path:
        if isinstance(part, int):  # an item of a list of models: the item's model, as for a trailing index
            continue
        field_info = getattr(model, "model_fields", {}).get(part)
        if field_info is None:
            break
        annotation = field_info.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        model = next((c for c in candidates if issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _position(problem: Problem) -> tuple:
    loc = problem.location
    return (loc.line, loc.column) if loc else (0, 0)


def _copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_copy(value) for value in data]
    return data
