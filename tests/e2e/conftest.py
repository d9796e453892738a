"""Fixtures of the process tests."""

from __future__ import annotations

import pytest

from tests.e2e.node_processes import stop_processes


@pytest.fixture
def processes():
    """A list the test appends its node processes to; they are killed and reaped afterwards."""
    started: list = []
    yield started
    stop_processes(started)
