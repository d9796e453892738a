"""Backend wrappers shared by tests."""

from __future__ import annotations

from rdzv_core.backend import RendezvousBackend


class StateOnlyBackend(RendezvousBackend):
    """Only torch's plain contract (name, get_state, set_state): no change notification, no
    liveness tracker, no join queue — the handler polls and keeps heartbeats in the state."""

    def __init__(self, inner: RendezvousBackend) -> None:
        self._inner = inner

    @property
    def name(self) -> str:
        return self._inner.name

    def get_state(self):
        return self._inner.get_state()

    def set_state(self, state, token=None):
        return self._inner.set_state(state, token)
