"""Losses and metrics. The loss decides the task, and the task decides how outputs meet targets.

- class-index losses (CrossEntropyLoss, NLLLoss, MultiMarginLoss): multiclass; outputs (N, C),
  or per-position classes for sequences (N, T, C) and images (N, C, H, W), flattened to (M, C);
- BCEWithLogitsLoss / BCELoss: binary with one output, multilabel with several;
- every other loss: regression; metrics pool all outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torchmetrics
from torch import nn

from specc.lang.errors import Location, Problem, SpecError
from specc.lang.train_config import CLASS_INDEX_LOSSES, CLASSIFICATION_METRICS, LANGUAGE_METRICS, MATRIX_METRICS, Call

BINARY_LOSSES = ("BCEWithLogitsLoss", "BCELoss")


@dataclass(frozen=True)
class Task:
    """How model outputs relate to targets."""

    kind: str                    # "multiclass" | "binary" | "multilabel" | "regression"
    num_classes: int | None = None
    classes_first: bool = False  # multiclass outputs (N, C, *positions) rather than (N, *positions, C)

    @classmethod
    def infer(cls, loss_name: str, output_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> "Task":
        """The task for a loss, from per-example output and target shapes (no batch dim)."""
        if loss_name in CLASS_INDEX_LOSSES:
            classes_first = len(output_shape) > 1 and tuple(output_shape[1:]) == tuple(target_shape) \
                and tuple(output_shape[:-1]) != tuple(target_shape)
            classes = output_shape[0] if classes_first else output_shape[-1]
            return cls("multiclass", int(classes), classes_first)
        if loss_name in BINARY_LOSSES:
            features = int(torch.Size(output_shape).numel())
            return cls("binary") if features == 1 else cls("multilabel", features)
        return cls("regression")

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    def align(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and targets as the loss takes them: per-position classes flattened to (M, C)."""
        if self.kind != "multiclass" or output.dim() == 2:
            return output, target
        if self.classes_first:
            output = output.movedim(1, -1)
        return output.reshape(-1, self.num_classes), target.reshape(-1)

    def for_metrics(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 predictions and targets in the layout torchmetrics expects for this task."""
        output, target = self.align(output.detach().float(), target)
        if self.kind == "binary":
            return output.reshape(-1), target.reshape(-1).long()
        if self.kind == "multilabel":
            return output.reshape(len(output), -1), target.reshape(len(target), -1).long()
        if self.kind == "regression":
            return output.reshape(-1), target.reshape(-1).float()
        return output, target


class MeanBiasError(nn.Module):
    """Mean of (prediction - target): positive when the model over-predicts on average."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output - target).mean()


class MeanBiasErrorMetric(torchmetrics.Metric):
    """Running mean bias error over an epoch."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.total += (preds - target).sum()
        self.count += preds.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


def build_loss(call: Call, where: Location | None) -> nn.Module:
    """The training loss by name (any torch.nn loss, or `mbe`)."""
    if call.name == "mbe":
        return MeanBiasError()
    # list values passed the load's check only where torch wants a tensor (CrossEntropyLoss weight)
    kwargs = {key: torch.tensor(value, dtype=torch.float32) if isinstance(value, list) else value
              for key, value in call.kwargs.items()}
    try:
        return getattr(nn, call.name)(**kwargs)
    except (TypeError, ValueError) as error:
        raise SpecError(Problem(f"loss {call.name}: {error}", where, "TYPE_ERROR")) from None


def _classification_metric(metric_class: type, averaged: bool = False) -> Callable[[Task, dict], torchmetrics.Metric]:
    """A factory passing the task; `averaged` metrics default to the macro average over classes."""
    def make(task: Task, kwargs: dict) -> torchmetrics.Metric:
        # targets are range-checked once when the data load; per-batch checks would sync every step
        options: dict[str, Any] = {"task": task.kind, "validate_args": False}
        if task.kind == "multiclass":
            options["num_classes"] = task.num_classes
        elif task.kind == "multilabel":
            options["num_labels"] = task.num_classes
        if averaged and task.kind != "binary":
            options["average"] = "macro"  # the micro average of f1/precision/recall equals accuracy
        return metric_class(**{**options, **kwargs})
    return make


def _perplexity(task: Task, kwargs: dict) -> torchmetrics.Metric:
    from torchmetrics.text import Perplexity

    return Perplexity(**kwargs)


METRIC_FACTORIES: dict[str, Callable[[Task, dict], torchmetrics.Metric]] = {
    "accuracy": _classification_metric(torchmetrics.Accuracy),
    "precision": _classification_metric(torchmetrics.Precision, averaged=True),
    "recall": _classification_metric(torchmetrics.Recall, averaged=True),
    "f1": _classification_metric(torchmetrics.F1Score, averaged=True),
    "auroc": _classification_metric(torchmetrics.AUROC),
    "confusion_matrix": _classification_metric(torchmetrics.ConfusionMatrix),
    "rmse": lambda task, kwargs: torchmetrics.MeanSquaredError(squared=False, **kwargs),
    "mse": lambda task, kwargs: torchmetrics.MeanSquaredError(**kwargs),
    "mae": lambda task, kwargs: torchmetrics.MeanAbsoluteError(**kwargs),
    "mape": lambda task, kwargs: torchmetrics.MeanAbsolutePercentageError(**kwargs),
    "smape": lambda task, kwargs: torchmetrics.SymmetricMeanAbsolutePercentageError(**kwargs),
    "r2": lambda task, kwargs: torchmetrics.R2Score(**kwargs),
    "mbe": lambda task, kwargs: MeanBiasErrorMetric(**kwargs),
    "perplexity": _perplexity,
}


# Metrics computed from the split's mean loss (nats per token) when the epoch ends, at no cost per
# batch: bits per token scaled by the split's tokens per character or per UTF-8 byte (text data;
# other data count per token).
BITS_PER_UNIT = {"bits_per_char": "char", "bits_per_byte": "byte"}


class MetricSet:
    """The configured metrics for one split: update per batch on the device, compute once per epoch."""

    def __init__(self, metrics: dict[str, torchmetrics.Metric], task: Task, derived: tuple[str, ...] = ()):
        self.metrics = metrics
        self.task = task
        self.derived = derived                 # names in BITS_PER_UNIT, computed from the loss
        self.units: dict[str, float] = {}      # tokens per char / per byte of the split being measured

    @classmethod
    def build(cls, calls: list[Call], task: Task, device: torch.device,
              locate: Callable[[int], Location | None]) -> "MetricSet":
        """One torchmetrics object per configured metric; `locate(i)` points errors at metrics[i]."""
        metrics, derived = {}, []
        for index, call in enumerate(calls):
            _check_fits_task(call.name, task, locate(index))
            if call.name in BITS_PER_UNIT:
                derived.append(call.name)
                continue
            try:
                metrics[call.name] = METRIC_FACTORIES[call.name](task, call.kwargs).to(device)
            except (TypeError, ValueError) as error:
                raise SpecError(Problem(f"metric {call.name}: {error}", locate(index), "TYPE_ERROR")) from None
        return cls(metrics, task, tuple(derived))

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        if not self.metrics:
            return
        preds, labels = self.task.for_metrics(output, target)
        for name, metric in self.metrics.items():
            if name == "perplexity":  # takes (batch, positions, vocabulary) logits
                metric.update(preds.unsqueeze(0), labels.unsqueeze(0))
            else:
                metric.update(preds, labels)

    def state_dict(self) -> dict[str, Any]:
        """The running states of an epoch in progress (for a mid-epoch checkpoint)."""
        return {name: {"state": {key: (value.clone() if isinstance(value, torch.Tensor) else list(value))
                                 for key, value in metric.metric_state.items()},
                       "updates": metric._update_count} for name, metric in self.metrics.items()}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Continue an epoch from `state_dict()`'s running states."""
        for name, metric in self.metrics.items():
            for key, value in states[name]["state"].items():
                setattr(metric, key, value.to(metric.device) if isinstance(value, torch.Tensor) else list(value))
            metric._update_count = states[name]["updates"]
            metric._computed = None

    def compute(self, loss: float | None = None) -> dict[str, Any]:
        """Numbers for scalar metrics, nested lists for matrices; resets for the next epoch.

        Args:
            loss: the split's mean loss, which bits_per_char / bits_per_byte are computed from.
        """
        values = {name: (math.nan if loss is None else loss / math.log(2) * self.units.get(BITS_PER_UNIT[name], 1.0))
                  for name in self.derived}
        for name, metric in self.metrics.items():
            value = metric.compute()
            values[name] = value.tolist() if name in MATRIX_METRICS else float(value)
            metric.reset()
        return values


def _check_fits_task(name: str, task: Task, where: Location | None) -> None:
    if name in CLASSIFICATION_METRICS and not task.is_classification:
        raise SpecError(Problem(f"metric {name} needs a classification loss ({', '.join(CLASS_INDEX_LOSSES)}, "
                                f"BCEWithLogitsLoss); this loss makes a regression task", where, "TYPE_ERROR"))
    if name in LANGUAGE_METRICS and task.kind != "multiclass":
        raise SpecError(Problem(f"metric {name} needs next-token class scores and a class-index loss "
                                "such as CrossEntropyLoss", where, "TYPE_ERROR"))
    if name not in CLASSIFICATION_METRICS and name not in LANGUAGE_METRICS and task.is_classification:
        raise SpecError(Problem(f"metric {name} is a regression metric but the loss makes a {task.kind} task",
                                where, "TYPE_ERROR"))
