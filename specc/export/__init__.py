"""Stage 3d, export: `exporter` writes ONNX, torch.export programs and safetensors; `eject` with
`codegen_tree` / `codegen_render` / `codegen_source` writes a spec out as standalone PyTorch code.

`specc.export(...)` is also this package called as a function (see specc._callable).
"""
from specc._callable import make_callable

make_callable(__name__)
