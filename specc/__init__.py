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
    "load": "specc.lang.spec",
    "Spec": "specc.lang.spec",
    "SpecError": "specc.lang.errors",
    "Problem": "specc.lang.errors",
    "json_schema": "specc.build.schema",
    "compile": "specc.build.compiler",
    "Compiled": "specc.build.compiled",
    "evaluate": "specc.train.evaluation",
    "predict": "specc.train.evaluation",
    "generate": "specc.train.generation",
    "codegen": "specc.export.eject",
    "from_module": "specc.export.importer",
}
# stage packages that are also functions (specc._callable): `specc.summary(...)`, `specc.build(...)`,
# and the module defining each function (`build` compiles, then loads weights: the weights stage)
STAGE_FUNCTIONS = {
    "build": "specc.weights.building",
    "summary": "specc.summary.summarize",
    "draw": "specc.draw.drawing",
    "train": "specc.train.launch",
    "export": "specc.export.exporter",
}
_CALLABLE_PACKAGES = tuple(STAGE_FUNCTIONS)

__all__ = [*_EXPORTS, *_CALLABLE_PACKAGES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_PACKAGES:
        return importlib.import_module(f"specc.{name}")  # importing sets globals()[name]
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'specc' has no attribute '{name}'")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
