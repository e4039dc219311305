"""YAML loading that remembers where every key and value was written.

PyYAML's composer keeps a start mark on each node; we build plain Python data from the node tree
and a `SourceMap` from data paths (("layers", 2, "Conv2d", "out_channels")) to file positions,
so validation can point at the exact key a user must fix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from specc.lang.errors import Location, Problem, SpecError
from specc.lang.limits import limit, raise_hint

DataPath = tuple  # keys and list indices from the document root


# Tags a spec may carry (implicitly, or written as `!!int` & co): plain values, lists and mappings.
_PLAIN_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map",
                                                          "timestamp", "merge")}
_MAX_INT_BITS = 1024  # as in expressions: ~308 digits


class SpecLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`; people write `1e-3`),
    and refuses to compose lists/mappings nested past the `MAX_NESTING` limit (PyYAML's composer
    recurses, so a 1,000-deep document would otherwise end in a RecursionError)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.nesting = 0
        self.max_nesting = limit("MAX_NESTING")
        self.composed = 0     # nodes as written (an alias counts once): PyYAML reads ~20,000 a second
        self.max_nodes = limit("MAX_YAML_NODES")
        self.open_anchors: set[str] = set()   # anchors of the lists/mappings being composed

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self.open_anchors:
            raise _Recursive(event.start_mark)   # `- &x [*x]`: the node would hold itself
        anchor = getattr(event, "anchor", None) if isinstance(event, yaml.CollectionStartEvent) else None
        if anchor is not None:
            self.open_anchors.add(anchor)
        try:
            return self._compose_counted(parent, index)
        finally:
            self.open_anchors.discard(anchor)

    def _compose_counted(self, parent, index):
        self.nesting += 1
        self.composed += 1
        try:
            if self.nesting > self.max_nesting:
                raise _TooDeep(self.peek_event().start_mark)
            if self.composed > self.max_nodes:
                raise _TooMany(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.nesting -= 1


class _TooDeep(Exception):
    def __init__(self, mark):
        super().__init__("nesting too deep")
        self.mark = mark


class _TooMany(_TooDeep):
    pass


class _Recursive(_TooDeep):
    pass


def _recursive_alias(location: Location) -> Problem:
    return Problem("recursive alias: this alias (*name) names a list or mapping that holds it, so expanding it "
                   "would never end", location, "LIMIT_EXCEEDED")


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class SourceMap:
    """Positions of keys and values in one YAML document."""

    def __init__(self, file: str):
        self.file = file
        self.values: dict[DataPath, Location] = {}
        self.keys: dict[DataPath, Location] = {}

    def locate(self, path: DataPath) -> Location:
        """The most precise known position for `path`: the key itself, else its value, else a parent."""
        path = tuple(path)
        while path:
            if path in self.keys:
                return self.keys[path]
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), Location(self.file, 1, 1))

    def _mark(self, node: yaml.Node) -> Location:
        return self._mark_at(node.start_mark)

    def _mark_at(self, mark) -> Location:
        return Location(self.file, mark.line + 1, mark.column + 1)


def _too_deep_to_read(file: str) -> Problem:
    return Problem(f"lists and mappings nest too deeply to be read (SPECC_MAX_NESTING={limit('MAX_NESTING')} is "
                   f"past what the YAML reader can follow; keep it at 300 or less)", Location(file, 1, 1),
                   "LIMIT_EXCEEDED")


def load_yaml(text: str, file: str = "<spec>") -> tuple[Any, SourceMap]:
    """Parse YAML text into plain data plus the positions of everything in it."""
    source = SourceMap(file)
    if len(text) > limit("MAX_SPEC_BYTES"):   # reading costs ~1 s per MB before any other bound applies
        raise SpecError(Problem(f"the spec is {len(text):,} characters long, more than {limit('MAX_SPEC_BYTES'):,} "
                                f"({raise_hint('MAX_SPEC_BYTES')})", Location(file, 1, 1), "LIMIT_EXCEEDED"))
    loader = None
    try:
        loader = SpecLoader(text)
        root = loader.get_single_node()
    except yaml.YAMLError as error:
        raise SpecError(_yaml_problem(error, file, text)) from None
    except _Recursive as error:
        raise SpecError(_recursive_alias(source._mark_at(error.mark))) from None
    except _TooMany as error:
        raise SpecError(Problem(f"the YAML holds more than {limit('MAX_YAML_NODES'):,} values "
                                f"({raise_hint('MAX_YAML_NODES')})", source._mark_at(error.mark), "LIMIT_EXCEEDED")) from None
    except _TooDeep as error:
        raise SpecError(Problem(f"lists and mappings nest deeper than {limit('MAX_NESTING')} levels "
                                f"({raise_hint('MAX_NESTING')})", source._mark_at(error.mark), "LIMIT_EXCEEDED")) from None
    except RecursionError:  # SPECC_MAX_NESTING raised past what PyYAML's recursive composer can read
        raise SpecError(_too_deep_to_read(file)) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        return None, source
    _check_expanded_size(root, source)
    problems: list[Problem] = []
    try:
        data = _construct(loader, root, (), source, problems)
    except RecursionError:
        raise SpecError(_too_deep_to_read(file)) from None
    if problems:
        raise SpecError(problems)
    return data, source


@dataclass(frozen=True)
class SpecText:
    """A spec's YAML text as already read from `file`: loading it reads nothing again, so what is
    loaded is exactly what the reader saw (build/plan_cache.py keys its plans on that text)."""

    text: str
    file: str


def read_spec_text(path_or_text: str | Path | SpecText) -> tuple[str, str]:
    """Return (text, file name) for a path, for YAML text given directly, or for a `SpecText`."""
    if isinstance(path_or_text, SpecText):
        return path_or_text.text, path_or_text.file
    if isinstance(path_or_text, Path) or ("\n" not in str(path_or_text) and str(path_or_text).endswith((".yaml", ".yml"))):
        path = Path(path_or_text)
        if not path.is_file():
            raise SpecError(Problem(f"spec file not found: {path}", code="FILE_NOT_FOUND"))
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as error:
            raise SpecError(Problem(f"the spec is not UTF-8 text (byte {error.start})",
                                    Location(str(path), 1, 1), "YAML_SYNTAX")) from None
        except OSError as error:
            raise SpecError(Problem(f"cannot read the spec: {error.strerror or error}",
                                    Location(str(path), 1, 1), "FILE_NOT_FOUND")) from None
    return str(path_or_text), "<spec>"


def _construct(loader, node: yaml.Node, path: DataPath, source: SourceMap, problems: list) -> Any:
    source.values[path] = source._mark(node)
    if node.tag not in _PLAIN_TAGS:
        problems.append(Problem(f"YAML tag '{_short_tag(node.tag)}' is not allowed in a spec: only plain values, "
                                "lists and mappings", source._mark(node), "YAML_TAG"))
        return None
    if isinstance(node, yaml.MappingNode):
        return _construct_mapping(loader, node, path, source, problems)
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, child, path + (index,), source, problems) for index, child in enumerate(node.value)]
    return _construct_scalar(loader, node, source, problems)


def _construct_mapping(loader, node: yaml.MappingNode, path: DataPath, source: SourceMap, problems: list) -> dict:
    try:
        loader.flatten_mapping(node)
    except yaml.YAMLError as error:  # `<<:` merging something that is not a mapping
        problems.append(_yaml_problem(error, source.file))
        return {}
    result: dict = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _PLAIN_TAGS:
            problems.append(Problem("a key must be a plain value (no list, mapping or tag)", source._mark(key_node),
                                    "YAML_TAG" if isinstance(key_node, yaml.ScalarNode) else "TYPE_ERROR"))
            continue
        key = _construct_scalar(loader, key_node, source, problems)
        if key in result:
            problems.append(Problem(f"duplicate key '{key}'", source._mark(key_node), "DUPLICATE_NAME"))
            continue
        source.keys[path + (key,)] = source._mark(key_node)
        result[key] = _construct(loader, value_node, path + (key,), source, problems)
    return result


def _construct_scalar(loader, node: yaml.ScalarNode, source: SourceMap, problems: list) -> Any:
    try:
        value = loader.construct_object(node, deep=True)
    except ValueError:  # an int past Python's 4,300 digits
        problems.append(Problem(f"integer {node.value[:20]}… is too large (more than {_MAX_INT_BITS} bits, ~308 digits)",
                                source._mark(node), "LIMIT_EXCEEDED"))
        return None
    except yaml.YAMLError as error:
        problems.append(Problem(f"cannot read '{node.value[:40]}': {getattr(error, 'problem', None) or error}",
                                source._mark(node), "TYPE_ERROR"))
        return None
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        problems.append(Problem(f"integer {node.value[:20]}… is too large (more than {_MAX_INT_BITS} bits, ~308 digits)",
                                source._mark(node), "LIMIT_EXCEEDED"))
        return None
    return value


def _check_expanded_size(root: yaml.Node, source: SourceMap) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_NODES values (a "billion laughs" bomb),
    or that holds itself (`- &x [*x]`, `&d {<<: *d}`: expanding it never ends), before building
    anything: sizes are counted per distinct node, so the count itself is cheap."""
    maximum = limit("MAX_YAML_NODES")
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()   # nodes whose children are still being counted: meeting one again is a cycle
    stack = [(root, False)]
    while stack:  # iterative post-order walk; an alias is the same node object met again
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            open_nodes.add(id(node))
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes:
                    raise SpecError(_recursive_alias(source._mark(node)))
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        open_nodes.discard(id(node))
        size = 1 + sum(sizes.get(id(child), 0) for child in children)
        sizes[id(node)] = size
        if size > maximum:
            raise SpecError(Problem(f"the YAML expands to more than {maximum:,} values once its aliases (*name) are "
                                    f"repeated ({raise_hint('MAX_YAML_NODES')})", source._mark(node), "LIMIT_EXCEEDED"))


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _short_tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")[:80]


