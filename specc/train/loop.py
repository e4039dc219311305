"""The training loop: a `Session` holds one run's state (or one fold's), `fit` runs its epochs.

Per step: forward under autocast, loss, backward, optional grad clipping, optimizer step. Step
losses stay on the device and are read back (and checked for nan/inf) only every `log_every`
steps, so the loop does not wait on the accelerator after every batch.

Under torchrun (specc/ranks.py) each rank trains on its shard of every batch through
DistributedDataParallel; losses and metrics are summed over the ranks, decisions to stop are taken
together, and only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel

from specc.train import ranks
from specc.weights.checkpoint import restore_rng, rng_state
from specc.train.sharded_state import remove_checkpoint, write_checkpoint
from specc.train.data import DataSplits, Normalizer, TensorData, batches, shard_size
from specc.train.metrics import MetricSet, Task
from specc.train.optim import Schedulers
from specc.train.pruning import Pruner, plain_state_dict
from specc.train.progress import INTERRUPTED, EpochProgress, NonFiniteLoss, check_finite, epoch_progress
from specc.train.run_log import RunLog
from specc.lang.spec import Spec
from specc.lang.train_config import TrainConfig, monitor_mode


class Tracker:
    """Best value of a monitor; with `patience`, also counts epochs without improvement."""

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0, patience: int | None = None):
        self.monitor, self.mode = monitor, monitor_mode(monitor, mode)
        self.min_delta, self.patience = min_delta, patience
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is a new best."""
        if not math.isfinite(value):  # a nan/inf epoch is never the best
            improved = False
        elif self.best is None:
            improved = True
        elif self.mode == "min":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


