"""From a spec with a `train:` section to ready-to-run pieces: device, model, data, session.

Kept apart from the loop so `train`, `evaluate` and `predict` build models and data the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specc.train import ranks
from specc.build.compiled import Compiled
from specc.build.compiler import compile as compile_spec
from specc.train.augment import build_augmenter
from specc.train.auxiliary import auxiliary_loss
from specc.train.data import DataSplits, Examples, Layout, Normalizer, layout_of, make_splits, shard_size
from specc.train.sharding import block_units, checkpoint_blocks, shard_model, sharded_checkpoints, strategy_of
from specc.train.streaming import load_data
from specc.train.text_data import check_model_fits, read_text_data
from specc.train.token_windows import split_windows
from specc.lang.errors import Location, Problem, SpecError
from specc.train.loop import Session, Tracker, count_steps, first_output
from specc.train.metrics import MetricSet, Task, build_loss
from specc.train.pruning import Pruner
from specc.train.quantized import prepare_qat
from specc.train.optim import Schedulers, build_optimizer
from specc.lang.spec import Spec, load
from specc.lang.train_config import CLASS_INDEX_LOSSES, MATRIX_METRICS, TrainConfig


@dataclass
class Prepared:
    """The examples read once, and how they meet the model."""

    layout: Layout
    task: Task
    examples: Examples
    splits: list[DataSplits]  # one holdout partition, or K folds
    corpus: Any = None        # text data: the token file and its tokenizer (specc.train.text_corpus)

    @property
    def tokenizer(self) -> Any:
        return None if self.corpus is None else self.corpus.tokenizer


def load_train_spec(spec_or_path: Any, overrides: dict[str, Any] | None = None) -> Spec:
    """Load a spec and insist on its `train:` section.

    Raises:
        SpecError: the spec is invalid or has no `train:` section.
    """
    try:
        spec = load(spec_or_path, overrides or None)
    except SpecError:
        # `train.*` overrides on a spec without `train:` make a partial section whose errors would
        # hide the real mistake: say that the spec has none
        others = {key: value for key, value in (overrides or {}).items() if not key.startswith("train.")}
        if others == (overrides or {}) or load(spec_or_path, others or None).train is not None:
            raise
        spec = load(spec_or_path, others or None)
    if spec.train is None:
        raise SpecError(Problem("the spec has no `train:` section, so it cannot be trained; add one (see "
                                "docs/train.md) or train a spec that has one (specs/digits_cnn.yaml)",
                                spec.source.locate(()), "MISSING_KEY"))
    return spec


def resolve_device(name: str) -> torch.device:
    """`auto` = cuda > mps > cpu; an explicit device must exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(Problem(f"device {name}: CUDA is not available on this machine", None, "TYPE_ERROR"))
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SpecError(Problem(f"device {name}: MPS is not available on this machine", None, "TYPE_ERROR"))
    return device


def build_model(spec: Spec, device: torch.device, seed: int | None) -> Compiled:
    """Compile the spec's model; seeding first makes the initial weights reproducible.

    With `strategy: fsdp` the model is compiled on `meta` and each process materialises its own
    shards only, with the values a 1-process build has (specc.train.sharding). With
    `activation_checkpointing: blocks`, each block recomputes its activations in backward.
    """
    if seed is not None:
        torch.manual_seed(seed)
    config = spec.train
    strategy = strategy_of(config, ranks.world_size()) if config is not None else "none"
    if strategy == "ddp" and config.parallel.tensor > 1:
        raise SpecError(Problem("parallel.tensor splits layers over processes that FSDP then shards: it needs "
                                "strategy: fsdp", spec.source.locate(("train", "parallel")), "TYPE_ERROR"))
    if strategy == "fsdp":
        compiled = compile_spec(spec, device="meta", symbolic=False)
        shard_model(compiled, config, device, spec.source.locate)
        compiled.device = device
        return compiled
    compiled = compile_spec(spec, device=device, symbolic=False)
    if config is not None and config.activation_checkpointing == "blocks":
        checkpoint_blocks(compiled.module, block_units(compiled))
    return compiled


