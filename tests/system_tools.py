"""Tests that need a program outside Python (graphviz's `dot`, a browser) skip with the reason
where it is not installed, and fail under CI=true, where `.ci/run` installs every one of them: a
missing tool must never pass silently in CI, nor break a contributor's run with a RuntimeError."""
from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, purpose: str) -> None:
    """Skip the calling test when the program `name` is not on PATH (fail under CI=true).

    Args:
        name: the executable, e.g. "dot".
        purpose: what needs it, for the skip reason ("graphviz renders the drawing").
    """
    if shutil.which(name) is not None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but `{name}` is not installed ({purpose}; .ci/run installs it)")
    pytest.skip(f"`{name}` is not installed: {purpose}")
