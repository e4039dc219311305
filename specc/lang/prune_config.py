"""Schema of `train.prune:`, gradual magnitude pruning during training (docs/train.md, *Pruning*).

```yaml
train:
  prune: {method: l1_unstructured, amount: 0.5, params: ["*.weight"], schedule: {start_epoch: 2, end_epoch: 8}}
```
specc.train.pruning applies it with `torch.nn.utils.prune`.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

PRUNE_METHODS = ("l1_unstructured", "ln_structured")


class PruneSchedule(BaseModel):
    """Which epochs prune: one cut at the start of each, the sparsity rising along Zhu & Gupta's cubic curve."""

    model_config = ConfigDict(extra="forbid")

    start_epoch: int = Field(1, ge=1)            # the first epoch that starts with a cut
    end_epoch: Optional[int] = Field(None, ge=1)  # the epoch whose cut reaches `amount`; default: the last epoch

    @model_validator(mode="after")
    def _ordered(self) -> "PruneSchedule":
        if self.end_epoch is not None and self.end_epoch < self.start_epoch:
            raise ValueError(f"end_epoch {self.end_epoch} comes before start_epoch {self.start_epoch}")
        return self


class PruneConfig(BaseModel):
    """`train.prune:`: which tensors lose which fraction of their weights, and when."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["l1_unstructured", "ln_structured"] = "l1_unstructured"  # single weights, or whole channels
    amount: float = Field(gt=0, lt=1)             # final sparsity: the fraction of weights (or channels) set to zero
    params: list[str] = Field(default_factory=lambda: ["*.weight"])  # globs of parameter names; tensors of 2+ dims
    schedule: PruneSchedule = Field(default_factory=PruneSchedule)
    scope: Literal["layer", "global"] = "layer"   # global: one magnitude threshold across every pruned tensor
    n: Union[int, float, Literal["inf", "-inf", "fro", "nuc"]] = 2  # ln_structured: the norm ranking channels
    dim: int = 0                                  # ln_structured: the channel dim (0: output channels / features)

    @model_validator(mode="after")
    def _compatible(self) -> "PruneConfig":
        if self.scope == "global" and self.method != "l1_unstructured":
            raise ValueError("scope: global ranks single weights across tensors; it works with "
                             "method: l1_unstructured only (torch.nn.utils.prune.global_unstructured)")
        if not self.params:
            raise ValueError("params must name at least one parameter pattern, such as '*.weight'")
        return self
