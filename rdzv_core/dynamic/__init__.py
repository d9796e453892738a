"""The dynamic rendezvous handler: rounds, wait list, redundancy list, keep-alives, close.

Semantics follow torch's ``DynamicRendezvousHandler``. The package:

* :mod:`.settings` — :class:`RendezvousTimeout`, :class:`RendezvousSettings`, the events;
* :mod:`.clock` — the injectable time source (:class:`Clock`);
* :mod:`.membership` — the join loop over a backend whose server applies joins, leaves,
  keep-alives, completion and the dead-node sweep atomically
  (:class:`~rdzv_core.backend.AtomicMembership`): every node costs O(1) requests and bytes
  per round, whatever N is. The production backends take this path.
* :mod:`.ops` — torch's operations on a copy of the whole state (pure: actions and
  transitions), :mod:`.liveness` and :mod:`.executor` — the compare-and-set loop, with
  change notification, liveness records and a join queue when a plain backend offers them;
* :mod:`.handler` — :class:`DynamicRendezvousHandler` and :func:`create_handler`.

What differs from torch: the state is a validated msgspec schema, never pickle; waiting nodes
are pushed, not polled every second; keep-alives never rewrite the shared state; a node
learns its rank without reading the membership; removing a participant from a complete round
makes :meth:`DynamicRendezvousHandler.num_nodes_waiting` report it; one log line per
transition and :meth:`DynamicRendezvousHandler.add_event_listener`.
"""

from __future__ import annotations

import logging

from rdzv_core.dynamic.clock import SYSTEM_CLOCK, Clock
from rdzv_core.dynamic.handler import DynamicRendezvousHandler, create_handler
from rdzv_core.dynamic.membership import Joined, MembershipExecutor, Wait
from rdzv_core.dynamic.settings import HANDLER_CONFIG_KEYS, RendezvousEvent, RendezvousSettings, RendezvousTimeout

#: The logger of every module of the package (one line per transition at INFO).
logger = logging.getLogger(__name__)

__all__ = [
    "HANDLER_CONFIG_KEYS",
    "RendezvousTimeout",
    "RendezvousSettings",
    "RendezvousEvent",
    "DynamicRendezvousHandler",
    "create_handler",
    "Clock",
    "SYSTEM_CLOCK",
    "MembershipExecutor",
    "Wait",
    "Joined",
]
