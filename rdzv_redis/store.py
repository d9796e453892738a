"""``RedisStore``: the c10d store of a run, kept in one Redis HASH.

All keys of a store live as fields of the HASH ``rdzv:{R}:store`` (see :mod:`rdzv_redis.keys`):
``num_keys`` is ``HLEN`` of this store only, and every command touches one slot. Writes run
as small Lua scripts that also ``PUBLISH`` each written key ``k`` on
``rdzv:{R}:store:set:k`` and refresh the hash's expiry. A blocking read (``get``, ``wait``,
``multi_get``) first reads the hash; only when a key is missing does it ``SUBSCRIBE`` to the
channels of its keys (on the client's pub/sub connection), read again and sleep until one of
them is announced — no polling, and no message about any other key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from rdzv_core.store import DEFAULT_STORE_TIMEOUT, Store, StoreTimeoutError, check_key, to_bytes, to_seconds
from rdzv_redis.client import RedisClient
from rdzv_redis.keys import RunKeys

__all__ = ["RedisStore"]

T = TypeVar("T")


class RedisStore(Store):
    """A :class:`~rdzv_core.store.Store` on Redis, scoped to one run.

    Args:
        client: A client from :meth:`RedisClient.acquire`; the store owns that reference and
            releases it in :meth:`close`.
        run_id: The run id (str).
        timeout: Default timeout of blocking calls (``timedelta`` or float seconds).
        name: Name of the hash within the run (``"store"`` -> ``rdzv:{R}:store``).
        key_ttl: Seconds the hash lives after its last write; ``None``: the client's config.

    Keys are non-empty str; values bytes (str is UTF-8 encoded). Every method may raise
    :class:`~rdzv_core.api.RendezvousConnectionError` when Redis stays unreachable.
    """

    def __init__(
        self,
        client: RedisClient,
        run_id: str,
        *,
        timeout: timedelta | float = DEFAULT_STORE_TIMEOUT,
        name: str = "store",
        key_ttl: float | None = None,
    ) -> None:
        super().__init__(timeout)
        self._client = client
        self._run_id = run_id
        keys = RunKeys(run_id, store_name=name)
        self._hash = keys.store
        self._channel_prefix = keys.store_channel_prefix
        self._ttl_ms = int(1000 * (client.config.key_ttl if key_ttl is None else key_ttl))
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisStore(hash={self._hash!r}, redis={self._client.config.display!r})"

    @property
    def hash_key(self) -> str:
        """The Redis key of the HASH holding this store."""
        return self._hash

    # -- writes (Lua: write, PEXPIRE, PUBLISH) ------------------------------------------------

    def _script(self, name: str, what: str, args: list[Any], *, idempotent: bool = True) -> Any:
        script = self._client.scripts[name]
        full_args = [self._channel_prefix, self._ttl_ms, *args]
        return self._client.call(what, lambda: script(keys=[self._hash], args=full_args), idempotent=idempotent)

    def set(self, key: str, value: bytes | str) -> None:
        """Set ``key`` to ``value`` (``HSET`` via ``scripts/store_set.lua``)."""
        self._script("store_set", "store set", [check_key(key), to_bytes(value)])

    def multi_set(self, keys: Sequence[str], values: Sequence[bytes | str]) -> None:
        """Set all ``keys`` to ``values`` atomically, in one round trip.

        Raises:
            ValueError: the sequences differ in length.
        """
        if len(keys) != len(values):
            raise ValueError(f"multi_set got {len(keys)} keys but {len(values)} values.")
        if not keys:
            return
        pairs: list[Any] = []
        for key, value in zip(keys, values, strict=True):
            pairs += [check_key(key), to_bytes(value)]
        self._script("store_set", "store multi_set", pairs)

    def add(self, key: str, amount: int) -> int:
        """Atomically add ``amount`` to the counter at ``key`` (``HINCRBY``); return the new value.

        Not retried after a connection broke mid-command (it might have been applied).

        Raises:
            ValueError: the current value is not a decimal integer, or the sum overflows 64 bits.
            TypeError: ``amount`` is not an int.
        """
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError(f"add() needs an int amount, not {type(amount).__name__}.")
        check_key(key)
        script = self._client.scripts["store_add"]
        response_error = self._client.errors.ResponseError
        args = [self._channel_prefix, self._ttl_ms, key, amount]

        def run() -> int:
            try:
                return int(script(keys=[self._hash], args=args))
            except response_error as exc:
                if "not an integer" not in str(exc) and "overflow" not in str(exc):
                    raise
                raise ValueError(
                    f"The value of store key '{key}' is not an integer or the sum overflows: {exc}"
                ) from None

        return self._client.call("store add", run, idempotent=False)

    def compare_set(self, key: str, expected: bytes | str, desired: bytes | str) -> bytes:
        """c10d compare-and-set (``scripts/store_compare_set.lua``); see
        :meth:`rdzv_core.store.Store.compare_set` for the return value."""
        args = [check_key(key), to_bytes(expected), to_bytes(desired)]
        return bytes(self._script("store_compare_set", "store compare_set", args))

    def append(self, key: str, value: bytes | str) -> None:
        """Append ``value`` to ``key``, creating it when absent (``scripts/store_append.lua``).

        Not retried after a connection broke mid-command (it might have been applied).
        """
        self._script("store_append", "store append", [check_key(key), to_bytes(value)], idempotent=False)

    def delete_key(self, key: str) -> bool:
        """Delete ``key`` (``HDEL``); return whether it existed."""
        check_key(key)
        return bool(self._client.call("store delete_key", lambda: self._client.redis.hdel(self._hash, key)))

    # -- reads --------------------------------------------------------------------------------

    def num_keys(self) -> int:
        """Return the number of keys of this store (``HLEN`` of its hash)."""
        return int(self._client.call("store num_keys", lambda: self._client.redis.hlen(self._hash)))

    def check(self, keys: Sequence[str]) -> bool:
        """Return whether all ``keys`` exist, without blocking (one round trip)."""
        return all(self._exists(keys))

    def get(self, key: str) -> bytes:
        """Return the value of ``key`` (``HGET``), blocking up to :attr:`timeout` until it exists.

        Raises:
            StoreTimeoutError: the key did not appear in time.
        """
        check_key(key)
        return self._block(
            [key],
            None,
            lambda: self._client.call("store get", lambda: self._client.redis.hget(self._hash, key)),
            lambda value: value is not None,
        )

    def multi_get(self, keys: Sequence[str], timeout: timedelta | float | None = None) -> list[bytes]:
        """Return the values of ``keys`` in order (``HMGET``), blocking until all exist.

        Args:
            timeout: ``timedelta`` or float seconds; ``None`` means :attr:`timeout`.

        Raises:
            StoreTimeoutError: some key did not appear in time.
        """
        keys = [check_key(k) for k in keys]
        if not keys:
            return []
        return self._block(
            keys,
            timeout,
            lambda: self._client.call("store multi_get", lambda: self._client.redis.hmget(self._hash, keys)),
            lambda values: None not in values,
        )

    def wait(self, keys: Sequence[str], timeout: timedelta | float | None = None) -> None:
        """Block until all ``keys`` exist.

        Args:
            timeout: ``timedelta`` or float seconds; ``None`` means :attr:`timeout`.

        Raises:
            StoreTimeoutError: some key did not appear in time; the message names them.
        """
        keys = [check_key(k) for k in keys]
        if keys:
            self._block(keys, timeout, lambda: self._exists(keys), all)

    def close(self) -> None:
        """Release this store's reference to the shared client (idempotent)."""
        if not self._closed:
            self._closed = True
            self._client.release()

    # -- helpers ------------------------------------------------------------------------------

    def _exists(self, keys: Sequence[str]) -> list[bool]:
        keys = [check_key(k) for k in keys]
        if not keys:
            return []
        script = self._client.scripts["store_exists"]
        flags = self._client.call("store check", lambda: script(keys=[self._hash], args=keys))
        return [bool(flag) for flag in flags]

    def _block(
        self, keys: list[str], timeout: timedelta | float | None, fetch: Callable[[], T], ready: Callable[[T], bool]
    ) -> T:
        """Return ``fetch()`` once ``ready`` says so; until then subscribe to the channels of
        ``keys`` and re-fetch whenever one is announced; raise :class:`StoreTimeoutError` at
        the deadline. The first fetch comes before subscribing: a key that is there costs one
        request."""
        seconds = to_seconds(self.timeout if timeout is None else timeout)
        deadline = time.monotonic() + seconds
        result = fetch()
        if ready(result):
            return result
        channels = [self._channel_prefix + key for key in dict.fromkeys(keys)]
        with self._client.notifier.waiter(channels, deadline - time.monotonic()) as waiter:
            while True:
                waiter.clear()
                result = fetch()
                if ready(result):
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = [k for k, present in zip(keys, self._exists(keys), strict=True) if not present]
                    raise StoreTimeoutError(
                        f"Timed out after {seconds:.3f} s waiting for keys {(missing or keys)[:10]} in the Redis store "
                        f"'{self._hash}' at {self._client.config.display}."
                    )
                self._client.notifier.sleep(waiter, remaining)  # polls while pub/sub is down
