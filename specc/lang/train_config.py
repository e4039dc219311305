"""Schema of the `train:` section: data, loss, optimizer, schedulers, metrics, checkpoints.

Names stay names here (`AdamW`, `CosineAnnealingLR`): the config is the serializable source of
truth, and `specc.train.optim` / `specc.train.metrics` turn names into objects in one place. Validators check
every name and argument against the real torch class (imported lazily inside the validator, so
this module needs pydantic only) and raise ValueError with a did-you-mean; `spec.load` turns those
into file:line:col errors. docs/train.md documents every key.
"""
from __future__ import annotations

import functools
import inspect
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from specc.lang.augment_config import Augmentation
from specc.lang.call_args import ArgumentError, check_argument_types
from specc.lang.errors import SpecError, did_you_mean
from specc.lang.limits import limit
from specc.lang.parallel_config import CheckpointingName, FSDPConfig, ParallelConfig, StrategyName
from specc.lang.prune_config import PruneConfig
from specc.lang.rename_rules import compile_rules
from specc.lang.safety import check_code_path, safe_mode
from specc.lang.text_config import BpeTokenizer, check_text_keys, check_tokenizer_name

SOURCE_KINDS = ("sklearn", "csv", "npz", "synthetic", "folder", "parquet", "arrow", "npy", "text")
SKLEARN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")
SYNTHETIC_KINDS = ("classification", "regression", "sequence")
SYNTHETIC_ARGS = ("samples", "classes", "noise", "vocab_size")
METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "confusion_matrix",
           "rmse", "mse", "mae", "mape", "smape", "r2", "mbe", "perplexity", "bits_per_char", "bits_per_byte")
# Next-token metrics: they need class scores per position and a class-index loss.
LANGUAGE_METRICS = ("perplexity", "bits_per_char", "bits_per_byte")
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "confusion_matrix")
# Metrics that are not one number: kept in results, left out of metrics.csv/TensorBoard/monitors.
MATRIX_METRICS = ("confusion_matrix",)
LOWER_IS_BETTER = ("loss", "rmse", "mse", "mae", "mape", "smape", "perplexity", "mbe", "bits_per_char",
                   "bits_per_byte")
# Losses whose target is a class index (long), so the task is multiclass classification.
CLASS_INDEX_LOSSES = ("CrossEntropyLoss", "NLLLoss", "MultiMarginLoss")
EXTRA_LOSSES = ("mbe",)
# These need Python callables, other schedulers or a closure, which YAML cannot express.
UNSUPPORTED_SCHEDULERS = ("LambdaLR", "MultiplicativeLR", "ChainedScheduler", "SequentialLR", "LRScheduler")
UNSUPPORTED_OPTIMIZERS = ("LBFGS", "Optimizer")
# Scheduler arguments specc fills in from the run when they are left out.
FILLED_SCHEDULER_ARGS = {"CosineAnnealingLR": ("T_max",), "OneCycleLR": ("total_steps",)}
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# `compile:` keys that reach torch.compile, and their allowed values; anything else (`options`
# with a C++ compiler path, `trace.debug_dir`, ...) could run a program or write anywhere.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "eager", "aot_eager", "cudagraphs")
COMPILE_KEYS = ("mode", "fullgraph", "dynamic", "backend")


def check_dataset_path(dotted: str) -> None:
    """A `dataset:` path must name a class in the user's own code, checked before importing it.

    Raises:
        ValueError: safe mode, not a dotted path, or a standard-library or builtin module (which
            holds no Dataset and may run commands, e.g. `subprocess.getoutput`).
    """
    if safe_mode():
        raise ValueError(f"safe mode: `dataset: {dotted}` would import and run code; safe mode refuses "
                         f"every user Dataset (use a `source:` instead)")
    check_code_path(dotted, "dataset", "a subclass of torch.utils.data.Dataset")


