"""The etcd key layout of a run, shared by the v2 and v3 plug-ins.

Every key of a run lives under ``<root>/<run>/`` (``root`` defaults to ``/rdzv``)::

    /rdzv/<run>/state           the shared rendezvous state (one key, compare-and-set)
    /rdzv/<run>/alive/<node>    one liveness record per node (TTL / lease bound)
    /rdzv/<run>/joins/<node>    the join queue: nodes asking to be admitted, in creation order
    /rdzv/<run>/store/<key>     the run's key-value store (EtcdStore)

``<run>``, ``<node>`` and ``<key>`` are *escaped* into a single path segment by
:func:`escape_segment`: a store key ``"a/b"`` must not create an etcd v2 directory, an IPv6
node address must not break a URL, and etcd v2 hides keys that start with ``_``. The same
layout is used on both APIs, so the keys read the same in ``etcdctl`` and in the v2 browser.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

__all__ = ["DEFAULT_ROOT", "RunKeys", "escape_segment", "unescape_segment"]

#: Root of every key rdzv writes into etcd.
DEFAULT_ROOT = "/rdzv"

_SAFE = frozenset(string.ascii_letters + string.digits + "-_.")
_SAFE_FIRST = frozenset(string.ascii_letters + string.digits + "-")
_ESCAPE = "~"


def escape_segment(text: str) -> str:
    """Return ``text`` as one URL- and path-safe key segment (str -> str).

    Letters, digits, ``-``, ``_`` and ``.`` stay as they are (``_`` and ``.`` not in first
    position: etcd v2 hides ``_``-keys, and ``.``/``..`` are path components); every other
    UTF-8 byte becomes ``~XX`` (upper-case hex). The mapping is injective, so distinct inputs
    never share a key, and :func:`unescape_segment` reverses it.

    Raises:
        ValueError: ``text`` is empty.
    """
    if not text:
        raise ValueError("An etcd key segment must not be empty.")
    out: list[str] = []
    for index, char in enumerate(text):
        if char in (_SAFE_FIRST if index == 0 else _SAFE):
            out.append(char)
        else:
            out.extend(f"{_ESCAPE}{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def unescape_segment(segment: str) -> str:
    """Reverse :func:`escape_segment` (str -> str).

    Raises:
        ValueError: ``segment`` is not the output of :func:`escape_segment`.
    """
    data = bytearray()
    index = 0
    try:
        while index < len(segment):
            char = segment[index]
            if char == _ESCAPE:
                data.append(int(segment[index + 1 : index + 3], 16))
                index += 3
            else:
                data.extend(char.encode("ascii"))
                index += 1
        text = data.decode("utf-8")
    except (ValueError, UnicodeError):
        text = None
    if text is None or escape_segment(text) != segment:  # only what escape_segment produces
        raise ValueError(f"Malformed escaped etcd key segment {segment!r:.120}.")
    return text


@dataclass(frozen=True)
class RunKeys:
    """The etcd keys of one run (all ``str``, absolute, ``/``-separated).

    Args:
        run_id: The run id (any non-empty str; escaped into one segment).
        root: Key root, ``/rdzv`` by default; must start with ``/`` and not end with it.
    """

    run_id: str
    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        if not self.root.startswith("/") or self.root.endswith("/"):
            raise ValueError(f"The etcd key root must start with '/' and not end with it (got {self.root!r}).")
        escape_segment(self.run_id)  # validates: not empty

    @property
    def run_prefix(self) -> str:
        """``<root>/<run>/``: every key of the run starts with it."""
        return f"{self.root}/{escape_segment(self.run_id)}/"

    @property
    def state(self) -> str:
        """The key of the shared rendezvous state."""
        return self.run_prefix + "state"

    @property
    def alive_prefix(self) -> str:
        """The directory (v2) / prefix (v3) of the liveness records, ending with ``/``."""
        return self.run_prefix + "alive/"

    def alive(self, node: str) -> str:
        """The liveness key of ``node``."""
        return self.alive_prefix + escape_segment(node)

    def node_of(self, alive_key: str) -> str:
        """The node whose liveness key is ``alive_key`` (inverse of :meth:`alive`)."""
        return unescape_segment(alive_key[len(self.alive_prefix) :])

    @property
    def joins_prefix(self) -> str:
        """The directory (v2) / prefix (v3) of the join queue, ending with ``/``."""
        return self.run_prefix + "joins/"

    def join(self, node: str) -> str:
        """The join-queue key of ``node``."""
        return self.joins_prefix + escape_segment(node)

    def node_of_join(self, join_key: str) -> str:
        """The node whose join-queue key is ``join_key`` (inverse of :meth:`join`)."""
        return unescape_segment(join_key[len(self.joins_prefix) :])

    @property
    def store_prefix(self) -> str:
        """The directory (v2) / prefix (v3) of the run's store, ending with ``/``."""
        return self.run_prefix + "store/"
