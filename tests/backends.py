"""Backend wrappers shared by tests."""

from __future__ import annotations

import threading

from rdzv_core.backend import RendezvousBackend
from rdzv_core.store_backend import StoreRendezvousBackend


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


class QueuedBackend(StoreRendezvousBackend):
    """A :class:`StoreRendezvousBackend` with an in-process :class:`~rdzv_core.backend.JoinQueue`
    shared by every node of a run (``queue`` is the shared dict node -> arrival number), so the
    state-based join-queue path runs without a server. ``lose_data()`` drops state and queue,
    as a server restarted without persistence does."""

    def __init__(self, store, run_id: str, queue: dict, lock: threading.Lock) -> None:
        super().__init__(store, run_id)
        self._queue, self._queue_lock, self._store_ref, self._state_key = queue, lock, store, f"rdzv.{run_id}.state"

    def enqueue_join(self, node: str) -> int:
        with self._queue_lock:
            if node not in self._queue:
                self._queue[node] = max(self._queue.values(), default=0) + 1
            return sorted(self._queue, key=self._queue.__getitem__).index(node) + 1

    def pending_joins(self) -> list[str]:
        with self._queue_lock:
            return sorted(self._queue, key=self._queue.__getitem__)

    def pending_join_count(self) -> int:
        with self._queue_lock:
            return len(self._queue)

    def ack_joins(self, nodes) -> None:
        with self._queue_lock:
            for node in nodes:
                self._queue.pop(node, None)

    def lose_data(self) -> None:
        with self._queue_lock:
            self._queue.clear()
        self._store_ref.delete_key(self._state_key)
