"""The public rendezvous API: exceptions, parameters, results and the handler interface.

Names and meaning follow ``torch.distributed.elastic.rendezvous.api`` so that code written
against torch's API reads the same against rdzv.
"""

from __future__ import annotations

import json
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from rdzv_core.store import Store

__all__ = [
    "RendezvousError",
    "RendezvousClosedError",
    "RendezvousTimeoutError",
    "RendezvousConnectionError",
    "RendezvousStateError",
    "RendezvousGracefulExitError",
    "RendezvousParameters",
    "RendezvousInfo",
    "RendezvousStoreInfo",
    "RendezvousHandler",
]


class RendezvousError(Exception):
    """Base class of every rendezvous error."""


class RendezvousClosedError(RendezvousError):
    """Raised when a rendezvous is closed: the job is over and no new round forms."""


class RendezvousTimeoutError(RendezvousError):
    """Raised when an operation did not complete before its deadline."""


class RendezvousConnectionError(RendezvousError):
    """Raised when the backend cannot be reached; the message names the endpoint and cause."""


class RendezvousStateError(RendezvousError):
    """Raised when the shared state in the backend is corrupt, foreign or of a newer schema."""


class RendezvousGracefulExitError(RendezvousError):
    """Raised on a redundant node when the rendezvous closes: exit cleanly, nothing failed."""


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


class RendezvousParameters:
    """What a handler creator needs to build a handler.

    Args:
        backend: Backend name as registered (``"redis"``, ``"etcd-v3"``, ...). Must not be empty.
        endpoint: Backend endpoint, ``host[:port]`` or a URL (``redis://...``); may be empty for
            backends that need none (``memory``).
        run_id: Identifier of the job; all nodes of a job use the same one. Must not be empty.
        min_nodes: Minimum number of nodes of a round (``>= 1``).
        max_nodes: Maximum number of nodes of a round (``>= min_nodes``).
        local_addr: Address this node advertises; ``None`` means its FQDN.
        **kwargs: Backend-specific configuration (``join_timeout``, ``password``, ...).

    Raises:
        ValueError: ``backend`` or ``run_id`` is empty, ``min_nodes < 1`` or
            ``max_nodes < min_nodes``; the message gives the values.
    """

    def __init__(
        self,
        backend: str,
        endpoint: str,
        run_id: str,
        min_nodes: int,
        max_nodes: int,
        local_addr: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not backend or not str(backend).strip():
            raise ValueError("The rendezvous backend name must be a non-empty string (got %r)." % (backend,))
        if not run_id or not str(run_id).strip():
            raise ValueError("The run id ('run_id') must be a non-empty string (got %r)." % (run_id,))
        if not isinstance(min_nodes, int) or isinstance(min_nodes, bool) or min_nodes < 1:
            raise ValueError(f"The minimum number of nodes ('min_nodes') must be an integer >= 1 (got {min_nodes!r}).")
        if not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or max_nodes < min_nodes:
            raise ValueError(
                f"The maximum number of nodes ('max_nodes', got {max_nodes!r}) must be an integer "
                f">= the minimum number of nodes ('min_nodes', got {min_nodes!r})."
            )
        self.backend = backend
        self.endpoint = endpoint
        self.run_id = run_id
        self.min_nodes = min_nodes
        self.max_nodes = max_nodes
        self.local_addr = local_addr
        self.config: dict[str, Any] = kwargs

    def __repr__(self) -> str:
        # Configuration may hold secrets: only its keys are shown.
        return (
            f"RendezvousParameters(backend={self.backend!r}, endpoint={self.endpoint!r}, "
            f"run_id={self.run_id!r}, min_nodes={self.min_nodes}, max_nodes={self.max_nodes}, "
            f"config_keys={sorted(self.config)})"
        )

    def get(self, key: str, default: Any = None) -> Any:
        """Return the configuration value of ``key``, or ``default`` when it is absent."""
        return self.config.get(key, default)

    def get_as_str(self, key: str, *, strip: bool = False) -> str | None:
        """Return ``key`` as a str (``strip``: without surrounding blanks), ``None`` when it is
        absent or empty.

        Raises:
            ValueError: the value is not a str; the message names the key and the type.
        """
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(
                f"The rendezvous configuration option '{key}' must be a string (got a {type(value).__name__})."
            )
        return (value.strip() if strip else value) or None

    def get_as_bool(self, key: str, default: bool | None = None) -> bool | None:
        """Return ``key`` as a bool (``1/0, true/false, yes/no, on/off``, any case).

        Raises:
            ValueError: the value is not one of those; the message names the key and value.
        """
        value = self.get(key, default)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        raise ValueError(
            f"The rendezvous configuration option '{key}' does not represent a valid boolean value (got {value!r})."
        )

    def get_as_int(self, key: str, default: int | None = None) -> int | None:
        """Return ``key`` as an int.

        Raises:
            ValueError: the value is not an integer; the message names the key and value.
        """
        value = self.get(key, default)
        if value is None:
            return value
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"The rendezvous configuration option '{key}' does not represent a valid integer value (got {value!r})."
            ) from None

    def get_as_float(self, key: str, default: float | None = None, *, minimum: float | None = None) -> float | None:
        """Return ``key`` as a float (seconds, for timeouts).

        Raises:
            ValueError: the value is not a finite number, or is below ``minimum``.
        """
        value = self.get(key, default)
        if value is None:
            return value
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(
                f"The rendezvous configuration option '{key}' does not represent a valid number (got {value!r})."
            ) from None
        if minimum is not None and number < minimum:
            raise ValueError(f"The rendezvous configuration option '{key}' must be >= {minimum} (got {value!r}).")
        return number


