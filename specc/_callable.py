"""Stage packages that are also the public functions of the same name.

`specc.summary` is the summary stage's package *and* the function users call
(`specc.summary("spec.yaml")`). Python sets `specc.summary` to the package as soon as any of its
modules is imported, so the package itself must be callable: its module object gets a class whose
`__call__` forwards to the function, imported on first call so `import specc` stays light.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def make_callable(package_name: str) -> None:
    """Let the stage package `package_name` (`specc.summary`) be called as the public function of the
    same name, defined where `specc.STAGE_FUNCTIONS` says (and show its docstring).

    The table lives in the top package, above every stage: `specc.build(...)` compiles (build stage)
    and then loads weights (weights stage, one above), so its function cannot live in the build
    package without the build stage reaching up.
    """
    function_name = package_name.rpartition(".")[2]

    def function() -> Any:
        module_name = sys.modules["specc"].STAGE_FUNCTIONS[function_name]
        return getattr(importlib.import_module(module_name), function_name)

    class CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function()(*args, **kwargs)

        @property
        def __wrapped__(self) -> Any:  # inspect.signature / help() show the function's signature
            return function()

    CallablePackage.__name__ = f"{function_name}_package"
    sys.modules[package_name].__class__ = CallablePackage
