"""The PyTorch Lightning baseline of the training benchmark (imported only when it runs: Lightning
takes seconds to import).

The same model, batches and optimizer as the other loops, wrapped in a `LightningModule`; the
progress bar, logger, checkpointing, model summary and sanity check are all off, so the Trainer
does only what the other loops do per step.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Callable, Iterable

import lightning
import torch
from torch import nn


class Wrapped(lightning.LightningModule):
    """A plain model and its optimizer, as Lightning wants them."""

    def __init__(self, model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]):
        super().__init__()
        self.model = model
        self.loss_fn = nn.CrossEntropyLoss()
        self.make_optimizer = make_optimizer

    def training_step(self, batch, batch_index):
        inputs, target = batch
        return self.loss_fn(self.model(inputs), target)

    def configure_optimizers(self):
        return self.make_optimizer(self.model)


class EpochTimer(lightning.Callback):
    """CPU seconds of each training epoch, between Lightning's own epoch hooks."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.process_time()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.seconds.append(time.process_time() - self._start)


class LightningEpochs:
    """`lightning.Trainer` one epoch per call: each call raises `max_epochs` by one and fits again,
    which continues where the last fit stopped (same module, optimizer and batches)."""

    def __init__(self, model: nn.Module, batches: Iterable,
                 make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]):
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no "GPU available: False" banner
        self.timer = EpochTimer()
        self.trainer = lightning.Trainer(
            max_epochs=0, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            callbacks=[self.timer])
        self.module = Wrapped(model, make_optimizer)
        self.batches = batches

    def __call__(self) -> float:
        self.trainer.fit_loop.max_epochs += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "no val_dataloader": intended here
            self.trainer.fit(self.module, train_dataloaders=self.batches)
        return self.timer.seconds[-1]
