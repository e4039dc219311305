"""A run's TensorBoard events beyond the per-epoch scalars: the model graph, the resolved spec as
text, weight and gradient histograms per named layer (`log_histograms:`), the hyperparameters
(the spec's vars and train keys) with the best checkpoint's metrics, its test-split metrics, and
the confusion matrix as an image.

Each split's per-epoch figures go to a sub-run of its own, `<run>/tensorboard/<split>/`, under the
quantity's lower-case name (`loss`, `accuracy`): TensorBoard overlays train and val in one chart
(the Keras/Lightning convention). Everything else (the learning rate, graph, spec, histograms,
hparams, `best/` figures, confusion matrices) goes into the run directory's own events file.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The training session (specc.train.loop.Session) is used through its attributes: loop imports this module.
Session = Any

TEXT_LIMIT = 200_000  # characters of the resolved spec shown (a generated spec can be huge)


SPLITS = ("train", "val", "test")
SUBRUNS = "tensorboard"  # the folder of the splits' sub-runs inside the run directory


def split_tag(key: str) -> tuple[str | None, str]:
    """`train_loss` -> `("train", "loss")`, `val_F1` -> `("val", "f1")`, `lr` -> `(None, "lr")`."""
    split, _, name = key.partition("_")
    return (split, name.lower()) if split in SPLITS and name else (None, key.lower())


class TensorBoard:
    """The run's SummaryWriter, one more per split (opened when first written), and what specc writes."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.writer = SummaryWriter(str(run_dir))
        self.split_writers: dict[str, SummaryWriter] = {}

    def split_writer(self, split: str):
        """The sub-run `<run>/tensorboard/<split>/`; a resumed run appends a new events file there."""
        if split not in self.split_writers:
            from torch.utils.tensorboard import SummaryWriter

            self.split_writers[split] = SummaryWriter(str(self.run_dir / SUBRUNS / split))
        return self.split_writers[split]

    def scalar(self, key: str, value: float, step: int) -> None:
        """`train_loss` as `loss` in the train sub-run; a key of no split (`lr`) in the run's own file."""
        split, name = split_tag(key)
        writer = self.writer if split is None else self.split_writer(split)
        writer.add_scalar(name, value, step)

    def scalars(self, record: dict[str, Any], step: int) -> None:
        for key, value in record.items():
            if key not in ("epoch", "seconds") and isinstance(value, (int, float)):
                self.scalar(key, value, step)
        self.flush()

    def flush(self) -> None:
        for writer in (self.writer, *self.split_writers.values()):
            writer.flush()

    def model(self, session: Session) -> str:
        """The graph of the compiled module, traced on two training examples, and the resolved
        spec; returns a note when the graph cannot be traced (the run goes on)."""
        self.writer.add_text("spec", _as_code(session.spec.to_yaml()[:TEXT_LIMIT]), 0)
        example = _example_inputs(session)
        if example is None:  # streamed data: no batch at hand before training (docs/train.md says so)
            return ""
        if session.sharded and session.world_size > 1:  # rank 0 alone cannot run a forward that gathers shards
            return ""
        if session.config.qat is not None:   # torch.jit's tracer asserts inside torchao's fake quantization
            return "TensorBoard: no model graph (torch.jit cannot trace torchao's fake-quantized layers of qat)"
        try:
            with _eval_mode(session.model), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # add_graph traces with torch.jit, deprecated in torch 2.x
                self.writer.add_graph(session.model, example, use_strict_trace=False)
        except Exception as error:  # noqa: BLE001 - tracing is best effort; the run matters more
            return f"TensorBoard: no model graph ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        return ""

    def histograms(self, model: nn.Module, epoch: int) -> None:
        """Each parameter's values and its last step's gradient, under `weights/` and `gradients/`."""
        for name, parameter in model.named_parameters():  # strategy fsdp: rank 0's shard
            self.writer.add_histogram(f"weights/{name}", _local(parameter).detach().float().cpu(), epoch)
            if parameter.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", _local(parameter.grad).detach().float().cpu(), epoch)
        self.writer.flush()

    def final(self, session: Session, metrics: dict[str, dict[str, Any]], epoch: int) -> None:
        """The best checkpoint's metrics: test-split scalars, the hparams with every split's
        figures, and each split's confusion matrix as an image."""
        for name, value in metrics.get("test", {}).items():
            if _number(value):
                self.scalar(f"test_{name}", value, epoch)
        figures = {f"best/{split}_{name}": float(value) for split, values in metrics.items()
                   for name, value in values.items() if _number(value)}
        self._hparams(hyperparameters(session), figures)
        for split, values in metrics.items():
            matrix = values.get("confusion_matrix")
            if isinstance(matrix, list) and split != "train":
                self.writer.add_figure(f"confusion_matrix/{split}", confusion_figure(matrix, session.classes, split),
                                       epoch)
        self.flush()

    def _hparams(self, values: dict[str, Any], figures: dict[str, float]) -> None:
        """add_hparams, but into this events file (SummaryWriter.add_hparams opens another one)."""
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(values, figures):
            self.writer.file_writer.add_summary(summary)
        for name, value in figures.items():
            self.writer.add_scalar(name, value)

    def close(self) -> None:
        for writer in (self.writer, *self.split_writers.values()):
            writer.close()


