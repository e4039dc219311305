"""Bounds on what one spec may ask for, so no input can take minutes or gigabytes to check.

Each bound is far above what real models need; a user who needs more raises it with the
environment variable named in the error message (e.g. `SPECC_MAX_ITEMS=50000 specc check ...`).
"""
from __future__ import annotations

import os

from specc.lang.errors import Problem, SpecError

# name -> default; the environment variable is SPECC_<NAME>
DEFAULTS = {
    "MAX_SPEC_BYTES": 1_000_000,  # characters of one spec (the biggest in specs/ has ~10,000)
    "MAX_YAML_NODES": 20_000,    # values in the YAML, also once every alias (*name) is expanded (~1 s to read)
    "MAX_NESTING": 100,          # levels of lists/mappings in the YAML
    "MAX_ITEMS": 10_000,         # graph nodes after blocks and repeats are expanded
    "MAX_STRUCTURE_DEPTH": 64,   # sequential/parallel/residual/block/repeat scopes inside each other
    "MAX_BUILD_OPS": 20_000,     # tensor operations while building the layers on meta (mobilenet_v3_small: 1,020)
    # untrusted files (issue 25): a checkpoint's structure, rename rules
    "MAX_CHECKPOINT_VALUES": 2_000_000,  # values in a checkpoint once shared references are repeated
    "MAX_CHECKPOINT_DEPTH": 200,         # levels of lists/dicts in a checkpoint (a stored spec nests <= 100)
    "MAX_TENSOR_NAME": 300,              # characters of a tensor name rename rules are tried on (real: < 150)
}


def limit(name: str) -> int:
    """The bound `name` (a key of `DEFAULTS`), from `SPECC_<name>` when set.

    Raises:
        SpecError: the environment variable is set but not a positive integer.
    """
    variable = f"SPECC_{name}"
    text = os.environ.get(variable)
    if text is None or not text.strip():
        return DEFAULTS[name]
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SpecError(Problem(f"{variable}={text!r} must be a positive integer", None, "LIMIT_EXCEEDED"))
    return value


def raise_hint(name: str) -> str:
    """The sentence telling a user how to raise a bound."""
    return f"the limit is {limit(name):,}; set SPECC_{name} to raise it"


# Bounds on a run's data settings and on the data it reads (specc.train; docs/train.md, "Data
# from strangers"). A data folder or setting from a stranger must not walk the whole disk, start
# thousands of processes or allocate terabytes.
DEFAULTS.update({
    "MAX_DATA_WORKERS": 64,           # train.data.num_workers: DataLoader processes
    "MAX_PREFETCH": 64,               # train.data.prefetch_factor: batches each worker holds ahead
    "MAX_THREADS": 1024,              # train.threads: torch CPU threads
    "MAX_FOLDER_ENTRIES": 10_000_000,  # files and folders a folder: source may list (ImageNet: 1.3 million)
    "MAX_FOLDER_DEPTH": 32,           # folder levels below a class folder
})
DEFAULTS["MAX_NPZ_BYTES"] = 0  # the arrays of one npz (read whole); unset = half the RAM (specc.train.npz)
