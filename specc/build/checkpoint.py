"""Checkpoints: written atomically, read with `weights_only=True`, carrying the resolved spec.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes),
so `torch.load(..., weights_only=True)` reads it and a run can be rebuilt from the file alone:

    format      "specc-checkpoint/1"
    spec        the resolved spec (plain data, overrides applied)
    epoch       completed epochs
    model       state_dict (for SWA's best.pt: the averaged weights)
    optimizer, schedulers, scaler, swa        training state, for --resume
    rng         torch (and CUDA) RNG states and the batch-order generator's state
    trackers    best value of the checkpoint monitor, early-stopping counters
    history     one dict per epoch (what metrics.csv shows)
    normalizer  input scaling fitted on the training split
    classes     names of text labels (csv), or None
    fold        0-based K-fold index, or None
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from specc.lang.errors import Problem, SpecError

FORMAT = "specc-checkpoint/1"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then os.replace.

    An interruption at any moment leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a specc checkpoint on the CPU with `weights_only=True`.

    Raises:
        SpecError: CHECKPOINT_ERROR when the file is missing, corrupted or not a specc checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(Problem(f"checkpoint not found: {path}", None, "CHECKPOINT_ERROR"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SpecError(Problem(f"{path}: cannot read the checkpoint (corrupted or not a torch file): {reason}",
                                None, "CHECKPOINT_ERROR")) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SpecError(Problem(f"{path}: not a specc checkpoint (written by `specc train`)", None, "CHECKPOINT_ERROR"))
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load weights, turning a structure mismatch into a clear error instead of a traceback."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        detail = str(error).split("\n\t", 1)[-1].splitlines()[0]
        raise SpecError(Problem(f"{path}: the checkpoint does not fit this spec's model: {detail}",
                                None, "CHECKPOINT_ERROR")) from None


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream the loop uses: dropout & co (torch, CUDA) and the batch order."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
