"""The files written by the real libraries (../shared/reference, see its README), for the tests that load them."""
from __future__ import annotations

from pathlib import Path

import pytest

# shared/ lies beside the clone (CI, /work/main); a git worktree sits one folder deeper
REFERENCES = [Path(__file__).resolve().parents[depth] / "shared" / "reference" for depth in (2, 3)]


def reference(name: str) -> Path:
    """The reference file `name`; the test is skipped, saying so, where shared/ is not laid beside the clone."""
    path = next((folder / name for folder in REFERENCES if (folder / name).exists()), REFERENCES[0] / name)
    if not path.exists():
        pytest.skip(f"reference file {name} is absent (CI lays shared/ beside the clone)")
    return path
