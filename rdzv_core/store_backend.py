"""A rendezvous backend over any :class:`~rdzv_core.store.Store` (torch's C10d backend, generalised).

Over :class:`~rdzv_core.store.HashStore` it is the in-memory backend for one process and for
unit tests; over a network store it needs nothing but the store contract.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rdzv_core.api import RendezvousStateError
from rdzv_core.backend import RendezvousBackend, Token
from rdzv_core.store import Store, StoreTimeoutError

__all__ = ["StoreRendezvousBackend"]

#: ``compare_set(key, _ABSENT, _ABSENT)`` reads a key without blocking: for an absent key the
#: store returns the (non-empty) expected value and creates nothing (the c10d convention), for
#: a present key its value. ``check`` then ``get`` would block for the store timeout when the
#: key is deleted in between (``forget_node``).
_ABSENT = b"\x00rdzv:absent\x00"


class StoreRendezvousBackend(RendezvousBackend):
    """Keeps the state of run ``run_id`` in ``store`` with ``compare_set``.

    Keys (all under ``rdzv.<run_id>.``): ``state`` holds ``b"<generation>:" + state``; the
    token is that whole value, so a write is applied only over the exact version read;
    ``gen.<n>`` is created when generation ``n`` is written, which is what
    :meth:`wait_for_change` blocks on (``Store.wait``, no polling when the store pushes);
    ``alive.<node>`` holds a node's last keep-alive (wall-clock seconds).

    Implements :class:`~rdzv_core.backend.ChangeNotifier` and
    :class:`~rdzv_core.backend.LivenessTracker`. The ``gen.<n>`` keys are small and never
    deleted (a waiter may still need one); a run writes a few per node and round.

    Args:
        store: The store to use.
        run_id: The run id (namespaces the keys).
        name: What :attr:`name` reports (``"store"``; ``"memory"`` for the memory plug-in).
    """

    def __init__(self, store: Store, run_id: str, name: str = "store") -> None:
        if not run_id:
            raise ValueError("The run id must be a non-empty string.")
        self._store = store
        self._prefix = f"rdzv.{run_id}."
        self._key = self._prefix + "state"
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def _generation(self, value: bytes) -> int:
        head, sep, _ = value.partition(b":")
        if not sep or not head.isdigit():
            raise RendezvousStateError(
                f"The state key '{self._key}' does not hold a state written by rdzv (starts {value[:16]!r})."
            )
        return int(head)

    def _split(self, value: bytes) -> tuple[bytes, Token]:
        self._generation(value)
        return value.partition(b":")[2], value

    def _read(self, key: str) -> bytes | None:
        value = self._store.compare_set(key, _ABSENT, _ABSENT)
        return None if value == _ABSENT else value

    def get_state(self) -> tuple[bytes, Token] | None:
        value = self._read(self._key)
        return None if value is None else self._split(value)

    def set_state(self, state: bytes, token: Token | None = None) -> tuple[bytes, Token, bool] | None:
        if token is not None and not isinstance(token, bytes):
            current = self.get_state()  # a foreign token never matches
            return None if current is None else (*current, False)
        expected = token or b""
        generation = self._generation(token) + 1 if token else 1
        desired = b"%d:%s" % (generation, state)
        result = self._store.compare_set(self._key, expected, desired)
        if result == desired:
            self._store.set(f"{self._prefix}gen.{generation}", b"")
            return state, desired, True
        if token and result == expected:  # the key is gone: c10d returns 'expected'
            current = self.get_state()
            return None if current is None else (*current, False)
        return (*self._split(result), False)

    def wait_for_change(self, token: Token | None, timeout: float) -> bool:
        """Block until a generation newer than ``token``'s exists (``Store.wait``)."""
        generation = self._generation(token) if isinstance(token, bytes) else 0
        key = f"{self._prefix}gen.{generation + 1}"
        if timeout <= 0:
            return self._store.check([key])
        try:
            self._store.wait([key], timeout)
            return True
        except StoreTimeoutError:
            return False

    def _alive_key(self, node: str) -> str:
        return f"{self._prefix}alive.{node}"

    def keep_alive(self, node: str, ttl: float) -> None:
        self._store.set(self._alive_key(node), repr(time.time()))

    def heartbeat_ages(self, nodes: Sequence[str]) -> list[float | None]:
        ages: list[float | None] = []
        now = time.time()
        for node in nodes:
            value = self._read(self._alive_key(node))
            ages.append(None if value is None else max(0.0, now - float(value)))
        return ages

    def forget_node(self, node: str) -> None:
        self._store.delete_key(self._alive_key(node))
