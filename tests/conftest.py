"""Project-wide pytest hooks.

Every test under tests/integration gets ``pytest.mark.integration`` automatically, so
``-m "not integration"`` selects the fast unit tests without anyone remembering to mark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)
