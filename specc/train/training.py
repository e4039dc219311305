"""The Python API of the training loop: `train`, `evaluate`, `predict`.

    import specc
    result = specc.train("specs/digits_cnn.yaml", epochs=5)    # keyword = a `train:` key
    result.metrics["val"]["accuracy"], result.best_checkpoint
    specc.evaluate("specs/digits_cnn.yaml", result.best_checkpoint, split="test")

A run writes `runs/<spec name>/<timestamp>/`: spec.yaml (resolved), best.pt, last.pt,
metrics.csv, TensorBoard events, curves.png and summary.json (K-fold: one folder per fold).
`train(..., nproc=N)` (or torchrun) trains on N processes with DDP: see docs/ranks.md.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specc.train import ranks
from specc.weights.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from specc.lang.errors import Problem, SpecError
from specc.lang.terminal import printable
from specc.train.loop import Session, eval_batch_size, fit, update_batch_norm
from specc.train.metrics import MetricSet
from specc.train.progress import deferred_signals
from specc.train.prepare import (Prepared, build_model, load_train_spec, metric_locator, open_session, prepare_data,
                           resolve_device, start_from_weights)
from specc.train.resume import apply_changes, check_resumable, read_resume_checkpoint, spec_changes
from specc.train.run_dir import lock_run_dir, remove_stale_temporaries, unlock, write_text_atomic
from specc.weights.checkpoint import is_sharded
from specc.train.sharded_state import existing_checkpoint, restore_sharded
from specc.train.run_dir import new_run_dir as make_run_dir
from specc.train.text_data import cache_root_of, check_tokenizer, read_text_data
from specc.train.token_windows import unigram_baseline
from specc.train.tokenizer import file_text as tokenizer_file_text
from specc.train.run_log import RunLog, SilentLog, print_folds, print_metrics, stage
from specc.lang.safety import stored_spec_scope
from specc.lang.spec import Spec
from specc.lang.train_config import MATRIX_METRICS, Call, monitor_mode

from specc.train.evaluation import evaluate, predict

__all__ = ["TrainResult", "train", "evaluate", "predict", "new_run_dir", "best_metrics"]


@dataclass
class TrainResult:
    """What a run produced. `metrics` are the best checkpoint's, per split (K-fold: fold means)."""

    run_dir: Path
    status: str                                   # completed | early_stopped | diverged | interrupted
    message: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    folds: list["TrainResult"] = field(default_factory=list)        # K-fold only
    summary: dict[str, tuple[float, float]] = field(default_factory=dict)  # K-fold: name -> (mean, std)

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "early_stopped")

    def __repr__(self) -> str:
        """One line: status, epochs, the best checkpoint's val (or train) figures, the run directory."""
        figures = self.metrics.get("val") or self.metrics.get("train") or {}
        shown = ", ".join(f"{name} {_short_number(value)}" for name, value in figures.items()
                          if isinstance(value, (int, float)))
        split = "val" if self.metrics.get("val") else "train"
        return (f"TrainResult({self.status}, {len(self.history)} epochs"
                + (f", {split}: {shown}" if shown else "") + (f", {len(self.folds)} folds" if self.folds else "")
                + f", {self.run_dir})")


def _short_number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def train(spec_or_path: str | Path | dict | Spec | None = None, *, out: str | Path = "runs",
          resume: str | Path | None = None, overrides: dict[str, Any] | None = None, verbose: bool = True,
          **train_keys: Any) -> TrainResult:
    """Train the spec's model as its `train:` section says.

    This process trains; `specc.train(..., nproc=N)` (specc.train.launch) starts N processes that
    each call this. Under torchrun (`torchrun --nproc-per-node N -m specc train ...`) every process
    calls this and they train together with DistributedDataParallel; rank 0 prints and writes the
    run directory.

    Args:
        spec_or_path: a spec path, YAML text, dict or `Spec`; None with `resume` = the resolved
            spec stored in the checkpoint.
        out: parent folder of run directories.
        resume: a last.pt (the last complete epoch) or interrupted.pt (the step a Ctrl-C stopped
            at) to continue from exactly; the run goes on writing into that checkpoint's folder.
            A spec or overrides that differ from the checkpoint's are printed and applied.
        overrides: vars or dotted keys, like `--set` (`{"width": 32, "train.data.split.seed": 1}`).
        verbose: print progress and the final table.
        **train_keys: keys of the `train:` section (`epochs=5`, `device="cpu"`).

    Returns:
        A `TrainResult` (see its fields); `status` says whether the run completed.

    Raises:
        SpecError: invalid spec, unreadable data or checkpoint, a run directory in use (every
            problem located); nothing is written before the spec, data and checkpoint are checked.
    """
    keys = {**(overrides or {}), **{f"train.{k}": v for k, v in train_keys.items()}}
    state = read_resume_checkpoint(resume) if resume is not None else None
    if spec_or_path is None and state is None:
        raise SpecError(Problem("give a spec, or --resume a checkpoint (its spec is used)", None, "MISSING_KEY"))
    with stored_spec_scope() if spec_or_path is None else contextlib.nullcontext():  # the checkpoint's spec: safe
        spec = load_train_spec(state["spec"] if spec_or_path is None else spec_or_path, keys)
    if state is not None:
        check_resumable(state["spec"], spec.raw, state, resume)
    threads = torch.get_num_threads()
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    try:
        with ranks.process_group(resolve_device(spec.train.device)) as device:
            return _train(spec, device, Path(out), resume, state, verbose and ranks.is_main())
    finally:
        torch.set_num_threads(threads)


