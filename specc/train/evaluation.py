"""Using a trained checkpoint: `evaluate` on a split of the spec's data, `predict` on a new file."""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specc.weights.checkpoint import load_checkpoint, load_model_state, require_keys
from specc.train.data import Normalizer, TensorData, batches, layout_of, shape_inputs
from specc.lang.errors import Problem, SpecError
from specc.train.loop import eval_batch_size, evaluate_split, first_output
from specc.train.metrics import MetricSet, Task, build_loss
from specc.train.prepare import build_model, load_train_spec, metric_locator, prepare_data, resolve_device
from specc.train.npz import read_npz
from specc.train.run_log import stage
from specc.train.columns import IMAGE_SUFFIXES, ImageFiles
from specc.train.folder_walk import image_files
from specc.train.sources import read_csv
from specc.train.text_data import cache_root_of, check_tokenizer, read_text_data
from specc.lang.safety import stored_spec_scope
from specc.lang.spec import Spec, load
from specc.lang.tokenizer_vars import tokenizer_vars
from specc.train.tokenizer import from_state as tokenizer_from_state
from specc.lang.train_config import CLASS_INDEX_LOSSES

SPLITS = ("train", "val", "test")


def evaluate(spec_or_path: str | Path | dict | Spec | None, checkpoint: str | Path, *, split: str = "test",
             device: str | None = None, overrides: dict[str, Any] | None = None,
             quiet: bool = False) -> dict[str, Any]:
    """Loss and every configured metric of a checkpoint on one split of the spec's data.

    The split is rebuilt from the spec (same source and split seed), and the inputs are scaled
    with the statistics stored in the checkpoint.

    Args:
        spec_or_path: the spec; None = the resolved spec stored in the checkpoint.
        checkpoint: a best.pt or last.pt written by `train`.
        split: train, val or test.
        device: overrides `train.device`.
        overrides: vars or dotted keys, like `--set`.
        quiet: no spinner for the stages on a terminal (`specc evaluate -v` prints them as lines).

    Returns:
        `{"loss": ..., "accuracy": ..., ...}`.

    Raises:
        SpecError: unreadable checkpoint, a checkpoint that does not fit the model, or an empty split.
    """
    shown = not quiet
    with stage(f"reading {Path(checkpoint).name}", shown):
        state = load_checkpoint(checkpoint)
    with stage("compiling the spec and loading the weights", shown):
        spec, model, device = restore(spec_or_path, state, checkpoint, device, overrides)
    with stage(f"loading the {split} split", shown):
        data, task = split_data(spec, model, state, split, device, checkpoint)
    with stage(f"evaluating {len(data)} examples" if hasattr(data, "__len__") else "evaluating", shown):
        return score(spec, model.module, data, task, device)


def split_data(spec: Spec, model, state: dict[str, Any], split: str, device: torch.device,
               checkpoint: Any = None) -> tuple[TensorData, Task]:
    """One split of the spec's data (same source and split seed as training), scaled with the
    checkpoint's statistics, on `device`; and the task. Text data are tokenised with a cache beside
    the runs `checkpoint` belongs to, and must give the checkpoint's tokenizer.

    Raises:
        SpecError: an unknown or empty split.
    """
    if split not in SPLITS:
        raise SpecError(Problem(f"unknown split '{split}'; choose train, val or test", None, "TYPE_ERROR"))
    corpus = read_text_data(spec, cache_root_of(checkpoint, Path("runs")))[1] if spec.train.data.is_text else None
    check_tokenizer(state.get("tokenizer"), None if corpus is None else corpus.tokenizer, spec, checkpoint or "")
    prepared = prepare_data(spec, model, corpus)
    fold = prepared.splits[state.get("fold") or 0]
    data = fold.named().get(split)
    if data is None:
        available = ", ".join(fold.named())
        raise SpecError(Problem(f"the spec's split has no {split} examples (it has {available})",
                                spec.source.locate(("train", "data", "split")), "DATA_ERROR"))
    if isinstance(data, TensorData):   # the normalizer, from the checkpoint, must fit the inputs
        data = TensorData(_scaled(state, data.inputs, checkpoint), data.target)
    else:                              # a streamed split scales each batch
        data = Normalizer.from_state_dict(state["normalizer"])(data)
    return data.to(device), prepared.task


def score(spec: Spec, module: torch.nn.Module, data: TensorData, task: Task, device: torch.device) -> dict[str, Any]:
    """The loss and every configured metric of `module` on `data`."""
    config = spec.train
    metrics = MetricSet.build(config.metrics, task, device, metric_locator(spec))
    loss_fn = build_loss(config.loss, spec.source.locate(("train", "loss"))).to(device)
    return evaluate_split(module, data, loss_fn=loss_fn, task=task, metrics=metrics, batch_size=eval_batch_size(config))