def start_from_weights(spec: Spec, compiled: Compiled) -> None:
    """`train: {init_from: ..., freeze: [...]}`: load the weights to fine-tune, freeze what the globs name
    (see specc.weights.freeze)."""
    from specc.weights.freeze import freeze, init_from

    config = spec.train
    base_dir = Path(spec.file).parent if spec.file != "<spec>" else Path.cwd()
    if config.init_from is not None:
        init_from(compiled, config.init_from, base_dir, spec.source.locate(("train", "init_from")))
    if config.freeze:
        freeze(compiled.module, config.freeze, lambda index: spec.source.locate(("train", "freeze", index)))


def prepare_data(spec: Spec, compiled: Compiled, corpus: Any = None, cache_root: Path | None = None) -> Prepared:
    """Read the data source, shape it for the model, infer the task and split (holdout or K folds).

    Text data (`train.data.tokenizer`) become block_size windows of the token file `corpus` (read
    from `cache_root`, default `runs/.tokens`, when not given) in contiguous train/val/test ranges.
    """
    config = spec.train
    output_shape = tuple(compiled.graph[compiled.graph.outputs[0]].feature_shape or ())
    class_index = config.loss.name in CLASS_INDEX_LOSSES
    layout = layout_of(spec, compiled.input_shapes(), output_shape, class_index)
    if config.data.is_text:
        return _prepare_text(spec, compiled, layout, corpus, cache_root or Path("runs") / ".tokens")
    where = data_location(spec)
    base_dir = Path(spec.file).parent if spec.file != "<spec>" else Path.cwd()
    examples = load_data(config.data, layout, base_dir=base_dir, where=where, seed=config.data.split.seed)
    task = Task.infer(config.loss.name, output_shape, examples.data.target_shape)
    _check_classes(task, examples, where)
    return Prepared(layout, task, examples, make_splits(examples, config.data.split, class_index))


def _prepare_text(spec: Spec, compiled: Compiled, layout: Layout, corpus: Any, cache_root: Path) -> Prepared:
    if corpus is None:
        _, corpus = read_text_data(spec, cache_root)
    block_size = check_model_fits(spec, compiled, corpus)
    data = spec.train.data
    windows = split_windows(corpus, block_size, data.samples_per_epoch, data.steps, spec.train.batch_size,
                            ranks.world_size())
    task = Task.infer(spec.train.loss.name, layout.output_shape, (block_size,))
    return Prepared(layout, task, Examples(windows["train"]), [DataSplits(**windows)], corpus)


