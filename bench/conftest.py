"""The benchmarks' smoke runs: each a real (quick) run of a suite, seconds to tens of seconds, so they carry
the `stress` marker: `make test` runs them, `make test-fast` leaves them out."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/bench/" in str(item.path):
            item.add_marker(pytest.mark.stress)
