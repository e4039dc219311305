"""Quantized models on the model side: which layers a torchao method takes, applying it, and loading
a quantized checkpoint back (`evaluate` and `predict` use this; `specc quantize` measures it).

torchao's `quantize_` swaps the weights of `nn.Linear` layers for int8 (or int4) tensor subclasses
in place. Rebuilding the float model and quantizing it the same way gives the same tensor layout,
so a checkpoint's quantized tensors load into it with `assign=True`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.weights.checkpoint import import_torchao, load_model_state, torchao_quiet
from specc.lang.errors import Problem, SpecError, did_you_mean

METHODS = ("int8-dynamic", "int8-weight", "int4-weight")
QUANTIZED_LAYERS = (nn.Linear,)   # what torchao's int8/int4 configs rewrite
INT4_GROUP_SIZE = 128             # torchao's default group of int4 weights sharing a scale


def quantizable_layers(compiled, method: str) -> tuple[list[str], list[str]]:
    """(paths of the layers `method` quantizes, "path (Kind): why" of the layers with weights it leaves in float).

    Raises:
        SpecError: no layer of the model can be quantized by `method`.
    """
    quantized, kept = [], []
    for name, module in compiled.module.named_modules():
        kind = type(module).__name__
        if isinstance(module, QUANTIZED_LAYERS):
            reason = _int4_misfit(module) if method == "int4-weight" else None
            if reason:
                kept.append(f"{name} ({kind}): {reason}")
            else:
                quantized.append(name)
        elif any(parameter.dim() >= 2 for parameter in module.parameters(recurse=False)):
            kept.append(f"{name} ({kind}): torchao's {method} quantizes nn.Linear only")
    if not quantized:
        raise SpecError(Problem(f"{method} quantizes nn.Linear layers, and this model has none it can take; "
                                f"left in float: {'; '.join(kept) or 'every layer'}", None, "TYPE_ERROR"))
    return quantized, kept


def _int4_misfit(layer: nn.Linear) -> str | None:
    if layer.in_features % INT4_GROUP_SIZE:
        return f"int4 groups of {INT4_GROUP_SIZE} need in_features divisible by {INT4_GROUP_SIZE}, not {layer.in_features}"
    return None


def apply_quantization(module: nn.Module, method: str, layers: set[str]) -> None:
    """Quantize the named layers of `module` in place with torchao's config for `method`. A model
    trained with `qat: int8` is converted with the scheme its fake quantization imitated.

    Raises:
        SpecError: a method other than int8-dynamic on a model trained with `qat: int8`.
    """
    torchao = _import_torchao()
    if trained_with_qat(module):
        if method != "int8-dynamic":
            raise SpecError(Problem(f"this model was trained with qat: int8 (int8 weights and activations): quantize it "
                                    f"with int8-dynamic, the scheme it trained for, not {method}", None, "TYPE_ERROR"))
        from torchao.quantization.qat import QATConfig

        config = QATConfig(_qat_scheme(), step="convert")
    else:
        configs = {"int8-dynamic": torchao.quantization.Int8DynamicActivationInt8WeightConfig,
                   "int8-weight": torchao.quantization.Int8WeightOnlyConfig}
        config = configs[method]() if method in configs else \
            torchao.quantization.Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)
    with torchao_quiet():
        torchao.quantization.quantize_(module, config, filter_fn=lambda layer, name: name in layers)


def prepare_qat(module: nn.Module) -> list[str]:
    """`train.qat: int8`: swap every nn.Linear for torchao's fake-quantized twin (int8 activations per
    token, int8 weights per channel, rounded in the forward, straight-through in the backward). The
    parameters stay the same objects under the same names, so optimizers and checkpoints see no change.

    Returns:
        The paths of the layers now fake-quantized.

    Raises:
        SpecError: torchao missing, or no nn.Linear to train for int8.
    """
    _import_torchao()
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    layers = [name for name, layer in module.named_modules() if isinstance(layer, QUANTIZED_LAYERS)]
    if not layers:
        raise SpecError(Problem("qat: int8 fake-quantizes nn.Linear layers, and this model has none", None,
                                "TYPE_ERROR"))
    with torchao_quiet():
        quantize_(module, QATConfig(_qat_scheme(), step="prepare"))
    return layers


def trained_with_qat(module: nn.Module) -> bool:
    """Whether `prepare_qat` swapped layers of `module` (torchao's fake-quantized Linear is a Linear)."""
    return any(type(layer).__name__ == "FakeQuantizedLinear" for layer in module.modules())


def _qat_scheme():
    """int8 dynamic activations and int8 per-channel weights, the scheme QAT imitates and converts to."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig

    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8)


def load_quantized(compiled, state: dict[str, Any], checkpoint: str | Path) -> None:
    """Quantize a freshly built float model as the checkpoint's method did, then load its tensors."""
    quantization = state["quantization"]
    method = quantization.get("method") if isinstance(quantization, dict) else None
    layers = quantization.get("layers") if isinstance(quantization, dict) else None
    if method not in METHODS or not isinstance(layers, list) or not all(isinstance(name, str) for name in layers):
        raise SpecError(Problem(f"{checkpoint}: its `quantization` entry is malformed (a method of "
                                f"{', '.join(METHODS)} and a list of layer names)", None, "CHECKPOINT_ERROR"))
    check_method(method)
    apply_quantization(compiled.module, method, set(layers))
    load_model_state(compiled.module, state, checkpoint, assign=True)
    compiled.module.eval()


def check_method(method: str) -> None:
    if method not in METHODS:
        raise SpecError(Problem(f"unknown quantization method '{method}'; choose {', '.join(METHODS)}", None,
                                "TYPE_ERROR", did_you_mean(method, METHODS)))
    _import_torchao()
    if method == "int4-weight" and not torch.cuda.is_available():
        raise SpecError(Problem("int4-weight needs torchao's int4 kernels, which run on CUDA GPUs; this machine has "
                                "none: use int8-weight (the same idea at 8 bits) or int8-dynamic", None, "TYPE_ERROR"))


def _import_torchao():
    try:
        import_torchao()
    except ImportError:
        raise SpecError(Problem("quantization needs torchao: pip install 'specc[quantize]' (or pip install torchao)",
                                None, "MISSING_KEY")) from None
    return sys.modules["torchao"]