def open_session(spec: Spec, compiled: Compiled, prepared: Prepared, split: DataSplits, device: torch.device,
                 run_dir: Path) -> Session:
    """Everything `fit` needs for one run: scaled data on the device, loss, metrics, optimizer, ...

    Under torchrun every rank holds every split; the session knows its rank and wraps the model in
    DistributedDataParallel.
    """
    config: TrainConfig = spec.train
    world_size = ranks.world_size()
    sharded = strategy_of(config, world_size) == "fsdp"   # fsdp keeps bf16 parameters: no fp16 GradScaler
    replicas = config.parallel.tensor if sharded else 1
    locate = spec.source.locate
    if config.swa is not None and sharded_checkpoints(config):
        raise SpecError(Problem("swa averages a full copy of the model; it does not combine with strategy: fsdp",
                                locate(("train", "swa")), "TYPE_ERROR"))
    normalizer = Normalizer.fit(config.data.normalize, split.train)
    splits = DataSplits(*(normalizer(data).to(device) if data is not None else None
                          for data in (split.train, split.val, split.test)), fold=split.fold)
    model = compiled.module
    if config.qat is not None:   # before the optimizer and any checkpoint: the parameters stay the same objects
        with_location(lambda: prepare_qat(model), locate(("train", "qat")))
    loss_fn = build_loss(config.loss, locate(("train", "loss"))).to(device)
    _check_loss_fits(model, loss_fn, prepared.task, splits.train, config, locate(("train", "loss")))
    augment = build_augmenter(config.data.augment, prepared.layout, prepared.task, config.loss.name, normalizer,
                              config.seed, lambda index: locate(("train", "data", "augment", index)))
    scalar_calls = [call for call in config.metrics if call.name not in MATRIX_METRICS]
    metrics = {name: MetricSet.build(scalar_calls, prepared.task, device, metric_locator(spec))
               for name in ("train", "val")}
    optimizer = build_optimizer(config.optimizer, model, locate(("train", "optimizer")), lambda index: locate(
        ("train", "optimizer", config.optimizer.name, "groups", index, "params")))
    scheduler_path = ("train", "scheduler")
    schedulers = Schedulers.build(
        config, optimizer, count_steps(shard_size(len(splits.train), world_size // replicas), config.batch_size),
        lambda index: locate(scheduler_path + ((index,) if isinstance(config.scheduler, list) else ())))
    generator = torch.Generator()
    generator.manual_seed(config.seed)
    early = config.early_stopping
    forward = _compiled_forward(model, config)
    data_parallel = world_size > 1 and strategy_of(config, world_size) == "ddp"  # fsdp: the model is its own wrapper
    ddp = ranks.wrap_model(TrainedOutput(forward), device) if data_parallel else None
    return Session(
        spec=spec, config=config, device=device, model=model, forward=forward,
        ddp=ddp, rank=ranks.rank(), world_size=world_size,
        task=prepared.task, splits=splits, normalizer=normalizer, loss_fn=loss_fn, optimizer=optimizer,
        schedulers=schedulers, metrics=metrics, run_dir=run_dir, classes=prepared.examples.classes,
        fold=split.fold, generator=generator,
        tokenizer=None if prepared.tokenizer is None else prepared.tokenizer.state(),
        best=Tracker(config.checkpoint.monitor or config.default_monitor(), config.checkpoint.mode),
        early=None if early is None else Tracker(early.monitor or config.default_monitor(), early.mode,
                                                 early.min_delta, early.patience),
        scaler=torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" and not sharded else None,
        augment=augment, sharded=sharded_checkpoints(config), replicas=replicas,
        aux_loss=auxiliary_loss(model, config.aux_loss_weight, locate(("train", "aux_loss_weight"))),
        pruner=None if config.prune is None else Pruner(config.prune, model, config.epochs, locate),
    )


def with_location(call, location) -> Any:
    """Run `call`; a SpecError it raises without a location gets `location` (the spec key behind it)."""
    try:
        return call()
    except SpecError as error:
        for problem in error.problems:
            problem.location = problem.location or location
        raise


def metric_locator(spec: Spec):
    """`index -> Location` of `train.metrics[index]`."""
    return lambda index: spec.source.locate(("train", "metrics", index))


def data_location(spec: Spec) -> Location:
    data = spec.train.data
    return spec.source.locate(("train", "data", "dataset" if data.dataset else "source"))


def _compiled_forward(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    if not config.compile:
        return model
    options = config.compile if isinstance(config.compile, dict) else {}
    return torch.compile(model, **options)


class TrainedOutput(torch.nn.Module):
    """The model's first output alone, the one the loss sees: what DistributedDataParallel wraps,
    so parameters that feed only the other outputs are known to get no gradient."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return first_output(self.model(*inputs))


def _check_classes(task: Task, examples: Examples, where: Location) -> None:
    target = examples.data.target  # None for a streamed Dataset: its batches are checked as they are read
    if target is not None and task.kind == "multiclass" and target.numel() and (target.min() < 0 or target.max() >= task.num_classes):
        raise SpecError(Problem(f"the targets are classes {int(target.min())}..{int(target.max())} but the model "
                                f"outputs {task.num_classes} class scores", where, "DATA_ERROR"))


def _check_loss_fits(model, loss_fn, task: Task, train, config: TrainConfig, where: Location) -> None:
    """Run the loss once on two examples, so a shape mismatch is an error at the spec's `loss:` line."""
    sample = train.head(2)
    inputs, target = sample.inputs, sample.target
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = first_output(model(*inputs))
            try:
                loss_fn(*task.align(output, target))
            except (RuntimeError, ValueError, IndexError) as error:
                message = str(error).strip().splitlines()[0]
                raise SpecError(Problem(
                    f"loss {config.loss.name} cannot compare the model's output {list(output.shape[1:])} with "
                    f"targets {list(target.shape[1:])}: {message}", where, "DATA_ERROR")) from None
    finally:
        model.train(was_training)
