"""Key-value stores with torch c10d ``Store`` semantics.

A :class:`Store` is shared by all nodes of a round: values are ``bytes`` (a ``str`` value is
UTF-8 encoded), ``get`` and ``wait`` block until keys exist or the store timeout passes, and
``add``/``compare_set`` are atomic. :class:`PrefixStore` scopes any store to a namespace;
:class:`HashStore` is the in-process implementation for one process and for tests.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import timedelta

from rdzv_core.api import RendezvousTimeoutError

__all__ = ["Store", "PrefixStore", "HashStore", "StoreTimeoutError", "to_bytes", "to_seconds"]

DEFAULT_STORE_TIMEOUT = timedelta(seconds=300)


class StoreTimeoutError(RendezvousTimeoutError):
    """Raised by ``get``/``wait``/``multi_get`` when keys do not appear within the timeout."""


def to_bytes(value: bytes | bytearray | memoryview | str) -> bytes:
    """Return ``value`` as bytes (``str`` is UTF-8 encoded).

    Raises:
        TypeError: ``value`` is neither bytes-like nor str; the message names its type.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"Store values must be bytes or str, not {type(value).__name__}: {value!r:.80}")


def check_key(key: str) -> str:
    """Return ``key`` if it is a non-empty str.

    Raises:
        ValueError: the key is empty. TypeError: it is not a str.
    """
    if not isinstance(key, str):
        raise TypeError(f"Store keys must be str, not {type(key).__name__}: {key!r:.80}")
    if not key:
        raise ValueError("Store keys must not be empty.")
    return key


def to_seconds(timeout: timedelta | float | int) -> float:
    """Return ``timeout`` (a ``timedelta`` or seconds) as float seconds.

    Raises:
        ValueError: the timeout is negative. TypeError: it is of another type.
    """
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(f"A timeout must be a timedelta or seconds, not {type(timeout).__name__}.")
    if seconds < 0:
        raise ValueError(f"A timeout must not be negative (got {seconds} s).")
    return seconds


class Store(ABC):
    """Abstract key-value store with c10d semantics.

    Every method may raise :class:`~rdzv_core.api.RendezvousConnectionError` when the store's
    server cannot be reached.
    """

    def __init__(self, timeout: timedelta | float = DEFAULT_STORE_TIMEOUT) -> None:
        self._timeout = timedelta(seconds=to_seconds(timeout))

    @property
    def timeout(self) -> timedelta:
        """The default timeout of blocking calls (``get``, ``wait``, ``multi_get``)."""
        return self._timeout

    def set_timeout(self, timeout: timedelta | float) -> None:
        """Set the default timeout of blocking calls (a ``timedelta`` or float seconds)."""
        self._timeout = timedelta(seconds=to_seconds(timeout))

    @abstractmethod
    def set(self, key: str, value: bytes | str) -> None:
        """Set ``key`` to ``value`` (overwrites)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the value of ``key``, blocking until it exists.

        Raises:
            StoreTimeoutError: the key did not appear within :attr:`timeout`.
        """

    @abstractmethod
    def add(self, key: str, amount: int) -> int:
        """Atomically add ``amount`` to the integer counter at ``key`` (absent = 0).

        Returns:
            The new value.

        Raises:
            ValueError: the existing value is not a decimal integer.
        """

    @abstractmethod
    def compare_set(self, key: str, expected: bytes | str, desired: bytes | str) -> bytes:
        """Atomically set ``key`` to ``desired`` if its value equals ``expected``.

        ``expected == b""`` means "only if ``key`` is absent".

        Returns:
            ``desired`` when the value was set; otherwise the current value, or ``expected``
            when the key is absent and ``expected`` is not empty (the c10d convention).
        """

    @abstractmethod
    def wait(self, keys: Sequence[str], timeout: timedelta | float | None = None) -> None:
        """Block until all ``keys`` exist.

        Args:
            timeout: a ``timedelta`` or seconds; ``None`` means :attr:`timeout`.

        Raises:
            StoreTimeoutError: some key did not appear in time; the message names them.
        """

    @abstractmethod
    def check(self, keys: Sequence[str]) -> bool:
        """Return whether all ``keys`` exist (never blocks)."""

    @abstractmethod
    def delete_key(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""

    @abstractmethod
    def num_keys(self) -> int:
        """Return the number of keys in this store's namespace."""

    def multi_get(self, keys: Sequence[str], timeout: timedelta | float | None = None) -> list[bytes]:
        """Return the values (bytes) of ``keys`` in order, blocking until all exist.

        Args:
            timeout: ``timedelta`` or float seconds; ``None`` means :attr:`timeout`.

        Raises:
            StoreTimeoutError: some key did not appear in time.
        """
        self.wait(keys, timeout)
        return [self.get(key) for key in keys]

    def multi_set(self, keys: Sequence[str], values: Sequence[bytes | str]) -> None:
        """Set each of ``keys`` to the value at the same position.

        Raises:
            ValueError: the sequences differ in length.
        """
        if len(keys) != len(values):
            raise ValueError(f"multi_set got {len(keys)} keys but {len(values)} values.")
        for key, value in zip(keys, values, strict=True):
            self.set(key, value)

    @abstractmethod
    def append(self, key: str, value: bytes | str) -> None:
        """Append ``value`` to the value of ``key`` (creates it when absent)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default does nothing."""


class PrefixStore(Store):
    """Wrap ``store`` so that every key ``k`` is stored as ``f"{prefix}/{k}"``.

    Args:
        prefix: Namespace (str, not empty).
        store: The underlying store; its timeout is shared.
    """

    def __init__(self, prefix: str, store: Store) -> None:
        if not prefix:
            raise ValueError("PrefixStore needs a non-empty prefix.")
        if not isinstance(store, Store):
            raise TypeError(f"PrefixStore wraps a Store (got {type(store).__name__}).")
        self.prefix = prefix
        self.underlying_store = store

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}"

    @property
    def timeout(self) -> timedelta:
        return self.underlying_store.timeout

    def set_timeout(self, timeout: timedelta | float) -> None:
        self.underlying_store.set_timeout(timeout)

    def set(self, key: str, value: bytes | str) -> None:
        self.underlying_store.set(self._key(key), value)

    def get(self, key: str) -> bytes:
        return self.underlying_store.get(self._key(key))

    def add(self, key: str, amount: int) -> int:
        return self.underlying_store.add(self._key(key), amount)

    def compare_set(self, key: str, expected: bytes | str, desired: bytes | str) -> bytes:
        return self.underlying_store.compare_set(self._key(key), expected, desired)

    def wait(self, keys: Sequence[str], timeout: timedelta | float | None = None) -> None:
        self.underlying_store.wait([self._key(k) for k in keys], timeout)

    def check(self, keys: Sequence[str]) -> bool:
        return self.underlying_store.check([self._key(k) for k in keys])

    def delete_key(self, key: str) -> bool:
        return self.underlying_store.delete_key(self._key(key))

    def num_keys(self) -> int:
        """Return the number of keys of the underlying store (as torch's ``PrefixStore``)."""
        return self.underlying_store.num_keys()

    def multi_get(self, keys: Sequence[str], timeout: timedelta | float | None = None) -> list[bytes]:
        return self.underlying_store.multi_get([self._key(k) for k in keys], timeout)

    def multi_set(self, keys: Sequence[str], values: Sequence[bytes | str]) -> None:
        self.underlying_store.multi_set([self._key(k) for k in keys], values)

    def append(self, key: str, value: bytes | str) -> None:
        self.underlying_store.append(self._key(key), value)

    def close(self) -> None:
        self.underlying_store.close()


