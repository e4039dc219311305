"""YAML loading that remembers where every key and value was written.

PyYAML's composer keeps a start mark on each node; we build plain Python data from the node tree
and a `SourceMap` from data paths (("layers", 2, "Conv2d", "out_channels")) to file positions,
so validation can point at the exact key a user must fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import re

import yaml

from specc.lang.errors import Location, Problem, SpecError

DataPath = tuple  # keys and list indices from the document root


class SpecLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`; people write `1e-3`)."""


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
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)


def load_yaml(text: str, file: str = "<spec>") -> tuple[Any, SourceMap]:
    """Parse YAML text into plain data plus the positions of everything in it."""
    source = SourceMap(file)
    loader = SpecLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as error:
        raise SpecError(_yaml_problem(error, file)) from None
    finally:
        loader.dispose()
    if root is None:
        return None, source
    problems: list[Problem] = []
    data = _construct(loader, root, (), source, problems)
    if problems:
        raise SpecError(problems)
    return data, source


def read_spec_text(path_or_text: str | Path) -> tuple[str, str]:
    """Return (text, file name) for a path, or for YAML text given directly."""
    if isinstance(path_or_text, Path) or ("\n" not in str(path_or_text) and str(path_or_text).endswith((".yaml", ".yml"))):
        path = Path(path_or_text)
        if not path.is_file():
            raise SpecError(Problem(f"spec file not found: {path}", code="FILE_NOT_FOUND"))
        return path.read_text(encoding="utf-8"), str(path)
    return str(path_or_text), "<spec>"


def _construct(loader, node: yaml.Node, path: DataPath, source: SourceMap, problems: list) -> Any:
    source.values[path] = source._mark(node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in result:
                problems.append(Problem(f"duplicate key '{key}'", source._mark(key_node), "DUPLICATE_NAME"))
                continue
            source.keys[path + (key,)] = source._mark(key_node)
            result[key] = _construct(loader, value_node, path + (key,), source, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, child, path + (index,), source, problems) for index, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _yaml_problem(error: yaml.YAMLError, file: str) -> Problem:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    location = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
    reason = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    message = f"YAML syntax error: {reason}" + (f" ({context})" if context else "")
    return Problem(message, location, "YAML_SYNTAX")
