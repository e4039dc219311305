"""Schema of the `train:` keys that spread one model over several processes: `strategy`, `fsdp`,
`activation_checkpointing`, `parallel` (docs/distributed.md).

    train:
      strategy: fsdp                     # ddp | fsdp; default ddp on several processes
      fsdp: {shard: ["h.*"], reshard_after_forward: true, cpu_offload: false}
      activation_checkpointing: blocks   # recompute each block's activations in backward
      parallel: {tensor: 2}              # tensor parallel over 2 processes, FSDP over the rest
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

STRATEGIES = ("ddp", "fsdp")


class FSDPConfig(BaseModel):
    """How `strategy: fsdp` shards: which modules are units, and what each keeps between passes."""

    model_config = ConfigDict(extra="forbid")

    shard: list[str] = Field(default_factory=list)  # globs of module paths sharded as units; default: the spec's blocks
    reshard_after_forward: bool = True   # free gathered weights after forward (less memory, one more all-gather)
    cpu_offload: bool = False            # keep shards, gradients and optimizer state in CPU memory


class ParallelConfig(BaseModel):
    """The process mesh: `tensor` processes split each attention/MLP layer, the rest shard with FSDP."""

    model_config = ConfigDict(extra="forbid")

    tensor: int = Field(1, ge=1)         # tensor-parallel degree; must divide the process count


StrategyName = Optional[Literal["ddp", "fsdp"]]
CheckpointingName = Literal["blocks", "none"]
