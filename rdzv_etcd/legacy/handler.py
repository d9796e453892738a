"""The legacy etcd rendezvous handler (torch's ``EtcdRendezvousHandler``, on rdzv's API)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from rdzv_core.api import (
    RendezvousError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStoreInfo,
)
from rdzv_etcd.client import EtcdConfig
from rdzv_etcd.legacy.protocol import EtcdRendezvous
from rdzv_etcd.legacy.settings import LegacySettings
from rdzv_etcd.legacy.transport import LegacyTransport

__all__ = ["EtcdRendezvousHandler", "create_handler"]

logger = logging.getLogger(__name__)


class EtcdRendezvousHandler(RendezvousHandler):
    """A :class:`~rdzv_core.api.RendezvousHandler` on torch's legacy etcd protocol
    (:class:`~.protocol.EtcdRendezvous`); create it with :func:`create_handler`.

    ``next_rendezvous`` returns the round's :class:`~.store.LegacyEtcdStore` and the
    bootstrap address agreed through it (``MASTER_ADDR``/``MASTER_PORT``, as torch's handler).
    As torch's, ``shutdown`` closes the rendezvous for every node (``set_closed``) and stops
    this node's keep-alives. Use from one thread at a time.
    """

    def __init__(self, rendezvous: EtcdRendezvous, backend: str, local_addr: str | None = None) -> None:
        self._rdzv = rendezvous
        self._backend = backend
        self._local_addr = local_addr

    def __repr__(self) -> str:
        return f"EtcdRendezvousHandler({self._backend!r}, run_id={self._rdzv.run_id!r})"

    @property
    def rendezvous(self) -> EtcdRendezvous:
        """The protocol object."""
        return self._rdzv

    def get_backend(self) -> str:
        """The registered name: ``"etcd"``, ``"etcd-legacy"`` or ``"etcd-legacy-v3"``."""
        return self._backend

    def next_rendezvous(self) -> RendezvousInfo:
        """Join the next round and block until it is final (see :meth:`EtcdRendezvous.barrier`).

        Raises:
            RendezvousClosedError, RendezvousTimeoutError, RendezvousStateError,
            RendezvousConnectionError: as :meth:`EtcdRendezvous.barrier`;
            StoreTimeoutError: rank 0 did not publish the bootstrap address in time.
        """
        version, rank, world_size = self._rdzv.barrier()
        store = self._rdzv.store(version)
        bootstrap = RendezvousStoreInfo.build(rank, store, local_addr=self._local_addr)
        return RendezvousInfo(store, rank, world_size, bootstrap)

    def is_closed(self) -> bool:
        """Whether the state is ``closed`` (one read; no state: ``False``)."""
        state = self._rdzv.read_state()
        return state is not None and state["status"] == "closed"

    def set_closed(self) -> None:
        """Close the rendezvous (see :meth:`EtcdRendezvous.set_closed`)."""
        self._rdzv.set_closed()

    def num_nodes_waiting(self) -> int:
        """``num_workers_waiting`` of a ``final`` state (one read), else 0."""
        state = self._rdzv.read_state()
        if state is not None and state["status"] == "final":
            return int(state["num_workers_waiting"])
        return 0

    def get_run_id(self) -> str:
        return self._rdzv.run_id

    def shutdown(self) -> bool:
        """Close the rendezvous, stop the renewals and release connections; ``False`` (logged)
        when etcd could not be told."""
        try:
            self._rdzv.set_closed()
            return True
        except RendezvousError:
            logger.warning("Closing the legacy rendezvous of run %s failed.", self._rdzv.run_id, exc_info=True)
            return False
        finally:
            self._rdzv.stop()
            self._rdzv.close()


def create_handler(
    params: RendezvousParameters, transport_type: Callable[[EtcdConfig], LegacyTransport]
) -> EtcdRendezvousHandler:
    """Create a legacy handler for ``params`` (``params.backend`` is its name).

    Config keys (``--rdzv-conf``): ``timeout`` (seconds, default 600), ``last_call_timeout``
    (30), ``etcd_prefix`` (``/torchelastic/p2p``), ``protocol``, ``cacert``, ``cert``,
    ``key``, ``username``, ``password``, ``read_timeout`` (see
    :meth:`rdzv_etcd.client.EtcdConfig.from_params`), and the TTLs ``setup_ttl`` (5),
    ``frozen_ttl`` (10), ``joinable_ttl`` (10), ``keep_alive_ttl`` (10), ``run_ttl`` (7200).

    Raises:
        ValueError: a bad endpoint or value (the message names the key).
        ImportError: the client library is missing.
        RendezvousConnectionError: etcd is unreachable.
    """
    settings = LegacySettings.from_params(params)
    config = EtcdConfig.from_params(params)
    transport = transport_type(config)
    try:
        rendezvous = EtcdRendezvous(transport, params.run_id, params.min_nodes, params.max_nodes, settings)
    except BaseException:
        transport.close()
        raise
    return EtcdRendezvousHandler(rendezvous, params.backend, params.local_addr)
