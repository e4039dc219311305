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


def make_callable(package_name: str, module_name: str, function_name: str) -> None:
    """Let `package_name(...)` call `module_name.function_name(...)` (and show its docstring)."""

    class CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(module_name), function_name)(*args, **kwargs)

        @property
        def __wrapped__(self) -> Any:  # inspect.signature / help() show the function's signature
            return getattr(importlib.import_module(module_name), function_name)

    CallablePackage.__name__ = f"{function_name}_package"
    sys.modules[package_name].__class__ = CallablePackage