_BYTE_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Call(BaseModel):
    """A class chosen by name with its keyword arguments: `Adam` or `{Adam: {lr: 0.001}}`."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict:
        # editors see the YAML forms, not the parsed object
        return {"description": cls.__doc__, "anyOf": [
            {"type": "string"},
            {"type": "object", "minProperties": 1, "maxProperties": 1,
             "additionalProperties": {"type": ["object", "null"]}}]}

    @classmethod
    def parse(cls, value: Any, what: str) -> "Call":
        if isinstance(value, Call):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, dict) and len(value) == 1:
            (name, kwargs), = value.items()
            if kwargs is None:
                kwargs = {}
            if not isinstance(kwargs, dict):
                raise ValueError(f"{what} arguments must be a mapping, e.g. {{{name}: {{arg: value}}}}")
            return cls(name=str(name), kwargs=dict(kwargs))
        raise ValueError(f"{what} must be a name or a one-key mapping like {{Name: {{arg: value}}}}")


class SplitConfig(_Strict):
    """Holdout fractions, or K-fold cross-validation (each fold in turn is the validation set)."""

    val: float = Field(0.15, ge=0, lt=1)     # validation fraction (holdout)
    test: float = Field(0.15, ge=0, lt=1)    # test fraction, held out before any fold or validation split
    kfold: Optional[int] = Field(None, ge=2)  # K runs; the mean ± std of their best metrics is reported
    seed: int = 0                            # split seed, separate from the training seed
    stratify: bool = True                    # keep class proportions in every split (class-index targets)

    @model_validator(mode="after")
    def _fractions_fit(self) -> "SplitConfig":
        if self.kfold is not None and "val" in self.model_fields_set:
            raise ValueError("with kfold each fold in turn is the validation set; remove `val`")
        if self.kfold is None and self.val + self.test >= 1:
            raise ValueError(f"val + test must leave training data (got {self.val} + {self.test})")
        return self


class ImageNormalize(_Strict):
    """Fixed per-channel image scaling: `(x - mean) / std`, e.g. ImageNet's statistics."""

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> "ImageNormalize":
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"normalize mean and std need one value per channel each "
                             f"(got {len(self.mean)} and {len(self.std)})")
        if any(value <= 0 for value in self.std):
            raise ValueError("normalize std values must be positive")
        return self


class DataConfig(_Strict):
    """Where the examples come from and how they are split and scaled."""

    source: Optional[str] = None    # sklearn:|csv:|npz:|synthetic:|folder:|parquet:|arrow:|npy:|text:
    dataset: Optional[str] = None   # dotted path of a torch Dataset class, e.g. my_pkg.data.MyDataset
    args: dict[str, Any] = Field(default_factory=dict)  # kwargs of `dataset`, or synthetic sizes
    target: Union[str, int, None] = None  # csv/parquet/arrow target column; npy: the targets' .npy file
    inputs: dict[str, str] = Field(default_factory=dict)  # input name -> parquet/arrow column or .npy file
    split: SplitConfig = Field(default_factory=SplitConfig)
    # float inputs; fitted on the training split; or fixed per-channel image statistics
    normalize: Union[Literal["none", "standard", "minmax"], ImageNormalize] = "none"
    streaming: Union[bool, Literal["auto"]] = "auto"  # auto: stream when the data exceed memory_budget
    memory_budget: Union[int, str, None] = None  # bytes or "4GB"; default a quarter of the RAM
    num_workers: Optional[int] = Field(None, ge=0)  # DataLoader processes; default from the core count
    prefetch_factor: int = Field(2, ge=1)  # batches each worker prepares ahead
    augment: list[Augmentation] = Field(default_factory=list)  # training split only, batched on the device
    # language models (text:, or parquet:/arrow: with text_column): see docs/train.md#text
    tokenizer: Union[BpeTokenizer, str, None] = None  # bytes | char | {bpe: {vocab_size: N}} | path/tokenizer.json
    text_column: Optional[str] = None                  # parquet/arrow: the column of text
    samples_per_epoch: Optional[int] = Field(None, ge=1)  # training windows per epoch
    steps: Optional[int] = Field(None, ge=1)              # or: training steps per epoch

    @field_validator("num_workers")
    @classmethod
    def _bounded_workers(cls, value: Optional[int]) -> Optional[int]:
        return _at_most(value, "MAX_DATA_WORKERS", "worker processes")

    @field_validator("prefetch_factor")
    @classmethod
    def _bounded_prefetch(cls, value: int) -> int:
        return _at_most(value, "MAX_PREFETCH", "batches ahead per worker")

    @field_validator("dataset")
    @classmethod
    def _dataset_path(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            check_dataset_path(value)
        return value

    @field_validator("tokenizer")
    @classmethod
    def _known_tokenizer(cls, value: Any) -> Any:
        return check_tokenizer_name(value)

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        kind, _, rest = value.partition(":")
        if kind not in SOURCE_KINDS or not rest:
            raise ValueError(f"source must be one of {', '.join(k + ':...' for k in SOURCE_KINDS)}"
                             f"{_hint(kind, SOURCE_KINDS)}")
        choices = {"sklearn": SKLEARN_DATASETS, "synthetic": SYNTHETIC_KINDS}.get(kind)
        if choices and rest not in choices:
            raise ValueError(f"unknown {kind} data '{rest}'; choose from {', '.join(choices)}{_hint(rest, choices)}")
        return value

    @field_validator("memory_budget")
    @classmethod
    def _byte_count(cls, value: Union[int, str, None]) -> Optional[int]:
        if value is None or isinstance(value, int):
            if isinstance(value, int) and value <= 0:
                raise ValueError("memory_budget must be positive")
            return value
        match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?B?)\s*", value.upper())
        if not match:
            raise ValueError(f"memory_budget must be bytes or a size like 4GB or 512MB (got {value!r})")
        return int(float(match.group(1)) * _BYTE_UNITS[match.group(2) if match.group(2) in _BYTE_UNITS
                                                        else match.group(2) + "B"])

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if (self.source is None) == (self.dataset is None):
            raise ValueError("give exactly one of `source` (sklearn:/csv:/npz:/synthetic:/folder:/parquet:/arrow:/npy:/text:) "
                             "or `dataset`")
        if self.source and self.source.startswith("synthetic:"):
            for key in self.args:
                if key not in SYNTHETIC_ARGS:
                    raise ValueError(f"synthetic data has no argument '{key}'{_hint(key, SYNTHETIC_ARGS)}; "
                                     f"it takes {', '.join(SYNTHETIC_ARGS)}")
        elif self.source and self.args:
            raise ValueError("`args` applies to `dataset` and synthetic sources only")
        if self.inputs and self.kind not in ("parquet", "arrow", "npy"):
            raise ValueError("`inputs` applies to parquet:, arrow: and npy: sources only")
        self._check_text()
        return self

    def _check_text(self) -> None:
        check_text_keys(self)

    @property
    def is_text(self) -> bool:
        """Language-model data: tokenised text read as block_size windows."""
        return self.kind == "text" or self.text_column is not None

    @property
    def kind(self) -> str:
        return "dataset" if self.dataset else self.source.partition(":")[0]

    @property
    def location(self) -> str:
        return self.dataset or self.source.partition(":")[2]


