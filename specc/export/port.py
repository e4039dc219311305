"""`specc port`: another library's weights -> a spec's own `.safetensors` file, checked.

    specc port specs/gpt2_small.yaml --weights model.safetensors --map auto -o gpt2.safetensors \\
        --check io.safetensors

The weights are paired with the spec's tensors (`specc.weights.loading.load_into`), written with the
resolved spec in the metadata (so `specc.build("gpt2.safetensors")` rebuilds the model), and, with
`--check`, the model is run on the io file's inputs and every output compared with its expected one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from specc.build.compiled import Compiled
from specc.weights.check import OutputCheck, check_outputs
from specc.weights.report import WeightsReport
from specc.weights.loading import load_into, save_weights
from specc.lang.errors import Problem, SpecError

@dataclass
class PortResult:
    """What `port` did: the load report, the file written and, with a check, every output compared."""

    report: WeightsReport
    path: Path
    checks: list[OutputCheck] = field(default_factory=list)

    @property
    def max_difference(self) -> float | None:
        """The largest |difference| over every checked output (None without a check)."""
        return max(check.difference for check in self.checks) if self.checks else None


def port(spec_or_path: Any, weights: Any, output: str | Path, *, weights_map: Any = "auto",
         allow_missing: Any = (), check: str | Path | None = None, config: str | Path | None = None,
         **variables: Any) -> PortResult:
    """Load `weights` into the spec's model and write them as `output` (.safetensors).

    Args:
        spec_or_path: the spec.
        weights: the other library's weight file (any format `load_into` reads).
        output: the `.safetensors` file to write (atomically).
        weights_map, allow_missing: as for `specc.build`.
        check: a safetensors file of inputs and expected outputs (`specc.weights.check`): every
            output of the model is compared.
        config: a Hugging Face `config.json` (or its folder): the spec's vars it names are set
            from it (`specc.weights.hf_config`); `variables` still win.
        **variables: var overrides.

    Returns:
        A `PortResult`.

    Raises:
        SpecError: spec errors, unmatched weights (CHECKPOINT_ERROR), an unusable io file.
    """
    from specc.build.compiler import compile as compile_spec

    output = Path(output)
    if output.suffix != ".safetensors":
        raise SpecError(Problem(f"{output}: specc port writes a .safetensors file", None, "EXPORT_ERROR"))
    if config is not None:
        from specc.lang.spec import load
        from specc.weights.hf_config import config_vars

        variables = {**config_vars(config, set(load(spec_or_path).vars)), **variables}
    compiled = compile_spec(spec_or_path, symbolic=False, **variables)
    order = [node.name for node in compiled.graph.nodes if node.op == "module" and not node.shared_with]
    report = load_into(compiled.module, weights, weights_map, allow_missing, order)
    _write_atomically(compiled, output)
    result = PortResult(report, output)
    if check is not None:
        result.checks = check_outputs(compiled, check)
    return result


def _write_atomically(compiled: Compiled, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        save_weights(compiled, temporary)
        os.replace(temporary, output)
    finally:
        if temporary.exists():
            temporary.unlink()