@dataclass
class Session:
    """Everything one training run needs; built by `specc.train.training`, advanced by `fit`."""

    spec: Spec
    config: TrainConfig
    device: torch.device
    model: nn.Module                       # whose weights are saved
    forward: nn.Module                     # `model`, or its torch.compile wrapper
    task: Task
    splits: DataSplits
    normalizer: Normalizer
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    schedulers: Schedulers
    metrics: dict[str, MetricSet]          # scalar metrics per split, updated every batch
    best: Tracker
    early: Tracker | None
    run_dir: Path
    classes: list[str] | None = None
    fold: int | None = None
    scaler: torch.amp.GradScaler | None = None
    generator: torch.Generator = field(default_factory=torch.Generator)
    swa_model: AveragedModel | None = None
    swa_scheduler: SWALR | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0                         # completed epochs
    stop_requested: bool = False           # set by Ctrl-C; the loop stops after the current step
    rank: int = 0
    world_size: int = 1
    ddp: nn.Module | None = None           # `forward` in DistributedDataParallel, under torchrun
    progress: EpochProgress | None = None  # the epoch being trained, between steps
    aux_loss: Callable[[], torch.Tensor] | None = None   # weighted MoE load-balancing loss of the last forward
    resume_point: dict[str, Any] | None = None  # from interrupted.pt: where the next epoch continues
    augment: Callable | None = None        # (inputs, target, (epoch, step, rank)) -> (inputs, loss target):
    # training batches only (specc.train.augment)
    tokenizer: dict[str, str] | None = None  # text data: the tokenizer's state (specc.train.tokenizer)
    sharded: bool = False                  # strategy fsdp: checkpoints are DCP folders (specc.train.sharded_state)
    replicas: int = 1                      # parallel.tensor: processes that see the same batches
    pruner: Pruner | None = None           # `train.prune:` (specc.train.pruning)

    @property
    def data_rank(self) -> int:
        """Which share of each batch this process trains on (a tensor-parallel group shares one)."""
        return self.rank // self.replicas

    @property
    def data_world_size(self) -> int:
        return self.world_size // self.replicas

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def training_forward(self) -> nn.Module:
        """What a training step calls. Evaluation calls `forward`: DDP would sync buffers there."""
        return self.forward if self.ddp is None else self.ddp

    def evaluate(self, model: nn.Module, data: TensorData, metrics: MetricSet) -> dict[str, Any]:
        """`evaluate_split` with this run's loss, task, batch size and autocast, on this rank's shard."""
        return evaluate_split(model, data, loss_fn=self.loss_fn, task=self.task, metrics=metrics,
                              batch_size=eval_batch_size(self.config), autocast=self.autocast,
                              rank=self.data_rank, world_size=self.data_world_size)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CPU/MPS, fp16 on CUDA (with the GradScaler), or nothing."""
        if not self.config.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def in_swa(self, epoch: int) -> bool:
        return self.config.swa is not None and epoch >= self.config.swa.start_epoch

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything `--resume` needs to continue exactly (see specc.weights.checkpoint for the layout)."""
        return {
            "spec": self.spec.raw, "epoch": self.epoch, "schedulers": self.schedulers.state_dict(),
            **({} if self.sharded else {"model": plain_state_dict(self.model), "optimizer": self.optimizer.state_dict()}),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "swa": None if self.swa_model is None else {
                "model": self.swa_model.state_dict(), "scheduler": self.swa_scheduler.state_dict()},
            "rng": rng_state(self.generator),
            "trackers": {"best": self.best.state_dict(), "early": self.early.state_dict() if self.early else None},
            "history": self.history, "normalizer": self.normalizer.state_dict(),
            "classes": self.classes, "fold": self.fold, "tokenizer": self.tokenizer,
            "task": {"kind": self.task.kind, "num_classes": self.task.num_classes,
                     "classes_first": self.task.classes_first},
            "prune": None if self.pruner is None else self.pruner.state_dict(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by `checkpoint_state`."""
        if not state.get("sharded"):  # a sharded checkpoint's tensors are restored by specc.train.sharded_state
            self.model.load_state_dict(state["model"])
            if self.pruner is not None and state.get("prune"):   # masks go back on the plain weights just loaded
                self.pruner.load_state_dict(state["prune"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.schedulers.load_state_dict(state["schedulers"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if state["swa"] is not None:
            self.start_swa()
            self.swa_model.load_state_dict(state["swa"]["model"])
            self.swa_scheduler.load_state_dict(state["swa"]["scheduler"])
        restore_rng(state["rng"], self.generator)
        self.best.load_state_dict(state["trackers"]["best"])
        if self.early is not None and state["trackers"]["early"] is not None:
            self.early.load_state_dict(state["trackers"]["early"])
        self.history, self.epoch = list(state["history"]), state["epoch"]
        self.resume_point = state.get("interrupted")

    def start_swa(self) -> None:
        """Begin averaging (at the start of `swa.start_epoch`, before its optimizer steps)."""
        swa = self.config.swa
        self.swa_model = AveragedModel(self.model)
        self.swa_scheduler = SWALR(self.optimizer, swa_lr=swa.lr, anneal_epochs=swa.anneal_epochs,
                                   anneal_strategy=swa.anneal_strategy)


def fit(session: Session, log: RunLog) -> tuple[str, str]:
    """Train from `session.epoch + 1` to the configured epochs.

    Returns:
        (status, message): status is completed, early_stopped, diverged or interrupted.
    """
    try:
        with _ctrl_c_requests_stop(session):
            return _run_epochs(session, log)
    except NonFiniteLoss as error:
        kept = (f"; last.pt keeps epoch {session.epoch}, best.pt epoch {session.best.best_epoch}"
                if session.epoch else "")
        return "diverged", f"{error}{kept}"
    except KeyboardInterrupt:
        return "interrupted", _save_interrupted(session)


def _save_interrupted(session: Session) -> str:
    """interrupted.pt holds the state after the last completed step, labelled with its epoch and step;
    last.pt (the last complete epoch) is left as it is."""
    progress, kept = session.progress, (f"; last.pt keeps epoch {session.epoch}" if session.epoch else "")
    epoch = session.epoch + 1
    if progress is None or progress.in_step or progress.step == 0:
        return f"interrupted during epoch {epoch} (not between two steps: nothing new saved){kept}"
    path = write_checkpoint(session, INTERRUPTED, extra={"interrupted": progress.state_dict(session.metrics["train"])})
    return (f"interrupted during epoch {epoch} after step {progress.step}: saved {path} "
            f"(--resume it to continue exactly){kept}")


def _run_epochs(session: Session, log: RunLog) -> tuple[str, str]:
    for epoch in range(session.epoch + 1, session.config.epochs + 1):
        record = run_epoch(session, epoch, log)
        session.history.append(record)
        session.epoch = epoch
        # while pruning is under way a better epoch is a denser model: best.pt waits for the final sparsity
        pruning = session.pruner is not None and epoch < session.pruner.end
        improved = not pruning and session.best.update(record[session.best.monitor], epoch)
        if session.early is not None:
            session.early.update(record[session.early.monitor], epoch)
        if improved:
            write_checkpoint(session, "best.pt", verify=True)
        write_checkpoint(session, "last.pt")
        if session.is_main:
            remove_checkpoint(session.run_dir, INTERRUPTED)  # last.pt has moved past it
            log.epoch_finished(record, session.history)
        if session.early is not None and ranks.any_rank(session.early.should_stop):
            return "early_stopped", (f"early stopping: {session.early.monitor} did not improve for "
                                     f"{session.early.patience} epochs (stopped after epoch {epoch})")
    return "completed", ""


@contextlib.contextmanager
def _ctrl_c_requests_stop(session: Session):
    """The first Ctrl-C asks the loop to stop after the current step (never halfway through writing
    a file or holding a lock); a second one interrupts at once. Under torchrun the ranks stop at
    the same step (see `_stop_requested`), and a second Ctrl-C is the launcher's to act on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        session.stop_requested = True
        if session.world_size == 1:
            signal.signal(signum, previous[signum])

    # SIGTERM (a scheduler or `kill`) stops the same way, so summary.json and interrupted.pt are written
    previous = {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_epoch(session: Session, epoch: int, log: RunLog) -> dict[str, Any]:
    """One epoch: train, validate, step the schedulers (or SWA); returns the epoch's record."""
    started = time.perf_counter()
    if session.in_swa(epoch) and session.swa_model is None:
        session.start_swa()
    point = session.resume_point  # an epoch continued from interrupted.pt records the rate it began with
    learning_rate = point["lr"] if point and point["epoch"] == epoch else session.optimizer.param_groups[0]["lr"]
    if session.pruner is not None:   # the cut comes before the epoch's steps (repeating it on resume changes nothing)
        session.pruner.step(epoch)
    train = session.splits.train
    streamed = getattr(train, "streamed", False)
    if streamed:
        train.load_seconds = 0.0  # a streamed split adds up its waits for batches here
    record: dict[str, Any] = {"epoch": epoch, **train_epoch(session, epoch, log)}
    loading = train.load_seconds if streamed else 0.0
    if session.splits.val is not None and len(session.splits.val):
        record.update(_prefixed("val", session.evaluate(session.forward, session.splits.val,
                                                        session.metrics["val"])))
    # the validation loss and every monitor decide something: a nan there would pick a bad checkpoint
    check_finite(record, {"val_loss", session.best.monitor, *(e.monitor for e in session.schedulers.entries),
                          *([session.early.monitor] if session.early else [])}, epoch)
    record["lr"] = learning_rate
    if session.pruner is not None:
        record["sparsity"] = round(session.pruner.sparsity(), 6)
    if session.in_swa(epoch):
        session.swa_model.update_parameters(session.model)
        session.swa_scheduler.step()
    else:
        session.schedulers.step_epoch(record)
    if streamed:
        record["data_seconds"] = round(loading, 3)  # time the training loop waited for the loader
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def train_epoch(session: Session, epoch: int, log: RunLog) -> dict[str, float]:
    """One pass over the training split.

    Step losses stay on the device in a list; they are stacked and checked (mean, nan/inf) only
    every `log_every` steps and at the end, so a step adds no tensor work and no host sync.
    """
    config, train = session.config, session.splits.train
    session.training_forward.train()
    point, session.resume_point = session.resume_point, None
    progress = session.progress = epoch_progress(epoch, point, session.generator, session.metrics["train"],
                                                 train.device, session.optimizer.param_groups[0]["lr"])
    losses, sizes, skip = progress.losses, progress.sizes, progress.step
    steps = count_steps(shard_size(len(train), session.data_world_size), config.batch_size)
    log.epoch_started(epoch, steps, session.optimizer.param_groups[0]["lr"])
    for step, (inputs, target) in enumerate(batches(train, config.batch_size, generator=session.generator,
                                                    drop_single=True, rank=session.data_rank,
                                                    world_size=session.data_world_size, pad=True), start=1):
        if step <= skip:  # done before the interruption this epoch resumes from
            log.step(None)
            continue
        progress.in_step = True
        loss_target = target
        if session.augment is not None:  # metrics keep the true targets; the loss sees mixed ones
            inputs, loss_target = session.augment(inputs, target, (epoch, step, session.data_rank))
        output, loss = train_step(session, inputs, loss_target)
        losses.append(loss)
        sizes.append(len(target))
        session.metrics["train"].update(output, target)
        if not session.in_swa(epoch):
            session.schedulers.step_batch()
        progress.step, progress.in_step = step, False
        if _stop_requested(session, step % config.log_every == 0 or step == steps):
            raise KeyboardInterrupt
        log.step(_checked_mean(losses, sizes, epoch) if step % config.log_every == 0 else None)
    session.progress = None
    ranks.share_buffers(session.model)
    loss = _checked_mean(losses, sizes, epoch)
    session.metrics["train"].units = getattr(train, "units", {})
    return {"train_loss": loss, **_prefixed("train", session.metrics["train"].compute(loss))}


def _stop_requested(session: Session, agreement_point: bool) -> bool:
    """Ctrl-C: one process stops after the current step; ranks stop at the next agreement point
    (a log point or the epoch's last step) all together, since each step waits for every rank."""
    if session.world_size == 1:
        return session.stop_requested
    return agreement_point and ranks.any_rank(session.stop_requested)


def train_step(session: Session, inputs: tuple[torch.Tensor, ...], target: torch.Tensor):
    """Forward, loss, backward, clip, step. Returns the detached output and float32 loss."""
    with session.autocast():
        output = first_output(session.training_forward(*inputs))
        loss = session.loss_fn(*session.task.align(output, target))
        if session.aux_loss is not None:
            loss = loss + session.aux_loss()
    session.optimizer.zero_grad(set_to_none=True)
    clip = session.config.grad_clip
    if session.scaler is not None:
        session.scaler.scale(loss).backward()
        if clip:
            session.scaler.unscale_(session.optimizer)
            nn.utils.clip_grad_norm_(session.model.parameters(), clip)
        session.scaler.step(session.optimizer)
        session.scaler.update()
    else:
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(session.model.parameters(), clip)
        session.optimizer.step()
    return output.detach(), loss.detach().float()


@torch.no_grad()
def evaluate_split(model: nn.Module, data: TensorData, *, loss_fn: nn.Module, task: Task, metrics: MetricSet,
                   batch_size: int, autocast: Callable[[], Any] = contextlib.nullcontext,
                   rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Mean loss and metrics of `model` on one split, in eval mode (train mode restored after).

    Under torchrun each rank evaluates every world_size-th example (no padding, so no example
    counts twice); the loss sums and the torchmetrics states are summed over the ranks.
    """
    was_training = model.training
    model.eval()
    try:
        loss_sum, count, steps = torch.zeros((), device=data.device), 0, 0
        for inputs, target in batches(data, batch_size, rank=rank, world_size=world_size):
            with autocast():
                output = first_output(model(*inputs))
                loss = loss_fn(*task.align(output, target))
            loss_sum += loss.float() * len(target)
            count += len(target)
            steps += 1
            metrics.update(output, target)
        lockstep = math.ceil(shard_size(len(data), world_size) / batch_size) if isinstance(data, TensorData) else 0
        for _ in range(lockstep - steps):
            with autocast():  # a sharded model gathers its weights in every forward: all ranks run as many
                model(*data.head(1).inputs)
        loss_sum, count = ranks.reduce_sum(torch.stack([loss_sum, loss_sum.new_tensor(count)]))
        loss = (loss_sum / count.clamp(min=1)).item()
        metrics.units = getattr(data, "units", {})   # text: tokens per char / byte, for bits_per_*
        return {"loss": loss, **metrics.compute(loss)}
    finally:
        model.train(was_training)


def update_batch_norm(model: nn.Module, data: TensorData, batch_size: int) -> None:
    """Recompute BatchNorm statistics for averaged (SWA) weights: one pass, cumulative average."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None = cumulative moving average over the pass
    was_training = model.training
    model.train()
    with torch.no_grad():
        for inputs, _ in batches(data, batch_size):
            model(*inputs)
    for norm, momentum in momenta.items():
        norm.momentum = momentum
    model.train(was_training)


def first_output(output: Any) -> torch.Tensor:
    """Specs with several outputs train on the first one."""
    return output[0] if isinstance(output, (tuple, list)) else output


def count_steps(examples: int, batch_size: int) -> int:
    """Training batches per epoch (a trailing batch of one example is dropped, see `batches`)."""
    steps = math.ceil(examples / batch_size)
    return steps - 1 if steps > 1 and examples % batch_size == 1 else steps


def eval_batch_size(config: TrainConfig) -> int:
    return config.eval_batch_size or 4 * config.batch_size


def _checked_mean(losses: list[torch.Tensor], sizes: list[int], epoch: int) -> float:
    """The example-weighted mean of the step losses so far (over every rank); raises at the first
    nan/inf step, on every rank alike."""
    if not losses:
        return math.nan
    stacked = torch.stack(losses)
    weights = torch.tensor(sizes, dtype=stacked.dtype, device=stacked.device)
    sums, counts = ranks.reduce_sum(torch.stack([stacked * weights, weights]))  # (steps,) each
    step_means = sums / counts
    if not bool(torch.isfinite(step_means).all()):
        step = int((~torch.isfinite(step_means)).nonzero()[0, 0]) + 1
        raise NonFiniteLoss(f"the training loss became {float(step_means[step - 1])} at epoch {epoch}, "
                            f"step {step}; stopped")
    return float(sums.sum() / counts.sum())


def _prefixed(split: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{split}_{name}": value for name, value in values.items()}