def _train(spec: Spec, device: torch.device, out: Path, resume: str | Path | None, state: dict | None,
           verbose: bool) -> TrainResult:
    config = spec.train
    if state is not None and config.data.split.kfold:
        raise SpecError(Problem("--resume continues one holdout run; K-fold runs start again",
                                spec.source.locate(("train", "data", "split", "kfold")), "CHECKPOINT_ERROR"))
    with stage(f"tokenising ({config.data.source})", verbose and config.data.is_text):
        spec, corpus = read_text_data(spec, cache_root_of(resume, out))   # sets `$tokenizer.vocab_size`
    with stage(f"compiling {spec.display_name}", verbose):
        compiled = build_model(spec, device, config.seed)
    if state is None:   # a resumed run has its own weights
        with stage("loading the initial weights", verbose and config.init_from is not None):
            start_from_weights(spec, compiled)
    with stage(f"loading data ({config.data.source or 'dataset'})", verbose):
        prepared = prepare_data(spec, compiled, corpus)
    if state is not None:
        check_tokenizer(state.get("tokenizer"), prepared.tokenizer, spec, resume)
    if prepared.corpus is not None and verbose:
        print(baseline_line(prepared.corpus), flush=True)
    if config.data.split.kfold:
        run_dir = ranks.on_main(new_run_dir, out, spec)
        with _locked(run_dir):
            _write_spec(run_dir, spec)
            return _train_folds(spec, compiled, prepared, device, run_dir, verbose)
    with stage("torch.compile" if config.compile else "setting up the optimizer", verbose):
        session = _open_split(spec, compiled, prepared, 0, device, state, resume)  # refuses before any write
    session.run_dir = Path(resume).parent if resume is not None else ranks.on_main(new_run_dir, out, spec)
    with _locked(session.run_dir):
        if state is not None and verbose:
            for change in spec_changes(state["spec"], spec.raw):
                print(printable(f"resume: {change}"), flush=True)
        _write_spec(session.run_dir, spec)
        if prepared.tokenizer is not None and ranks.is_main():
            write_text_atomic(session.run_dir / "tokenizer.json", tokenizer_file_text(prepared.tokenizer))
        result = _run_split(session, verbose)
        if ranks.is_main():
            with deferred_signals(interrupt_after=False):   # the run is over: the summary must be written
                _write_summary(session.run_dir, result)
    return result


def baseline_line(corpus) -> str:
    """`unigram baseline: ...`: the loss to beat on text, printed before training starts."""
    baseline = unigram_baseline(corpus)
    shown = "  ".join(f"{split}_loss {values['loss']:.4f} ({values['bits_per_char']:.4f} bits/char)"
                      for split, values in baseline.items() if split != "train")
    return (f"tokenizer {corpus.tokenizer.describe()}; unigram baseline (the training split's token "
            f"frequencies): {shown or 'no val or test split'}")


def new_run_dir(out: Path, spec: Spec) -> Path:
    """`out/<spec name>/<timestamp>/`, created atomically, with a suffix when two runs start in the
    same second (see `specc.train.run_dir.new_run_dir`)."""
    return make_run_dir(out, spec.display_name)