def predict(spec_or_path: str | Path | dict | Spec | None, checkpoint: str | Path, input_path: str | Path,
            output_path: str | Path | None = None, *, device: str | None = None,
            overrides: dict[str, Any] | None = None) -> Path:
    """Run a checkpoint on new examples and write the predictions.

    Args:
        spec_or_path: the spec; None = the resolved spec stored in the checkpoint.
        checkpoint: a best.pt or last.pt written by `train`.
        input_path: a csv (header row; a target column, if present, is ignored) or an npz
            (array `x`, or one array per input name).
        output_path: .csv or .npz; default `<input>.predictions.csv` (or .npz for npz inputs).
        device: overrides `train.device`.
        overrides: vars or dotted keys, like `--set`.

    Returns:
        The path written. Classification writes the predicted class and class probabilities;
        regression writes the outputs.
    """
    state = load_checkpoint(checkpoint)
    spec, model, device = restore(spec_or_path, state, checkpoint, device, overrides)
    input_path = Path(input_path)
    output_shape = tuple(model.graph[model.graph.outputs[0]].feature_shape or ())
    layout = layout_of(spec, model.input_shapes(), output_shape, spec.train.loss.name in CLASS_INDEX_LOSSES)
    images = image_paths(input_path) if is_images(input_path) else None
    read = _read_images(images, layout) if images is not None else _read_inputs(input_path, spec, layout)
    inputs = shape_inputs(read, layout, None)
    inputs = _scaled(state, tuple(x.to(device) for x in inputs), checkpoint)
    data = TensorData(inputs, torch.zeros(len(inputs[0]), device=device))
    module = model.module.eval()
    with torch.no_grad():
        outputs = torch.cat([first_output(module(*batch)).float().cpu()
                             for batch, _ in batches(data, eval_batch_size(spec.train))])
    task = Task(**state["task"])
    suffix = ".npz" if input_path.suffix == ".npz" else ".csv"
    output_path = Path(output_path) if output_path else input_path.with_name(f"{input_path.stem}.predictions{suffix}")
    labels, probabilities = _decide(outputs, task, logits=spec.train.loss.name != "BCELoss")
    files = [str(path.relative_to(input_path) if input_path.is_dir() else path.name) for path in images or []]
    _write_predictions(output_path, outputs, labels, probabilities, state.get("classes"), files)
    return output_path


def is_images(path: Path) -> bool:
    """An image file, or a folder (of images, subfolders too): decoded as the `folder:` source does."""
    return path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES


def image_paths(path: Path) -> list[Path]:
    """The image files to predict on, sorted (a folder: bounded like a `folder:` source, no links out)."""
    if path.is_dir():
        files = image_files(path.parent, path.name, IMAGE_SUFFIXES, None, [0])
        if not files:
            raise SpecError(Problem(f"{path}: has no png or jpg images", None, "DATA_ERROR"))
        return files
    if not path.is_file():
        raise SpecError(Problem(f"input file not found: {path}", None, "DATA_ERROR"))
    return [path]


def _read_images(paths: list[Path], layout) -> dict[str, Any]:
    names = list(layout.inputs)
    if len(names) != 1:
        raise SpecError(Problem(f"images feed a model with one image input; this one has {', '.join(names)}",
                                None, "DATA_ERROR"))
    return {names[0]: ImageFiles(paths, layout.inputs[names[0]][0], names[0], None)[:]}


def _scaled(state: dict, inputs: tuple[torch.Tensor, ...], checkpoint: Any) -> tuple[torch.Tensor, ...]:
    """The inputs scaled by the checkpoint's normalizer, which must fit them (one entry per input,
    statistics of the input's shape)."""
    normalizer = Normalizer.from_state_dict(state["normalizer"])
    try:
        if len(normalizer.stats) != len(inputs):
            raise ValueError(f"it has statistics for {len(normalizer.stats)} inputs, the model {len(inputs)}")
        return normalizer.inputs(inputs)
    except (ValueError, RuntimeError) as error:
        raise SpecError(Problem(f"{checkpoint or 'the checkpoint'}: the checkpoint's `normalizer` does not fit the "
                                f"model's inputs ({str(error).splitlines()[0]})", None, "CHECKPOINT_ERROR")) from None


def restore(spec_or_path, state: dict, checkpoint, device: str | None, overrides):
    """The spec (given, or the checkpoint's: validated just the same) and its model with the weights;
    a checkpoint of `specc quantize` gets its quantized layers back first (specc.train.quantize)."""
    require_keys(state, ("model", "normalizer", "task") + (("spec",) if spec_or_path is None else ()),
                 checkpoint, "evaluate and predict")
    if spec_or_path is None:   # the checkpoint's own spec: safe mode unless its code is trusted (--trust-code)
        with stored_spec_scope():
            spec = load_train_spec(state["spec"], overrides)
    else:
        spec = load_train_spec(spec_or_path, overrides)
    if tokenizer_vars(spec.raw) and state.get("tokenizer"):   # the size the checkpoint was trained with
        size = tokenizer_from_state(state["tokenizer"]).vocab_size
        spec = load(spec, {name: size for name in tokenizer_vars(spec.raw)})
    device = resolve_device(device or spec.train.device)
    compiled = build_model(spec, device, seed=None)
    if spec.train.qat is not None:   # evaluated as it trained, with int8 fake quantization
        from specc.train.quantized import prepare_qat

        prepare_qat(compiled.module)
    if state.get("quantization"):
        from specc.train.quantized import load_quantized

        load_quantized(compiled, state, checkpoint)
    else:
        load_model_state(compiled.module, state, checkpoint)
    return spec, compiled, device