def _yaml_problem(error: yaml.YAMLError, file: str, text: str = "") -> Problem:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    location = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
    if isinstance(error, yaml.reader.ReaderError):  # a NUL or other control character: only a position
        before = text[:error.position]
        location = Location(file, before.count("\n") + 1, error.position - (before.rfind("\n") + 1) + 1)
        code = error.character if isinstance(error.character, int) else ord(error.character[:1] or " ")
        return Problem(f"YAML syntax error: character {code:#06x} is not allowed in YAML", location, "YAML_SYNTAX")
    reason = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    if mark is not None and (reason == "mapping values are not allowed here" or "<block mapping start>" in reason):
        bare = _bare_item_above(text, mark.line, file)
        if bare is not None:
            return bare
    message = f"YAML syntax error: {reason}" + (f" ({context})" if context else "")
    return Problem(message, location, "YAML_SYNTAX")


_BARE_ITEM = re.compile(r"^(\s*-\s+)([A-Za-z_$][\w.$]*)\s*(#.*)?$")
_KEY_LINE = re.compile(r"^\s*([A-Za-z_][\w]*)\s*:")


def _bare_item_above(text: str, line: int, file: str) -> Problem | None:
    """`- ReLU` with `name: act` on the next line: YAML reads "ReLU name" as one string, then fails
    at the colon. Point at the bare item and say how to write it."""
    lines = text.splitlines()
    key = _KEY_LINE.match(lines[line]) if line < len(lines) else None
    above = next((index for index in range(line - 1, -1, -1)
                  if lines[index].strip() and not lines[index].lstrip().startswith("#")), None)
    bare = _BARE_ITEM.match(lines[above]) if above is not None and key else None
    if bare is None:
        return None
    name, meta = bare.group(2), key.group(1)
    return Problem(f"YAML syntax error: the bare item `- {name}` cannot take `{meta}:` on the next line; "
                   f"write `- {name}:` (or `- {name}: {{}}`) and put `{meta}:` under it",
                   Location(file, above + 1, bare.end(1) + 1), "YAML_SYNTAX")