@contextlib.contextmanager
def _locked(run_dir: Path):
    """Hold the run directory's lock (rank 0) while the run writes into it."""
    held = {}

    def lock_and_tidy() -> None:
        held["lock"] = lock_run_dir(run_dir)
        remove_stale_temporaries(run_dir)   # of writes that a kill -9 stopped in an earlier run here

    ranks.on_main(lock_and_tidy)
    try:
        yield
    finally:
        unlock(held.get("lock"))


def _write_spec(run_dir: Path, spec: Spec) -> None:
    if ranks.is_main():
        write_text_atomic(run_dir / "spec.yaml", spec.to_yaml())


def _open_split(spec: Spec, compiled, prepared: Prepared, index: int, device: torch.device,
                state: dict | None = None, resume: Path | None = None, run_dir: Path | None = None) -> Session:
    """The session of one split, restored from `state` (with the spec's changes applied) if given."""
    session = open_session(spec, compiled, prepared, prepared.splits[index], device, run_dir)
    if state is not None:
        if state.get("sharded"):
            restore_sharded(session.model, session.optimizer, resume)
        else:
            load_model_state(session.model, state, resume)
        try:
            session.restore(state)
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            raise SpecError(Problem(f"{resume}: the checkpoint's training state does not fit this spec "
                                    f"(optimizer, schedulers, SWA or AMP changed?): {error}", None,
                                    "CHECKPOINT_ERROR")) from None
        apply_changes(session.optimizer, session.schedulers, state["spec"], spec.raw)
    return session


def _run_split(session: Session, verbose: bool, label: str = "", show_table: bool = True) -> TrainResult:
    spec, run_dir, device = session.spec, session.run_dir, session.device
    log = RunLog(run_dir, epochs=spec.train.epochs, verbose=verbose, label=label, session=session) \
        if session.is_main else SilentLog()
    counts = " / ".join(f"{len(data)} {name}" for name, data in session.splits.named().items())
    start = f" from epoch {session.epoch + 1}" if session.epoch else ""
    if session.resume_point:
        start = f" from epoch {session.resume_point['epoch']}, step {session.resume_point['step'] + 1}"
    where = f"{session.world_size} processes ({device.type})" if session.world_size > 1 else device
    log.wrapped_message(f"training {spec.display_name}{' ' + label if label else ''} on {where}{start}: "
                f"{counts} examples, {sum(p.numel() for p in session.model.parameters()):,} parameters -> {run_dir}")
    log.model_started(session)
    try:
        status, message = fit(session, log)
        if session.pruner is not None:   # checkpoints hold plain weights: so does the model from here on
            session.pruner.make_permanent()
        if status in ("completed", "early_stopped"):
            message = "\n".join(filter(None, [message, _finish_swa(session)]))
    except BaseException:
        log.close(session.history)
        raise
    result = TrainResult(run_dir, status, message, session.history)
    try:
        with deferred_signals():   # a signal right after the last epoch: curves.png first, then stop
            log.close(session.history)
        result.last_checkpoint, result.best_checkpoint = ranks.on_main(
            lambda: (existing_checkpoint(run_dir, "last.pt"), existing_checkpoint(run_dir, "best.pt")))
        _report_best(session, log, result, show_table and verbose)
    except KeyboardInterrupt:   # the checkpoints are complete; summary.json is still written
        result.status = "interrupted"
        result.message = "\n".join(filter(None, [message, "interrupted after the last epoch, while reporting the best "
                                                           "checkpoint; best.pt and last.pt are complete"]))
        log.message(result.message)
    log.finish()
    return result


def _report_best(session: Session, log: RunLog, result: TrainResult, show_table: bool) -> None:
    """Print the run's message, then evaluate, print and log the best checkpoint on every split."""
    if result.message:
        log.message(result.message)
    if result.ok and result.best_checkpoint:
        result.metrics = best_metrics(session, result.best_checkpoint)
        if show_table:
            print_metrics(log.console, f"best checkpoint: epoch {session.best.best_epoch} ({session.best.monitor} "
                                       f"{session.best.best:.4f}), {result.best_checkpoint}", result.metrics)
        log.final_metrics(session, {**result.metrics, **_confusion_matrices(session, result.metrics)},
                          session.best.best_epoch or session.epoch)


