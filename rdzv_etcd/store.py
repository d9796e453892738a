"""A c10d-style :class:`~rdzv_core.store.Store` on etcd (v2 or v3, through an ``EtcdKV``).

Each store key ``k`` is the etcd key ``<prefix><escape(k)>`` (one path segment, see
:func:`rdzv_etcd.keys.escape_segment`), so ``num_keys`` is a count of the prefix and store
keys with ``/`` never become v2 directories. Values are bytes (v2 stores them base64).

* ``get``/``wait``/``multi_get`` read, then *watch* each missing key from the read's
  revision + 1 (no polling; a key created between the read and the watch is replayed by etcd).
* ``add``/``append``/``compare_set`` are compare-and-set loops on the key's version; a failed
  attempt returns the current value, so a retry needs no extra read.
* ``multi_set`` is one transaction on v3.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from rdzv_core.store import DEFAULT_STORE_TIMEOUT, Store, StoreTimeoutError, check_key, to_bytes, to_seconds
from rdzv_etcd.client import EtcdKV, Versioned
from rdzv_etcd.keys import escape_segment

__all__ = ["EtcdStore"]

#: Upper bound of the random pause between two lost compare-and-set attempts (seconds).
_MAX_CAS_BACKOFF = 0.05


class EtcdStore(Store):
    """A :class:`~rdzv_core.store.Store` whose keys live under ``prefix`` in etcd.

    Args:
        kv: The etcd adapter (v2 or v3).
        prefix: Absolute etcd key prefix ending with ``/`` (``/rdzv/<run>/store/``).
        timeout: Default bound of ``get``/``wait``/``multi_get`` (timedelta or seconds).

    Raises (every method):
        RendezvousConnectionError: etcd is unreachable (endpoint and cause in the message).
        RendezvousStateError: a stored value cannot be decoded (v2: not base64).
    """

    def __init__(self, kv: EtcdKV, prefix: str, timeout: timedelta | float = DEFAULT_STORE_TIMEOUT) -> None:
        super().__init__(timeout)
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError(f"An etcd store prefix must start and end with '/' (got {prefix!r}).")
        self._kv = kv
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"EtcdStore({self._kv.backend_name}, {self._kv.endpoint}, prefix={self.prefix!r})"

    def _path(self, key: str) -> str:
        return self.prefix + escape_segment(check_key(key))

    # -- writes ---------------------------------------------------------------------------

    def set(self, key: str, value: bytes | str) -> None:
        """Write ``key`` (one ``put``)."""
        data = to_bytes(value)
        self._kv.put(self._path(key), data)

    def multi_set(self, keys: Sequence[str], values: Sequence[bytes | str]) -> None:
        """Write all keys (v3: one transaction per 128 keys; v2: one request each).

        Raises:
            ValueError: the sequences differ in length.
        """
        if len(keys) != len(values):
            raise ValueError(f"multi_set got {len(keys)} keys but {len(values)} values.")
        items = [(self._path(key), to_bytes(value)) for key, value in zip(keys, values, strict=True)]
        self._kv.put_many(items)

    def add(self, key: str, amount: int) -> int:
        """Atomically add ``amount`` to the decimal counter at ``key`` (absent = 0).

        Raises:
            TypeError: ``amount`` is not an int.
            ValueError: the stored value is not a decimal integer (the message names the key).
        """
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError(f"add() needs an int amount, not {type(amount).__name__}.")

        def bump(current: bytes | None) -> bytes:
            try:
                return str(int(current or b"0") + amount).encode("ascii")
            except ValueError:
                raise ValueError(f"The value of key '{key}' is not an integer: {current!r:.80}") from None

        return int(self._update(key, bump))

    def append(self, key: str, value: bytes | str) -> None:
        """Atomically append ``value`` to ``key`` (creates it when absent)."""
        data = to_bytes(value)
        self._update(key, lambda current: (current or b"") + data)

    def compare_set(self, key: str, expected: bytes | str, desired: bytes | str) -> bytes:
        """Set ``key`` to ``desired`` if it holds ``expected`` (``b""``: if absent).

        Returns:
            ``desired`` when set; else the current value, or ``expected`` when the key is
            absent and ``expected`` is not empty (c10d's convention).
        """
        expected_b, desired_b = to_bytes(expected), to_bytes(desired)
        path = self._path(key)
        current = self._kv.get(path)
        while True:
            if current is None and expected_b:
                return expected_b
            if current is not None and current.value != expected_b:
                return current.value
            applied, current = self._kv.put_if(path, desired_b, None if current is None else current.version)
            if applied:
                return desired_b

    def delete_key(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        return self._kv.delete(self._path(key))

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """Return the value of ``key``, watching for it up to :attr:`timeout`.

        Raises:
            StoreTimeoutError: the key did not appear in time.
        """
        return self._wait_values([key], self.timeout)[0]

    def multi_get(self, keys: Sequence[str], timeout: timedelta | float | None = None) -> list[bytes]:
        """Return the values of ``keys`` in order, watching for missing ones up to ``timeout``
        (timedelta or seconds; ``None`` = :attr:`timeout`).

        Raises:
            StoreTimeoutError: some keys did not appear in time.
        """
        return self._wait_values(keys, self.timeout if timeout is None else timeout)

    def wait(self, keys: Sequence[str], timeout: timedelta | float | None = None) -> None:
        """Block until all ``keys`` exist (``timeout``: timedelta or seconds; ``None`` =
        :attr:`timeout`).

        Raises:
            StoreTimeoutError: some keys did not appear in time; the message names them.
        """
        self._wait_values(keys, self.timeout if timeout is None else timeout)

    def check(self, keys: Sequence[str]) -> bool:
        """Return whether all ``keys`` exist (one read; never blocks)."""
        paths = [self._path(key) for key in keys]
        if not paths:
            return True
        values, _ = self._kv.get_many(paths)
        return all(path in values for path in paths)

    def num_keys(self) -> int:
        """Return the number of keys under this store's prefix (one count request)."""
        return self._kv.count_prefix(self.prefix)

    def close(self) -> None:
        """Release pooled connections (the store reconnects when used again)."""
        self._kv.close()

    # -- helpers --------------------------------------------------------------------------

    def _update(self, key: str, change: Callable[[bytes | None], bytes]) -> bytes:
        """Compare-and-set ``key`` to ``change(current)`` until it sticks; return the new value.

        Losing the race is retried at once with the value the failed attempt returned, after
        a short random pause once contention repeats (progress is guaranteed: every loss is
        another client's win)."""
        path = self._path(key)
        current: Versioned | None = self._kv.get(path)
        losses = 0
        while True:
            new = change(None if current is None else current.value)
            applied, stored = self._kv.put_if(path, new, None if current is None else current.version)
            if applied:
                return new
            current = stored
            losses += 1
            if losses > 1:
                time.sleep(random.uniform(0, min(_MAX_CAS_BACKOFF, 0.002 * losses)))

    def _wait_values(self, keys: Sequence[str], timeout: timedelta | float) -> list[bytes]:
        """Read ``keys``; watch each missing one from the read's revision + 1; re-read; repeat
        until all exist or ``timeout`` passes."""
        seconds = to_seconds(timeout)
        deadline = time.monotonic() + seconds
        paths = [self._path(key) for key in keys]
        found: dict[str, bytes] = {}
        while True:
            missing = [path for path in dict.fromkeys(paths) if path not in found]
            if not missing:
                return [found[path] for path in paths]
            values, revision = self._kv.get_many(missing)
            found.update((path, item.value) for path, item in values.items())
            for path in missing:
                if path in found:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._kv.watch(path, revision + 1, remaining):
                    absent = [key for key, path_ in zip(keys, paths, strict=True) if path_ not in found]
                    raise StoreTimeoutError(
                        f"Timed out after {seconds:.3f} s waiting for keys {absent[:10]} in {self!r}."
                    )
