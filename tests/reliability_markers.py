"""Registers the `reliability` marker for tests/test_reliability.py without touching pyproject.toml.

Loaded with `pytest_plugins = ["tests.reliability_markers"]` from that module. `pytest_configure` is a
historic hook, so it runs for this late-registered plugin too. The module itself cannot say
`pytestmark = pytest.mark.reliability` (its body runs before this plugin is registered, and
--strict-markers would refuse it), so `pytest_collection_modifyitems` adds the mark to its tests,
before `-m` deselects. The one-line alternative, in pyproject.toml's markers list:
  "reliability: the reliability suite (bench/reliability.py at CI size); asserts invariants, not timings",
"""

from __future__ import annotations

import pytest

MARKER = "reliability: the reliability suite (bench/reliability.py at CI size); asserts invariants, not timings"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith("tests/test_reliability.py::") and item.get_closest_marker("reliability") is None:
            item.add_marker("reliability")
