"""The reference membership implementation (MemoryMembership) against the contract suite:
directly, and through the memory backend that the ``memory`` plug-in hands to handlers."""

from __future__ import annotations

import uuid

import pytest

from rdzv_core.memory import MemoryRendezvousBackend
from rdzv_core.rounds import MemoryMembership
from rdzv_core.store import HashStore
from tests.contracts import MembershipContract

pytestmark = pytest.mark.unit


class TestMemoryMembership(MembershipContract):
    @pytest.fixture
    def membership(self):
        run = MemoryMembership(f"run-{uuid.uuid4().hex[:8]}")
        return lambda: run


class TestMemoryBackendMembership(MembershipContract):
    @pytest.fixture
    def membership(self):
        run, store = MemoryMembership(f"run-{uuid.uuid4().hex[:8]}"), HashStore()
        return lambda: MemoryRendezvousBackend(store, run)