def histograms_due(setting: bool | int, epoch: int) -> bool:
    """`log_histograms: true` logs every epoch, `N` every N-th epoch, false never."""
    if setting is True:
        return True
    return bool(setting) and epoch % int(setting) == 0


def hyperparameters(session: Session) -> dict[str, Any]:
    """The spec's vars (`vars.<name>`) and its train keys as dotted names (`train.optimizer.lr`),
    each a number, bool or string as TensorBoard's HParams dashboard takes them."""
    values = {f"vars.{name}": value for name, value in (session.spec.vars or {}).items()}
    values.update(_flatten("train", session.spec.raw.get("train") or {}))
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value)
            for name, value in values.items() if value is not None}


def confusion_figure(matrix: list[list[int]], classes: list[str] | None, split: str):
    """A matplotlib figure of the matrix, counts written in the cells (rows: true class)."""
    from matplotlib.figure import Figure

    size = len(matrix)
    labels = list(classes) if classes and len(classes) == size else [str(index) for index in range(size)]
    figure = Figure(figsize=(1.2 + 0.45 * size, 1.0 + 0.45 * size), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    axes.set(xticks=range(size), yticks=range(size), xlabel="predicted", ylabel="true", title=f"confusion ({split})")
    axes.set_xticklabels(labels, rotation=90)
    axes.set_yticklabels(labels)
    top = max((max(row) for row in matrix), default=0)
    for row_index, row in enumerate(matrix):
        for column_index, count in enumerate(row):
            axes.text(column_index, row_index, str(count), ha="center", va="center", fontsize=7,
                      color="white" if count > top / 2 else "black")
    return figure


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    """`{"optimizer": {"Adam": {"lr": 0.001}}}` -> `{"train.optimizer.Adam.lr": 0.001}`; lists as text."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(f"{prefix}.{key}", item))
        return flat
    return {prefix: value if isinstance(value, (bool, int, float, str)) or value is None else str(value)}


def _example_inputs(session: Session) -> tuple[torch.Tensor, ...] | None:
    inputs = getattr(session.splits.train, "inputs", None)
    if not inputs:
        return None
    return tuple(tensor[:2].to(session.device) for tensor in inputs)


class _eval_mode:
    """Trace in eval mode (dropout off, batch-norm statistics untouched); the mode is restored after."""

    def __init__(self, model: nn.Module):
        self.model, self.training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc_info: Any) -> None:
        self.model.train(self.training)


def _as_code(text: str) -> str:
    """TensorBoard renders text as markdown: indent it to show the YAML as it is."""
    return "\n".join("    " + line for line in text.splitlines())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (a DTensor), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