@dataclass
class RendezvousStoreInfo:
    """Where workers bootstrap their own communication (``MASTER_ADDR``/``MASTER_PORT``).

    Attributes:
        master_addr: Host name or address of the bootstrap server (str).
        master_port: Its TCP port (int).
    """

    MASTER_ADDR_KEY: ClassVar[str] = "MASTER_ADDR"
    MASTER_PORT_KEY: ClassVar[str] = "MASTER_PORT"
    master_addr: str
    master_port: int

    @staticmethod
    def build(
        rank: int, store: Store, local_addr: str | None, server_port: int | None = None, timeout: float | None = None
    ) -> RendezvousStoreInfo:
        """Agree on the bootstrap address through ``store`` (the keys torch uses).

        Rank 0 publishes its address (``local_addr`` or its FQDN) and ``server_port`` (or a free
        port) under the keys ``MASTER_ADDR`` and ``MASTER_PORT`` with one ``multi_set`` and keeps
        what it wrote; every other rank reads both with one blocking ``multi_get``, bounded by
        ``timeout`` seconds (``None``: the store's timeout). torch's rank 0 reads its own keys
        back and the others read them one by one: two requests more per node.

        Raises:
            StoreTimeoutError: rank 0 did not publish them in time.
            ValueError: the stored port is not an integer.
        """
        keys = [RendezvousStoreInfo.MASTER_ADDR_KEY, RendezvousStoreInfo.MASTER_PORT_KEY]
        if rank == 0:
            from rdzv_core.utils import get_free_port

            addr = local_addr or socket.getfqdn()
            port = server_port or get_free_port()
            store.multi_set(keys, [addr.encode(), str(port).encode()])
            return RendezvousStoreInfo(master_addr=addr, master_port=port)
        raw_addr, raw_port = store.multi_get(keys, timeout)
        return RendezvousStoreInfo(master_addr=raw_addr.decode(), master_port=int(raw_port.decode()))

    def encode(self) -> str:
        """This address as one str (JSON ``{"addr": str, "port": int}``), for a backend's
        round record (:meth:`BootstrapRecord.publish_bootstrap <rdzv_core.backend.BootstrapRecord.publish_bootstrap>`)."""
        return json.dumps({"addr": self.master_addr, "port": self.master_port}, separators=(",", ":"))

    @staticmethod
    def decode(text: str) -> RendezvousStoreInfo:
        """The inverse of :meth:`encode`.

        Raises:
            ValueError: ``text`` is not such a JSON object (a non-empty ``addr`` str and a
                ``port`` int in 1..65535); the message quotes it.
        """
        try:
            fields = json.loads(text)
            addr, port = fields["addr"], fields["port"]
        except (ValueError, TypeError, KeyError):
            addr = port = None
        if (
            not isinstance(addr, str)
            or not addr
            or isinstance(port, bool)
            or not isinstance(port, int)
            or not 0 < port < 65536
        ):
            raise ValueError(
                f'The bootstrap address must be JSON {{"addr": str, "port": 1..65535}} (got {text!r:.200}).'
            )
        return RendezvousStoreInfo(master_addr=addr, master_port=port)


class RendezvousInfo:
    """The result of a rendezvous: this node's rank, the world size and a shared store.

    Attributes:
        store: A :class:`~rdzv_core.store.Store` scoped to this run and round.
        rank: This node's rank, ``0 <= rank < world_size``.
        world_size: Number of nodes in the round.
        bootstrap_store_info: Where workers bootstrap their communication.
    """

    def __init__(self, store: Store, rank: int, world_size: int, bootstrap_store_info: RendezvousStoreInfo) -> None:
        self._store = store
        self._rank = rank
        self._world_size = world_size
        self._bootstrap_store_info = bootstrap_store_info

    @property
    def store(self) -> Store:
        return self._store

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def bootstrap_store_info(self) -> RendezvousStoreInfo:
        return self._bootstrap_store_info

    def __repr__(self) -> str:
        return f"RendezvousInfo(rank={self._rank}, world_size={self._world_size}, bootstrap_store_info={self._bootstrap_store_info})"


class RendezvousHandler(ABC):
    """The rendezvous interface an agent drives (same contract as torch's)."""

    @abstractmethod
    def get_backend(self) -> str:
        """Return the name of the backend (``"redis"``, ...)."""

    @property
    def use_agent_store(self) -> bool:
        """Whether workers may reuse the store of :meth:`next_rendezvous` for bootstrapping.

        ``False`` (the default) means workers bootstrap from ``MASTER_ADDR``/``MASTER_PORT``
        of :attr:`RendezvousInfo.bootstrap_store_info`.
        """
        return False

    @abstractmethod
    def next_rendezvous(self) -> RendezvousInfo:
        """Join the next round and block until it completes.

        Raises:
            RendezvousClosedError: the rendezvous is closed.
            RendezvousConnectionError: the backend is unreachable.
            RendezvousStateError: the shared state is corrupt.
            RendezvousTimeoutError: the round did not complete in time.
            RendezvousGracefulExitError: this redundant node must exit because the job closed.
        """

    @abstractmethod
    def is_closed(self) -> bool:
        """Return whether the rendezvous is closed (reads the backend)."""

    @abstractmethod
    def set_closed(self) -> None:
        """Mark the rendezvous closed; pending and future joins fail with ``RendezvousClosedError``."""

    @abstractmethod
    def num_nodes_waiting(self) -> int:
        """Return how many nodes wait to join the next round (``> 0`` means: re-rendezvous)."""

    @abstractmethod
    def get_run_id(self) -> str:
        """Return the run id of the rendezvous."""

    @abstractmethod
    def shutdown(self) -> bool:
        """Leave the rendezvous cleanly and stop background threads.

        Returns:
            ``True`` when done, ``False`` when the backend could not be told (no exception).
        """
