"""`strategy: fsdp`: each process holds a shard of the weights (FSDP2's `fully_shard`), built on `meta`.

Like torchtitan's `parallelize_llama`, each parallelism is one function applied to a model it did not
write; the spec says where the units are. The order is the one FSDP2 documents:

1. compile on `meta` (no weights anywhere);
2. `parallel: {tensor: N}`: tensor parallel on the attention and MLP layers (specc.train.tensor_parallel);
3. `activation_checkpointing: blocks`: each block recomputes its activations in backward;
4. `fully_shard` on every unit (each block use and `repeat:` body, or the `fsdp.shard` globs), then the root;
5. `to_empty` on this process's device, then each process fills its own shards with the values a
   seeded 1-process build has (specc.build.materialize), one layer at a time.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable

import torch
from torch import nn

from specc.build.compiled import Compiled
from specc.build.shards import copy_full_value
from specc.build.materialize import initial_values, local_targets, tied_names
from specc.build.units import block_units
from specc.lang.errors import Location, Problem, SpecError
from specc.lang.train_config import TrainConfig
from specc.train import ranks

WRAPPED = "._checkpoint_wrapped_module"  # the path level torch's checkpoint wrapper adds


def strategy_of(config: TrainConfig, world_size: int) -> str:
    """`fsdp`, `ddp`, or `none`: one process holds the whole model whatever the spec says (its
    checkpoints are still written sharded with `strategy: fsdp`, see `sharded_checkpoints`)."""
    if world_size == 1:
        return "none"
    return config.strategy or "ddp"


def sharded_checkpoints(config: TrainConfig) -> bool:
    """`strategy: fsdp` runs write DCP checkpoints (`last.dcp/`), on any number of processes, so that
    they resume on any other number."""
    return config.strategy == "fsdp"


def chosen_units(compiled: Compiled, globs: list[str], locate) -> list[str]:
    """`fsdp.shard` globs matched against module paths (outermost matches), or the spec's blocks.

    Raises:
        SpecError: a glob that matches no module, located at its line.
    """
    if not globs:
        return block_units(compiled)
    paths = [name for name, _ in compiled.module.named_modules() if name]
    units: list[str] = []
    for index, glob in enumerate(globs):
        matched = [path for path in paths if fnmatch.fnmatchcase(path, glob)]
        if not matched:
            raise SpecError(Problem(f"fsdp.shard: '{glob}' matches no module (module paths look like "
                                    f"{', '.join(paths[:4])})", locate(index), "UNKNOWN_REFERENCE"))
        units += [path for path in matched if path not in units]
    return [path for path in units if not any(path.startswith(f"{other}.") for other in units)]


def checkpoint_blocks(model: nn.Module, units: Iterable[str]) -> None:
    """Wrap each unit so that backward recomputes its activations (non-reentrant `torch.utils.checkpoint`).
    The wrapper's state_dict hooks keep the parameter names of the checkpoints unchanged."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    for path in units:
        owner_path, _, name = path.rpartition(".")
        owner = model.get_submodule(owner_path)
        owner.register_module(name, checkpoint_wrapper(owner.get_submodule(name),
                                                       checkpoint_impl=CheckpointImpl.NO_REENTRANT))


def unwrapped_name(name: str) -> str:
    """A parameter's name as the spec knows it, without the checkpoint wrapper's path level."""
    return name.replace(WRAPPED, "")


def device_mesh(device: torch.device, tensor: int, where: Location | None):
    """The process mesh: 1-D `("shard",)`, or 2-D `("shard", "tensor")` with `parallel.tensor` > 1.

    Raises:
        SpecError: `tensor` does not divide the process count.
    """
    from torch.distributed.device_mesh import init_device_mesh

    world = ranks.world_size()
    if world % tensor:
        raise SpecError(Problem(f"parallel.tensor {tensor} must divide the number of processes ({world})", where,
                                "TYPE_ERROR"))
    if tensor == 1:
        return init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    return init_device_mesh(device.type, (world // tensor, tensor), mesh_dim_names=("shard", "tensor"))


def shard_model(compiled: Compiled, config: TrainConfig, device: torch.device, locate) -> nn.Module:
    """The compiled (meta) model sharded over every process and filled with its initial values.

    Args:
        compiled: the spec compiled on `meta`.
        config: the `train:` section (fsdp, amp, parallel, activation_checkpointing, seed).
        device: this process's device.
        locate: `path tuple -> Location` of the spec (for errors).

    Returns:
        The root module, itself an FSDP module; its parameters are DTensors holding this rank's shards.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    model = compiled.module
    mesh = device_mesh(device, config.parallel.tensor, locate(("train", "parallel", "tensor")))
    if config.parallel.tensor > 1:
        from specc.train.tensor_parallel import parallelize

        parallelize(model, mesh["tensor"], locate(("train", "parallel")))
    units = chosen_units(compiled, config.fsdp.shard, lambda index: locate(("train", "fsdp", "shard", index)))
    if config.activation_checkpointing == "blocks":
        checkpoint_blocks(model, block_units(compiled))
    mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if config.amp \
        else MixedPrecisionPolicy()
    options = {"mesh": mesh["shard"] if mesh.ndim > 1 else mesh, "mp_policy": mixed,
               "reshard_after_forward": config.fsdp.reshard_after_forward,
               "offload_policy": CPUOffloadPolicy() if config.fsdp.cpu_offload else OffloadPolicy()}
    for path in units:
        fully_shard(model.get_submodule(_wrapped_path(model, path)), **options)
    fully_shard(model, **options)
    model.to_empty(device="cpu" if config.fsdp.cpu_offload else device)
    fill_initial_values(model, compiled, config.seed)
    return model


def _wrapped_path(model: nn.Module, path: str) -> str:
    """`path`, or the module a checkpoint wrapper at `path` holds."""
    wrapped = f"{path}{WRAPPED}"
    try:
        model.get_submodule(wrapped)
        return wrapped
    except AttributeError:
        return path


@torch.no_grad()
def fill_initial_values(model: nn.Module, compiled: Compiled, seed: int | None) -> None:
    """Give every local shard (and every buffer) its value in a seeded 1-process build."""
    targets = {unwrapped_name(name): tensor for name, tensor in local_targets(model).items()}
    tied = tied_names(compiled)
    for name, full in initial_values(compiled, seed):
        name = unwrapped_name(name)   # initial_values may walk the model with its checkpoint wrappers in place
        if name not in tied:
            copy_full_value(targets[name], full)
