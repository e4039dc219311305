"""Stage 2, building: a `Spec` -> a plain `nn.Module`.

`registry` says what a spec can name (torch.nn by introspection, specc's `layers`, `functional`,
user imports) and `signatures` checks arguments against it; `expand` turns the spec into the
`graph` IR; `infer` dry-runs it on meta to fill in sizes (`symbolic` labels named dims);
`compiler` materialises the modules and writes the fx forward, returning a `compiled.Compiled`;
`expect` checks it. Weights are loaded one stage up (specc.weights).

`specc.build(...)` is also this package called as a function (see specc._callable): it compiles
here, then loads weights in specc.weights.building.
"""
import importlib
from pathlib import Path

from specc._callable import make_callable

make_callable(__name__)


def __getattr__(name: str):
    """`specc.build.plan_cache` & co work without importing the submodule first (as documented)."""
    if (Path(__file__).parent / f"{name}.py").is_file():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
