"""A test that meets a missing system program skips with the reason instead of failing, outside CI.

graphviz's Python package runs the `dot` program; where it is not installed, any test that renders
a drawing raises `graphviz.ExecutableNotFound` (specc's `GraphvizNotFound` is one). Those tests are
reported as skipped, naming the program; under CI=true, where `.ci/run` installs it, they fail as
usual. Tests that time a `dot` subprocess call `system_tools.require_tool` themselves.
"""
from __future__ import annotations

import os
import shutil

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or report.when != "call" or os.environ.get("CI") == "true":
        return
    import graphviz

    if call.excinfo.errisinstance(graphviz.ExecutableNotFound) and shutil.which("dot") is None:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           "Skipped: graphviz's `dot` is not installed: this test renders a drawing")


@pytest.fixture
def fresh_plan_cache():
    """specc's in-process compile cache, empty before and after the test (tests of the cache itself)."""
    from specc.build import plan_cache

    plan_cache.clear()
    yield
    plan_cache.clear()
