"""specc: a declarative model-spec compiler and visualizer for PyTorch.

    import specc
    model = specc.build("specs/mnist_net.yaml")          # a plain nn.Module
    specc.summary("specs/mnist_net.yaml")                 # shapes, parameters, FLOPs, memory
    specc.draw("specs/parallel_cnn.yaml").render("cnn")   # graphviz diagram
    specc.train("specs/digits_cnn.yaml")                  # the embedded training loop

Heavy modules (torch, rich, graphviz) are imported on first use, so `import specc` and
`specc --help` stay fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it; resolved lazily by __getattr__
_EXPORTS = {
    "load": "specc.spec",
    "Spec": "specc.spec",
    "SpecError": "specc.errors",
    "Problem": "specc.errors",
    "compile": "specc.compiler",
    "build": "specc.compiler",
    "Compiled": "specc.compiler",
    "summary": "specc.summarize",
    "draw": "specc.drawing",
    "train": "specc.training",
    "evaluate": "specc.evaluation",
    "predict": "specc.evaluation",
    "export": "specc.exporter",
    "codegen": "specc.eject",
    "json_schema": "specc.schema",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'specc' has no attribute '{name}'")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
