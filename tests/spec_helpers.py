"""Small helpers several test files share: build a spec's model, collect its problems, say where a
problem is, and write a training spec and read its data."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from specc.build.compiler import compile as compile_spec
from specc.lang.errors import SpecError
from specc.train.prepare import build_model, load_train_spec, prepare_data


def build(text: str, **variables) -> nn.Module:
    return compile_spec(text, **variables).module


def problems(text: str) -> list:
    """The problems compiling `text` raises (it must raise)."""
    with pytest.raises(SpecError) as raised:
        compile_spec(text)
    return raised.value.problems


def where(problem) -> tuple[int, int, str]:
    return problem.location.line, problem.location.column, problem.code


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def prepared(path: Path):
    """The data of the training spec at `path`, as a run prepares them (splits, normalizer)."""
    spec = load_train_spec(path)
    return prepare_data(spec, build_model(spec, torch.device("cpu"), seed=0))