def _confusion_matrices(session: Session, metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For TensorBoard: the val/test confusion matrices of a classifier whose spec does not ask for
    them. One process only (under torchrun every rank would have to take part); none for a language
    model (a vocabulary-square image says nothing)."""
    if session.task.kind not in ("multiclass", "binary") or session.world_size > 1 or session.tokenizer or \
            any("confusion_matrix" in values for values in metrics.values()):
        return {}
    matrix = MetricSet.build([Call(name="confusion_matrix")], session.task, session.device, lambda index: None)
    return {split: {**metrics[split], "confusion_matrix": session.evaluate(session.model, data, matrix)["confusion_matrix"]}
            for split, data in session.splits.named().items() if split != "train"}


def best_metrics(session: Session, checkpoint: Path) -> dict[str, dict[str, Any]]:
    """Every configured metric (matrices too) of the best checkpoint's weights, on each split."""
    if is_sharded(checkpoint):  # every rank reads its own shards
        restore_sharded(session.model, None, checkpoint)
    else:
        weights = ranks.on_main(lambda: {"model": load_checkpoint(checkpoint)["model"]})
        load_model_state(session.model, weights, checkpoint)
    metrics = MetricSet.build(session.config.metrics, session.task, session.device, metric_locator(session.spec))
    return {name: session.evaluate(session.model, data, metrics) for name, data in session.splits.named().items()}


def _finish_swa(session: Session) -> str:
    """Recompute BatchNorm statistics for the averaged weights; keep them as best.pt if they are better."""
    if session.swa_model is None:
        return ""
    averaged = session.swa_model.module
    update_batch_norm(averaged, session.splits.train, eval_batch_size(session.config))
    split, _, name = session.best.monitor.partition("_")
    values = session.evaluate(averaged, session.splits.named()[split], session.metrics[split])
    value, best = values[name], session.best.best
    better = best is None or (value < best if monitor_mode(session.best.monitor, session.best.mode) == "min"
                              else value > best)
    if not better:
        return f"SWA: {session.best.monitor} {value:.4f} of the averaged weights is not better than {best:.4f}"
    if session.is_main:
        state = session.checkpoint_state()
        state["model"] = averaged.state_dict()
        save_checkpoint({**state, "swa_averaged": True}, session.run_dir / "best.pt")
    session.best.best = value
    return f"SWA: the averaged weights ({session.best.monitor} {value:.4f}) are best.pt"


def _train_folds(spec: Spec, compiled, prepared: Prepared, device: torch.device, run_dir: Path,
                 verbose: bool) -> TrainResult:
    """K runs, one per fold, each in run_dir/fold_<k>; reports every fold and the mean ± std."""
    folds = []
    count = len(prepared.splits)
    for index in range(count):
        model = compiled if index == 0 else build_model(spec, device, spec.train.seed)
        fold_dir = run_dir / f"fold_{index + 1}"
        if ranks.is_main():
            fold_dir.mkdir()
        session = _open_split(spec, model, prepared, index, device, run_dir=fold_dir)
        folds.append(_run_split(session, verbose, label=f"fold {index + 1}/{count}", show_table=False))
    per_fold = [{f"{split}_{name}": value for split, values in fold.metrics.items() if split != "train"
                 for name, value in values.items() if name not in MATRIX_METRICS} for fold in folds]
    names = list(dict.fromkeys(name for values in per_fold for name in values))
    summary = {name: (float(np.mean([v[name] for v in per_fold if name in v])),
                      float(np.std([v[name] for v in per_fold if name in v]))) for name in names}
    statuses = {fold.status for fold in folds}
    result = TrainResult(run_dir, "completed" if statuses <= {"completed", "early_stopped"} else statuses.pop(),
                         folds=folds, summary=summary,
                         metrics=_nest({name: mean for name, (mean, _) in summary.items()}))
    if verbose and summary:
        from rich.console import Console

        print_folds(Console(highlight=False), f"{count}-fold cross-validation: {run_dir}", per_fold, summary)
    if ranks.is_main():
        with deferred_signals(interrupt_after=False):
            _write_summary(run_dir, result)
    return result


def _write_summary(run_dir: Path, result: TrainResult) -> None:
    summary = {"status": result.status, "message": result.message, "metrics": result.metrics,
               "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None}
    if result.folds:
        summary["folds"] = [fold.metrics for fold in result.folds]
        summary["summary"] = {name: {"mean": mean, "std": std} for name, (mean, std) in result.summary.items()}
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=_jsonable))


def _nest(flat: dict[str, float]) -> dict[str, dict[str, float]]:
    nested: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        split, _, name = key.partition("_")
        nested.setdefault(split, {})[name] = value
    return nested


def _jsonable(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else str(value)