class EarlyStoppingConfig(_Strict):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs."""

    monitor: Optional[str] = None  # default: val_loss (train_loss without a validation split)
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for losses and errors, max otherwise
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)


class CheckpointConfig(_Strict):
    """best.pt follows `monitor`; last.pt is written after every epoch."""

    monitor: Optional[str] = None  # default: val_loss (train_loss without a validation split)
    mode: Literal["auto", "min", "max"] = "auto"


class SWAConfig(_Strict):
    """Stochastic weight averaging: AveragedModel from `start_epoch`, SWALR, then update_bn."""

    start_epoch: int = Field(ge=1)  # 1-based epoch from which weights are averaged
    lr: float = Field(gt=0)         # the SWALR learning rate
    anneal_epochs: int = Field(5, ge=1)
    anneal_strategy: Literal["cos", "linear"] = "cos"


class InitFromConfig(_Strict):
    """`init_from: {path: ..., map: auto, allow_missing: [...]}`: weights to start training from."""

    path: str
    map: Union[Literal["auto", "strict"], dict[str, str]] = "auto"   # or rename rules {pattern: replacement}
    allow_missing: list[str] = Field(default_factory=list)           # globs that may stay unmatched (a new head)

    @field_validator("map")
    @classmethod
    def _rules_are_bounded(cls, value: Any) -> Any:
        if isinstance(value, dict):   # a `re:` rule that could backtrack for minutes is refused at check time
            try:
                compile_rules(value)
            except SpecError as error:
                raise ValueError(error.first.message) from None
        return value


class TrainConfig(_Strict):
    """The `train:` section of a spec."""

    data: DataConfig
    batch_size: int = Field(64, ge=1)
    eval_batch_size: Optional[int] = Field(None, ge=1)  # default: 4 × batch_size (no gradients to keep)
    epochs: int = Field(10, ge=1)
    loss: Call
    metrics: list[Call] = Field(default_factory=list)
    optimizer: Call = Field(default_factory=lambda: Call(name="Adam", kwargs={"lr": 0.001}))
    scheduler: Union[Call, list[Call], None] = None  # a list is chained: every scheduler steps in turn
    early_stopping: Optional[EarlyStoppingConfig] = None
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    swa: Optional[SWAConfig] = None
    grad_clip: Optional[float] = Field(None, gt=0)  # max total gradient norm
    aux_loss_weight: float = Field(0.0, ge=0)  # × the MoE layers' load-balancing loss, added to the loss
    amp: bool = False                # bf16 autocast on CPU, fp16 + GradScaler on CUDA
    compile: Union[bool, dict[str, Any]] = False  # true, or torch.compile kwargs: mode, fullgraph, dynamic, backend
    device: str = "auto"             # auto = cuda > mps > cpu
    threads: Optional[int] = Field(None, ge=1)  # torch CPU threads; small models run best on 1 on a busy machine
    seed: int = 0                    # model init, batch order, dropout
    log_every: int = Field(20, ge=1)  # steps between progress updates (each costs one host sync)
    log_histograms: Union[bool, int] = False  # TensorBoard weight/gradient histograms: every epoch (true) or every N
    init_from: Union[str, InitFromConfig, None] = None  # fine-tuning: start from these weights (path or mapping)
    freeze: list[str] = Field(default_factory=list)     # globs of parameters kept fixed ("features.*")
    strategy: StrategyName = None        # ddp | fsdp (docs/distributed.md); default: ddp on several processes
    fsdp: FSDPConfig = Field(default_factory=FSDPConfig)        # strategy fsdp: units, resharding, CPU offload
    activation_checkpointing: CheckpointingName = "none"        # blocks: recompute each block's activations
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)  # {tensor: N}: tensor parallel (with fsdp)
    prune: Optional[PruneConfig] = None  # gradual magnitude pruning (specc.train.pruning)
    qat: Optional[Literal["int8"]] = None  # quantization-aware training: int8 fake quantization of Linear layers

    @field_validator("threads")
    @classmethod
    def _bounded_threads(cls, value: Optional[int]) -> Optional[int]:
        return _at_most(value, "MAX_THREADS", "threads")

    @model_validator(mode="after")
    def _prune_fits_the_run(self) -> "TrainConfig":
        prune = self.prune
        if prune is None:
            return self
        if prune.schedule.end_epoch is not None and prune.schedule.end_epoch > self.epochs:
            raise ArgumentError(f"prune end_epoch {prune.schedule.end_epoch} is after the last epoch ({self.epochs})",
                                ("prune", "schedule", "end_epoch"))
        if prune.schedule.start_epoch > self.epochs:
            raise ArgumentError(f"prune start_epoch {prune.schedule.start_epoch} is after the last epoch ({self.epochs})",
                                ("prune", "schedule", "start_epoch"))
        if self.swa is not None:   # AveragedModel would average masked and unmasked copies of each weight
            raise ArgumentError("prune and swa cannot be combined: remove one of them", ("prune",))
        if self.strategy == "fsdp":   # torch.nn.utils.prune reparametrises whole tensors, not DTensor shards
            raise ArgumentError("prune works on whole tensors; it does not combine with strategy: fsdp", ("prune",))
        return self

    @model_validator(mode="after")
    def _qat_fits_the_run(self) -> "TrainConfig":
        if self.qat is None:
            return self
        if self.strategy == "fsdp":   # torchao's fake-quantized layers are not FSDP2 units
            raise ArgumentError("qat does not combine with strategy: fsdp", ("qat",))
        if self.prune is not None:    # pruning reparametrises the weights the fake quantizer reads
            raise ArgumentError("qat and prune cannot be combined: prune first, then fine-tune with qat", ("qat",))
        return self

    @field_validator("log_histograms")
    @classmethod
    def _check_log_histograms(cls, value: Union[bool, int]) -> Union[bool, int]:
        if not isinstance(value, bool) and value < 1:
            raise ValueError("log_histograms must be true, false or a number of epochs (1 or more)")
        return value

    @field_validator("loss", mode="before")
    @classmethod
    def _check_loss(cls, value: Any) -> Call:
        call = Call.parse(value, "loss")
        if call.name in EXTRA_LOSSES:
            if call.kwargs:
                raise ValueError(f"loss {call.name} takes no arguments")
            return call
        _check_call(call, _torch_classes("loss"), "loss", skip=())
        if call.kwargs.get("reduction") == "none":
            raise ValueError("the training loss must reduce to one number; use reduction: mean or sum")
        return call

    @field_validator("optimizer", mode="before")
    @classmethod
    def _check_optimizer(cls, value: Any) -> Call:
        call = Call.parse(value, "optimizer")
        kwargs = dict(call.kwargs)
        groups = kwargs.pop("groups", [])
        _check_call(Call(name=call.name, kwargs=kwargs), _torch_classes("optimizer"), "optimizer", skip=("params",))
        _check_groups(call.name, groups)
        return call

    @field_validator("scheduler", mode="before")
    @classmethod
    def _check_scheduler(cls, value: Any, info: ValidationInfo) -> Union[Call, list[Call], None]:
        if value is None:
            return None
        calls = [Call.parse(item, "scheduler") for item in (value if isinstance(value, list) else [value])]
        for call in calls:
            kwargs = {key: item for key, item in call.kwargs.items() if key not in ("interval", "monitor")}
            if call.kwargs.get("interval", "epoch") not in ("epoch", "step"):
                raise ValueError(f"scheduler {call.name}: interval must be epoch or step")
            if "monitor" in call.kwargs and call.name != "ReduceLROnPlateau":
                raise ValueError(f"scheduler {call.name}: only ReduceLROnPlateau watches a monitor")
            _check_call(Call(name=call.name, kwargs=kwargs), _torch_classes("scheduler"), "scheduler",
                        skip=("optimizer",), filled=FILLED_SCHEDULER_ARGS.get(call.name, ()))
            _check_monitor(call.kwargs.get("monitor"), f"scheduler {call.name} monitor", info)
        return calls if isinstance(value, list) else calls[0]

    @field_validator("metrics", mode="before")
    @classmethod
    def _check_metrics(cls, value: Any) -> list[Call]:
        if not isinstance(value, list):
            value = [value]
        calls = [Call.parse(item, "metric") for item in value]
        seen = set()
        for call in calls:
            if call.name not in METRICS:
                raise ValueError(f"unknown metric '{call.name}'{_hint(call.name, METRICS)}; "
                                 f"choose from {', '.join(METRICS)}")
            if call.name in seen:
                raise ValueError(f"metric '{call.name}' is listed twice")
            seen.add(call.name)
        return calls

    @field_validator("compile")
    @classmethod
    def _check_compile(cls, value: Union[bool, dict[str, Any]]) -> Union[bool, dict[str, Any]]:
        if isinstance(value, dict):
            check_compile_options(value)
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.match(value):
            raise ValueError("device must be auto, cpu, cuda, cuda:<index> or mps")
        return value

    @field_validator("early_stopping", "checkpoint")
    @classmethod
    def _check_monitored(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            _check_monitor(value.monitor, f"{info.field_name}.monitor", info)
        return value

    @field_validator("swa")
    @classmethod
    def _swa_in_range(cls, value: Optional[SWAConfig], info: ValidationInfo) -> Optional[SWAConfig]:
        epochs = info.data.get("epochs")
        if value is not None and epochs is not None and value.start_epoch > epochs:
            raise ValueError(f"swa.start_epoch ({value.start_epoch}) is after the last epoch ({epochs})")
        return value

    # --- derived values, used by the loop -------------------------------------------------------
    @property
    def schedulers(self) -> list[Call]:
        if self.scheduler is None:
            return []
        return self.scheduler if isinstance(self.scheduler, list) else [self.scheduler]

    @property
    def has_validation(self) -> bool:
        return _has_validation(self.data)

    def default_monitor(self) -> str:
        return "val_loss" if self.has_validation else "train_loss"


def check_compile_options(options: dict[str, Any]) -> None:
    """Only `mode`, `fullgraph`, `dynamic` and `backend` (from fixed lists) reach torch.compile.

    Raises:
        ValueError: any other key or value, or any option at all in safe mode.
    """
    if options and safe_mode():
        raise ValueError("safe mode: compile options reach a compiler; use `compile: true` or false")
    for key, value in options.items():
        if key not in COMPILE_KEYS:
            raise ValueError(f"compile has no option '{key}'{_hint(str(key), COMPILE_KEYS)}; it takes "
                             f"{', '.join(COMPILE_KEYS)} (other torch.compile options can run programs)")
    mode, backend = options.get("mode"), options.get("backend")
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}{_hint(str(mode), COMPILE_MODES)}")
    if backend is not None and backend not in COMPILE_BACKENDS:
        raise ValueError(f"compile backend must be one of {', '.join(COMPILE_BACKENDS)}"
                         f"{_hint(str(backend), COMPILE_BACKENDS)}")
    for key in ("fullgraph", "dynamic"):
        if key in options and not isinstance(options[key], bool) and not (key == "dynamic" and options[key] is None):
            raise ValueError(f"compile {key} must be true or false")


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """`min` for losses and errors, `max` for scores, unless `mode` says otherwise."""
    if mode != "auto":
        return mode
    return "min" if monitor.split("_", 1)[-1] in LOWER_IS_BETTER else "max"


def _has_validation(data: DataConfig) -> bool:
    return data.split.kfold is not None or data.split.val > 0


def _monitor_names(metrics: list[Call], has_validation: bool) -> list[str]:
    splits = ("train", "val") if has_validation else ("train",)
    scalars = ["loss"] + [call.name for call in metrics if call.name not in MATRIX_METRICS]
    return [f"{split}_{name}" for split in splits for name in scalars]


def _check_monitor(monitor: Optional[str], what: str, info: ValidationInfo) -> None:
    """A monitor must name a logged number; skipped when data or metrics failed validation already."""
    if monitor is None or "data" not in info.data or "metrics" not in info.data:
        return
    names = _monitor_names(info.data["metrics"], _has_validation(info.data["data"]))
    if monitor not in names:
        raise ValueError(f"{what} '{monitor}' is not logged{_hint(monitor, names)}; choose from {', '.join(names)}")


def _hint(word: str, choices) -> str:
    suggestion = did_you_mean(word, choices)
    return f" (did you mean '{suggestion}'?)" if suggestion else ""


def _check_call(call: Call, classes: dict[str, Any], what: str, skip: tuple, filled: tuple = (),
                check_missing: bool = True) -> None:
    """The class exists and accepts exactly these keyword arguments (missing required ones too)."""
    if call.name not in classes:
        raise ValueError(f"unknown {what} '{call.name}'{_hint(call.name, classes)}")
    parameters = inspect.signature(classes[call.name]).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    names = [name for name, p in parameters.items() if name not in skip
             and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in call.kwargs:
        if key not in names and not accepts_any:
            raise ValueError(f"{what} {call.name} has no argument '{key}'{_hint(key, names)}; "
                             f"it takes {', '.join(names)}")
    missing = [name for name in names if check_missing and parameters[name].default is inspect.Parameter.empty
               and name not in call.kwargs and name not in filled]
    if missing:
        raise ValueError(f"{what} {call.name} needs {', '.join(missing)}")
    check_argument_types(classes[call.name], call.name, call.kwargs, what, skip)


def _check_groups(optimizer: str, groups: Any) -> None:
    """`groups: [{params: "head.*", lr: 0.01}]`: each needs a name pattern plus optimizer arguments."""
    if not isinstance(groups, list):
        raise ValueError("optimizer groups must be a list like [{params: 'head.*', lr: 0.01}]")
    for index, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("params"), (str, list)):
            raise ValueError("each optimizer group needs `params`: a parameter name pattern such as 'head.*'")
        options = {key: item for key, item in group.items() if key != "params"}
        # a group inherits every argument it leaves out from the optimizer itself
        try:
            _check_call(Call(name=optimizer, kwargs=options), _torch_classes("optimizer"), "optimizer group",
                        skip=("params",), check_missing=False)
        except ArgumentError as error:   # located at the group's own key
            raise ArgumentError(str(error), (optimizer, "groups", index, error.subpath[-1])) from None


@functools.lru_cache(maxsize=None)
def _torch_classes(kind: str) -> dict[str, Any]:
    """Loss, optimizer or scheduler classes by name, found by introspection (torch imported here)."""
    import torch

    if kind == "loss":
        base, namespace, excluded = torch.nn.modules.loss._Loss, torch.nn, ()
    elif kind == "optimizer":
        base, namespace, excluded = torch.optim.Optimizer, torch.optim, UNSUPPORTED_OPTIMIZERS
    else:
        base, namespace, excluded = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau), \
            torch.optim.lr_scheduler, UNSUPPORTED_SCHEDULERS
    return {name: item for name, item in vars(namespace).items()
            if isinstance(item, type) and issubclass(item, base) and not name.startswith("_") and name not in excluded}


def _at_most(value: Optional[int], bound: str, what: str) -> Optional[int]:
    """`value` if it is within the bound `bound` (specc.lang.limits): `num_workers: 10000` would
    never start, `threads: 100000` runs out of memory."""
    highest = limit(bound)
    if value is not None and value > highest:
        raise ValueError(f"{value:,} is more than {highest:,} {what}; set SPECC_{bound} to raise the bound")
    return value
