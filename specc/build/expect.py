"""`expect:` checks, verified every time a spec compiles."""
from __future__ import annotations

from typing import TYPE_CHECKING

from specc.lang.errors import Problem, SpecError

if TYPE_CHECKING:
    from specc.build.compiled import Compiled


def count_parameters(module, trainable_only: bool = False) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def forward_flops(compiled: "Compiled", batch_size: int = 1) -> int:
    """Forward FLOPs for `batch_size` samples, counted by torch's FlopCounterMode on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    from specc.build.infer import evaluating

    module = compiled.meta_module()
    inputs = compiled.example_inputs(batch_size, device="meta")
    with FlopCounterMode(display=False) as counter, evaluating(module):   # batch norm at batch 1
        module(*inputs)
    return counter.get_total_flops()


def check_expectations(compiled: "Compiled") -> None:
    """Raise a located SpecError for every `expect:` key that does not hold."""
    expect, source, problems = compiled.spec.expect, compiled.spec.source, []

    def fail(key: str, expected, actual) -> None:
        problems.append(Problem(f"expect.{key}: expected {expected}, got {actual}", source.locate(("expect", key)),
                                "EXPECT_FAILED"))

    if expect.params is not None and (actual := count_parameters(compiled.module)) != expect.params:
        fail("params", f"{expect.params:,}", f"{actual:,}")
    if expect.trainable_params is not None:
        actual = count_parameters(compiled.module, trainable_only=True)
        if actual != expect.trainable_params:
            fail("trainable_params", f"{expect.trainable_params:,}", f"{actual:,}")
    if expect.output_shape is not None:
        outputs = [compiled.graph[name].feature_shape for name in compiled.graph.outputs]
        actual = [list(shape) if shape is not None else None for shape in outputs]
        several = bool(expect.output_shape) and isinstance(expect.output_shape[0], list)   # `[]`: one 0-d output
        expected = expect.output_shape if several else [expect.output_shape]
        if actual != expected:
            fail("output_shape", expected if len(expected) > 1 else expected[0], actual if len(actual) > 1 else actual[0])
    if expect.flops is not None:
        try:
            actual = forward_flops(compiled)
        except Exception as error:  # noqa: BLE001 - a valid spec never gives an internal error
            text = (str(error).strip().splitlines() or [type(error).__name__])[0]
            problems.append(Problem(f"expect.flops: the FLOPs cannot be counted: {text}",
                                    source.locate(("expect", "flops")), "EXPECT_FAILED"))
            actual = expect.flops
        if abs(actual - expect.flops) > 0.01 * abs(expect.flops):
            fail("flops", f"{expect.flops:.4g} (±1%)", f"{actual:.4g}")
    if problems:
        raise SpecError(problems)