def _read_inputs(path: Path, spec: Spec, layout) -> Any:
    if not path.is_file():
        raise SpecError(Problem(f"input file not found: {path}", None, "DATA_ERROR"))
    if path.suffix == ".npz":
        arrays = read_npz(path, None)
        names = list(layout.inputs)
        if all(name in arrays for name in names):
            return {name: arrays[name] for name in names}
        if "x" in arrays:
            return arrays["x"]
        raise SpecError(Problem(f"{path}: needs an array x (or one per input: {', '.join(names)})", None, "DATA_ERROR"))
    if path.suffix != ".csv":
        raise SpecError(Problem(f"{path}: predict reads .csv or .npz files, an image or a folder of images",
                                None, "DATA_ERROR"))
    features, _, _ = read_csv(path, spec.train.data.target, None, require_target=False)
    expected = int(np.prod(next(iter(layout.inputs.values()))[0]))
    if features.shape[1] == expected + 1 and spec.train.data.target is None:
        features = features[:, :-1]  # the training csv's layout: the last column is the target
    return features


def _write_predictions(path: Path, outputs: torch.Tensor, labels: torch.Tensor | None,
                       probabilities: torch.Tensor | None, classes: list[str] | None, files: list[str]) -> None:
    if path.suffix == ".npz":
        arrays = {"outputs": outputs.numpy()}
        if labels is not None:
            arrays["predictions"] = labels.numpy()
        if files:
            arrays["files"] = np.asarray(files)
        np.savez(path, **arrays)
        return
    if str(path) == "-":   # `predict -o -`: the csv on stdout, for a pipe
        _write_csv(sys.stdout, outputs, labels, probabilities, classes, files)
        sys.stdout.flush()
        return
    with open(path, "w", newline="", encoding="utf-8") as handle:
        _write_csv(handle, outputs, labels, probabilities, classes, files)


def _write_csv(handle: Any, outputs: torch.Tensor, labels: torch.Tensor | None,
               probabilities: torch.Tensor | None, classes: list[str] | None, files: list[str]) -> None:
    writer = _FileColumn(csv.writer(handle), files) if files else csv.writer(handle)
    if labels is None:
        flat = outputs.reshape(len(outputs), -1)
        writer.writerow(["prediction"] if flat.shape[1] == 1 else [f"output_{i}" for i in range(flat.shape[1])])
        writer.writerows(flat.tolist())
        return
    flat_probabilities = probabilities.reshape(len(outputs), -1)
    names = classes or [str(i) for i in range(max(flat_probabilities.shape[1], 2))]
    flat_labels = labels.reshape(len(labels), -1)
    if flat_labels.shape[1] != 1:  # per-position classes (sequences, images): labels only
        writer.writerow([f"prediction_{i}" for i in range(flat_labels.shape[1])])
        writer.writerows([[names[int(v)] for v in row] for row in flat_labels.tolist()])
        return
    # binary: one column, the probability of class 1
    columns = names if flat_probabilities.shape[1] > 1 else names[1:]
    writer.writerow(["prediction", *(f"probability_{name}" for name in columns)])
    for label, row in zip(flat_labels[:, 0].tolist(), flat_probabilities.tolist()):
        writer.writerow([names[int(label)], *(f"{p:.6f}" for p in row)])


def _decide(outputs: torch.Tensor, task: Task, logits: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Predicted classes and probabilities from raw outputs (None for regression)."""
    if task.kind == "multiclass":
        dim = 1 if task.classes_first else -1
        probabilities = outputs.softmax(dim)
        return probabilities.argmax(dim), probabilities
    if task.kind in ("binary", "multilabel"):
        probabilities = outputs.sigmoid() if logits else outputs  # BCELoss models output probabilities
        return (probabilities > 0.5).long(), probabilities
    return None, None


class _FileColumn:
    """A csv writer whose rows start with the image file each came from (`file` in the header)."""

    def __init__(self, writer: Any, files: list[str]):
        self.writer, self.first = writer, iter(["file", *files])

    def writerow(self, row: list) -> None:
        self.writer.writerow([next(self.first), *row])

    def writerows(self, rows: list[list]) -> None:
        for row in rows:
            self.writerow(row)