class HashStore(Store):
    """A thread-safe in-process store: a dict guarded by a condition variable.

    Blocking calls wake as soon as another thread sets the key (no polling).
    """

    def __init__(self, timeout: timedelta | float = DEFAULT_STORE_TIMEOUT) -> None:
        super().__init__(timeout)
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition()

    def set(self, key: str, value: bytes | str) -> None:
        data = to_bytes(value)
        with self._cond:
            self._data[check_key(key)] = data
            self._cond.notify_all()

    def get(self, key: str) -> bytes:
        with self._cond:  # wait and read in one critical section: a racing delete cannot slip in
            self._wait_locked([key], None)
            return self._data[key]

    def add(self, key: str, amount: int) -> int:
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError(f"add() needs an int amount, not {type(amount).__name__}.")
        with self._cond:
            current = self._data.get(check_key(key), b"0")
            try:
                value = int(current) + amount
            except ValueError:
                raise ValueError(f"The value of key '{key}' is not an integer: {current!r:.80}") from None
            self._data[key] = str(value).encode()
            self._cond.notify_all()
            return value

    def compare_set(self, key: str, expected: bytes | str, desired: bytes | str) -> bytes:
        expected_b, desired_b = to_bytes(expected), to_bytes(desired)
        with self._cond:
            current = self._data.get(check_key(key))
            if current is None:
                if expected_b:
                    return expected_b
            elif current != expected_b:
                return current
            self._data[key] = desired_b
            self._cond.notify_all()
            return desired_b

    def wait(self, keys: Sequence[str], timeout: timedelta | float | None = None) -> None:
        with self._cond:
            self._wait_locked(keys, timeout)

    def _wait_locked(self, keys: Sequence[str], timeout: timedelta | float | None) -> None:
        """Block until all ``keys`` exist; the caller holds ``self._cond``."""
        seconds = to_seconds(self.timeout if timeout is None else timeout)
        deadline = time.monotonic() + seconds
        keys = [check_key(k) for k in keys]
        while True:
            missing = [k for k in keys if k not in self._data]
            if not missing:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreTimeoutError(f"Timed out after {seconds:.3f} s waiting for keys {missing[:10]}.")
            self._cond.wait(remaining)

    def check(self, keys: Sequence[str]) -> bool:
        with self._cond:
            return all(check_key(k) in self._data for k in keys)

    def delete_key(self, key: str) -> bool:
        with self._cond:
            return self._data.pop(check_key(key), None) is not None

    def num_keys(self) -> int:
        with self._cond:
            return len(self._data)

    def multi_get(self, keys: Sequence[str], timeout: timedelta | float | None = None) -> list[bytes]:
        with self._cond:
            self._wait_locked(keys, timeout)
            return [self._data[k] for k in keys]

    def append(self, key: str, value: bytes | str) -> None:
        data = to_bytes(value)
        with self._cond:
            self._data[check_key(key)] = self._data.get(key, b"") + data
            self._cond.notify_all()
