"""The public `specc.build`: compile a spec, then load weights into it.

Compiling is the build stage's job (`specc.build.compiler.compile`); what comes after it (reading
weight files, pairing their tensors, rebuilding a model from a file written by `specc export`)
lives here, one stage up, so the build stage never imports the weights code.
`specc.build(...)` calls `build` below (the table in specc/__init__.py says so).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.build.compiler import compile
from specc.lang.spec import Spec
from specc.weights.check import check_outputs, require_close
from specc.lang.safety import stored_spec_scope
from specc.weights.loading import apply_weights, load_into, load_state, read_stored_spec

CHECK_TOLERANCE = 1e-4   # `build(..., check=...)`: the largest |difference| an output may show


def build(spec_or_path: str | Path | dict | Spec, *, device: str | torch.device = "cpu",
          dtype: torch.dtype | str | None = None, weights: Any = None, weights_map: Any = None,
          allow_missing: Any = (), safe: bool | None = None, check: str | Path | None = None,
          trust_code: bool | None = None, **variables: Any) -> nn.Module:
    """Compile a spec and return just the `nn.Module` (see `specc.build.compiler.compile` for the arguments).

    `spec_or_path` may also be a `.safetensors` file written by `specc export`: it carries its
    spec, so the trained model is rebuilt from the file alone; that spec is loaded in safe mode
    unless `trust_code=True` (see `build_from_safetensors`). `weights` loads a state_dict, a
    `.safetensors` file or a `specc train` checkpoint into the built model.

    With `weights_map` ("strict", "auto" or a mapping of rename rules), `weights` may be any
    PyTorch weight file (see `specc.weights.loading.load_into`); the load's `WeightsReport` is the
    module's `weights_report` attribute; with "auto" its summary (what was paired and why) is
    printed to stderr. `allow_missing` lists globs of tensors that may stay unmatched.

    `check` is an io file of inputs and expected outputs (`specc.weights.check`): every output of
    the loaded model must come within 1e-4 of it, else a CHECKPOINT_ERROR names each output that
    differs (the model is returned in eval mode). `safe=True` refuses `imports:`, `dataset:` and
    compile options (see `compile`).
    """
    if isinstance(spec_or_path, (str, Path)) and str(spec_or_path).endswith(".safetensors"):
        return build_from_safetensors(spec_or_path, device=device, dtype=dtype, safe=safe, trust_code=trust_code,
                                      **variables)
    compiled = compile(spec_or_path, device=device, dtype=dtype, symbolic=False, safe=safe, **variables)
    module = compiled.module
    if weights is not None and weights_map is None and not allow_missing:
        apply_weights(module, weights)
    elif weights is not None:
        order = [node.name for node in compiled.graph.nodes if node.op == "module" and not node.shared_with]
        module.weights_report = load_into(module, weights, weights_map or "strict", allow_missing, order)
        if weights_map == "auto":   # what auto paired and why, for the reader to check
            print(module.weights_report.summary(), file=sys.stderr)
    if check is not None:
        require_close(check_outputs(compiled, check), CHECK_TOLERANCE, str(check))
    return module


def build_from_safetensors(path: str | Path, *, device: str | torch.device = "cpu", dtype: Any = None,
                           safe: bool | None = None, trust_code: bool | None = None, **variables: Any) -> nn.Module:
    """Rebuild a trained model from a `.safetensors` file written by `specc export`.

    Args:
        path: the file; its metadata holds the resolved spec.
        device, dtype: as in `specc.build`.
        trust_code: the stored spec may import code (`imports:`); default False, so it is loaded in
            safe mode (SPECC_TRUST_CODE=1 or `--trust-code` also trust it).
        **variables: var overrides (they must leave the weights' shapes unchanged).

    Returns:
        The model with the file's weights, in eval mode.

    Raises:
        SpecError: unreadable file, or weights that do not fit the spec (CHECKPOINT_ERROR); a problem
            in the stored spec is located in it (`model.safetensors (stored spec):3:5`).
    """
    stored, input_shapes, state = read_stored_spec(path)
    with stored_spec_scope(trust_code):
        module = compile(stored, device=device, dtype=dtype, input_shapes=input_shapes, symbolic=False, safe=safe,
                         **variables).module
    load_state(module, state, path)
    return module.eval()
