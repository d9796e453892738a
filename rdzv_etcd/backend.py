"""The etcd rendezvous backend (v2 and v3) and :func:`create_backend`.

:class:`EtcdRendezvousBackend` keeps a run's shared state in one etcd key with torch's
compare-and-set contract, and also offers the two optional capabilities of
:mod:`rdzv_core.backend`:

* :class:`~rdzv_core.backend.ChangeNotifier` — ``wait_for_change`` watches the state key from
  the token's version + 1 (no polling, no missed change);
* :class:`~rdzv_core.backend.LivenessTracker` — keep-alives write per-node keys with a TTL
  (v2) or lease (v3) under ``<run>/alive/``, so they never rewrite the shared state;
* :class:`~rdzv_core.backend.JoinQueue` — joining nodes create ``<run>/joins/<node>``; the
  handler at the head of the queue admits all of them with one compare-and-set of the state.

The protocol-specific work is done by an :class:`~rdzv_etcd.client.EtcdKV`
(:class:`~rdzv_etcd.v2.EtcdV2KV` or :class:`~rdzv_etcd.v3.EtcdV3KV`); this module is the same
for both. Keys are laid out by :class:`~rdzv_etcd.keys.RunKeys`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

from rdzv_core.api import RendezvousParameters, RendezvousStateError
from rdzv_core.backend import RendezvousBackend, Token
from rdzv_etcd.client import DEFAULT_KEY_TTL, EtcdConfig, EtcdKV, OutcomeUnknownError
from rdzv_etcd.keys import DEFAULT_ROOT, RunKeys, unescape_segment
from rdzv_etcd.store import EtcdStore

__all__ = ["EtcdRendezvousBackend", "create_backend", "create_kv", "STATE_HEADER"]

logger = logging.getLogger(__name__)

#: Every state value rdzv writes starts with these bytes; anything else is foreign or corrupt.
STATE_HEADER = b"RDZV\x01"

Api = Literal["v2", "v3"]


def _frame(state: bytes) -> bytes:
    return STATE_HEADER + state


def _unframe(key: str, value: bytes) -> bytes:
    if not value.startswith(STATE_HEADER):
        raise RendezvousStateError(
            f"The rendezvous state in etcd key '{key}' was not written by rdzv (unknown header {value[:8]!r})."
        )
    return value[len(STATE_HEADER) :]


def _parse_token(token: Token) -> int | None:
    """The version a token stands for, or ``None`` for a token this backend never issued."""
    if isinstance(token, bool):
        return None
    if isinstance(token, int):
        return token if token > 0 else None
    if isinstance(token, str) and token.isdigit():
        return int(token) or None
    return None


class EtcdRendezvousBackend(RendezvousBackend):
    """The shared rendezvous state of one run in etcd (v2 or v3, through ``kv``).

    Args:
        kv: The etcd adapter (:class:`~rdzv_etcd.v2.EtcdV2KV` / :class:`~rdzv_etcd.v3.EtcdV3KV`).
        run_id: The run id (str, not empty).
        key_ttl: Seconds (int) the state key outlives its last write; every write renews it
            (v2: key TTL; v3: lease, see :meth:`EtcdKV.put`). Default 7200 (torch's).
        root: Root of the key layout (``/rdzv``).

    **Keys** (:class:`~rdzv_etcd.keys.RunKeys`): the state at ``<root>/<run>/state``; liveness
    records at ``<root>/<run>/alive/<node>``; the join queue at ``<root>/<run>/joins/<node>``.

    **Token** (:data:`~rdzv_core.backend.Token`): an ``int``, the state key's version — v2
    ``modifiedIndex``, v3 ``mod_revision``. Any other token is foreign: never matches.

    **Value**: :data:`STATE_HEADER` followed by the state bytes (v2: base64 of that). A value
    without the header raises :class:`~rdzv_core.api.RendezvousStateError`.

    Every method may raise :class:`~rdzv_core.api.RendezvousConnectionError` (endpoint and
    cause) when etcd is unreachable after a short retry.
    """

    def __init__(self, kv: EtcdKV, run_id: str, *, key_ttl: int = DEFAULT_KEY_TTL, root: str = DEFAULT_ROOT) -> None:
        if not run_id:
            raise ValueError("The run id must be a non-empty string.")
        if isinstance(key_ttl, bool) or not isinstance(key_ttl, int) or key_ttl < 1:
            raise ValueError(
                f"The rendezvous configuration option 'key_ttl' must be an integer >= 1 second (got {key_ttl!r})."
            )
        self._kv = kv
        self._keys = RunKeys(run_id, root)
        self._key_ttl = key_ttl

    @property
    def name(self) -> str:
        """``"etcd-v2"`` or ``"etcd-v3"``."""
        return self._kv.backend_name

    @property
    def kv(self) -> EtcdKV:
        """The etcd adapter."""
        return self._kv

    @property
    def keys(self) -> RunKeys:
        """The run's key layout."""
        return self._keys

    # -- RunCatalog -------------------------------------------------------------------------

    def list_run_ids(self) -> list[str]:
        """Return the ids of the runs under the key root (one keys-only read of
        ``<root>/``: v3 a ``keys_only`` range, v2 a directory read); segments rdzv did not
        escape are skipped."""
        runs = []
        for name in self._kv.child_names(self._keys.root + "/"):
            try:
                runs.append(unescape_segment(name))
            except ValueError:
                continue  # not a run of rdzv's layout
        return sorted(runs)

    def delete_run(self) -> int:
        """Delete every key under ``<root>/<run>/`` (v3 one ``deleterange``, v2 a recursive
        delete of the directory); return how many keys went."""
        return self._kv.delete_prefix(self._keys.run_prefix)

    def __repr__(self) -> str:
        return f"EtcdRendezvousBackend({self.name}, {self._kv.endpoint}, key={self._keys.state!r})"

    # -- RendezvousBackend ----------------------------------------------------------------

    def get_state(self) -> tuple[bytes, Token] | None:
        """Read the state key: ``(state bytes, version)`` or ``None`` when absent.

        Raises:
            RendezvousStateError: the key holds data rdzv did not write.
        """
        stored = self._kv.get(self._keys.state)
        if stored is None:
            return None
        return _unframe(self._keys.state, stored.value), stored.version

    def set_state(self, state: bytes, token: Token | None = None) -> tuple[bytes, Token, bool] | None:
        """Compare-and-set the state key (v2: ``prevIndex``/``prevExist=false``; v3: a
        transaction on ``mod_revision``/``create_revision``), renewing its TTL.

        Returns:
            ``(state, token, has_set)`` after the call; ``None`` when the key vanished (expired
            or deleted) while the caller held a token. When the connection broke after the
            write was sent, the state is re-read and ``has_set`` is ``False``.
        """
        if token is None:
            version = None
        else:
            version = _parse_token(token)
            if version is None:  # a foreign token never matches
                current = self.get_state()
                return None if current is None else (*current, False)
        try:
            applied, stored = self._kv.put_if(self._keys.state, _frame(state), version, ttl=self._key_ttl)
        except OutcomeUnknownError:
            # The connection broke mid-write (e.g. etcd crashed). Reporting "not set" with the
            # current state is always safe for the handler: if the write did land, the state
            # it reads back already shows it.
            logger.info("The outcome of a state write to %s is unknown; re-reading the state.", self._kv.endpoint)
            current = self.get_state()
            return None if current is None else (*current, False)
        if stored is None:
            return None
        return _unframe(self._keys.state, stored.value), stored.version, applied

    def close(self) -> None:
        """Release the connections (shared with the store of :func:`create_backend`, which
        reconnects on its next call)."""
        self._kv.close()

    # -- ChangeNotifier -------------------------------------------------------------------

    def wait_for_change(self, token: Token | None, timeout: float) -> bool:
        """Block until the state's version differs from ``token`` or ``timeout`` seconds pass.

        With a token: a watch on the state key from ``token + 1`` (etcd replays changes made
        since the token, so none is missed; a compacted/cleared history is re-read and the
        watch resumes if the state is unchanged; a server that lost its data, i.e. whose
        revision is below the token, counts as a change). Without one:
        read, and watch from the read's revision + 1 if there is no state. ``timeout == 0``
        only reads.

        Returns:
            ``True`` on a change (or a foreign token), ``False`` on timeout.
        """
        key = self._keys.state
        version = None if token is None else _parse_token(token)
        if token is not None and version is None:
            return True
        if token is None or timeout <= 0:
            values, revision = self._kv.get_many([key])
            current = values.get(key)
            changed = (current is not None) if token is None else (current is None or current.version != version)
            if changed or timeout <= 0:
                return changed
            return self._kv.watch(key, revision + 1, timeout)
        assert version is not None
        return self._kv.watch(key, version + 1, timeout)

    # -- LivenessTracker ------------------------------------------------------------------

    def keep_alive(self, node: str, ttl: float) -> None:
        """Write ``<run>/alive/<node>`` = this host's wall-clock time (seconds since the epoch,
        ASCII), expiring ``ttl`` seconds (v3: up to ``2 * ttl``) after this call.

        Raises:
            ValueError: ``ttl <= 0``.
        """
        if not ttl > 0:
            raise ValueError(f"The keep-alive TTL must be > 0 seconds (got {ttl!r}).")
        self._kv.put(self._keys.alive(node), f"{time.time():.6f}".encode("ascii"), ttl=ttl)

    def heartbeat_ages(self, nodes: Sequence[str]) -> list[float | None]:
        """Seconds since each node's last keep-alive (by this host's clock, as torch compares
        heartbeats), or ``None`` when it has no unexpired record. One request for all nodes.

        Raises:
            RendezvousStateError: a record is not a timestamp.
        """
        records = self._kv.list_prefix(self._keys.alive_prefix)
        now = time.time()
        ages: list[float | None] = []
        for node in nodes:
            key = self._keys.alive(node)
            record = records.get(key)
            ages.append(None if record is None else max(0.0, now - _timestamp(key, record.value)))
        return ages

    def forget_node(self, node: str) -> None:
        """Delete ``node``'s liveness record (absent is fine)."""
        self._kv.delete(self._keys.alive(node))

    # -- JoinQueue ------------------------------------------------------------------------

    def enqueue_join(self, node: str) -> int:
        """Create ``<run>/joins/<node>`` if absent (create-only compare-and-set, expiring
        with ``key_ttl`` like the state) and return the node's 1-based place in the queue.

        The queue order is the entries' versions (creation order: entries are never
        rewritten); the place is the number of entries not newer than this one (v3: a
        server-side count with ``max_mod_revision``; v2: a directory read). Two requests.
        """
        key = self._keys.join(node)
        for _ in range(3):  # the entry may be acked between a lost create and the read
            try:
                _, stored = self._kv.put_if(key, node.encode("utf-8"), None, ttl=self._key_ttl)
            except OutcomeUnknownError:
                continue  # a create-only write is safe to repeat
            if stored is not None:
                return max(1, self._kv.count_prefix(self._keys.joins_prefix, max_version=stored.version))
        return 1  # acked three times in a row: this node was admitted meanwhile

    def pending_joins(self) -> list[str]:
        """The queued nodes in arrival order (one prefix read; the queue is not changed).

        Raises:
            RendezvousStateError: a key or value under ``<run>/joins/`` was not written by rdzv.
        """
        entries = self._kv.list_prefix(self._keys.joins_prefix)
        ordered = sorted(entries.items(), key=lambda item: item[1].version)
        nodes = []
        for key, _ in ordered:
            try:
                nodes.append(self._keys.node_of_join(key))
            except ValueError:
                raise RendezvousStateError(f"The join queue holds a key rdzv did not write: {key!r:.200}.") from None
        return nodes

    def pending_join_count(self) -> int:
        """The number of queued nodes (v3: counted by etcd; v2: a directory read)."""
        return self._kv.count_prefix(self._keys.joins_prefix)

    def ack_joins(self, nodes: Sequence[str]) -> None:
        """Remove ``nodes`` from the queue (v3: one transaction per 128 nodes)."""
        self._kv.delete_many([self._keys.join(node) for node in nodes])


def _timestamp(key: str, raw: bytes) -> float:
    try:
        return float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise RendezvousStateError(
            f"The liveness record in etcd key '{key}' is not a timestamp: {raw[:40]!r}."
        ) from None


def create_kv(config: EtcdConfig, api: Api) -> EtcdKV:
    """Create the adapter of ``api`` (``"v2"``: python-etcd, ``"v3"``: etcd3gw).

    Raises:
        ValueError: unknown ``api``. ImportError: its client library is missing.
    """
    if api == "v2":
        from rdzv_etcd.v2 import EtcdV2KV

        return EtcdV2KV(config)
    if api == "v3":
        from rdzv_etcd.v3 import EtcdV3KV

        return EtcdV3KV(config)
    raise ValueError(f"Unknown etcd API {api!r}; use 'v2' or 'v3'.")


def _api_of(backend: str) -> Api:
    if backend == "etcd-v2":
        return "v2"
    if backend in ("etcd-v3", "etcd"):
        return "v3"
    raise ValueError(f"The rendezvous backend '{backend}' is not an etcd backend ('etcd-v2' or 'etcd-v3').")


def create_backend(params: RendezvousParameters, api: Api | None = None) -> tuple[EtcdRendezvousBackend, EtcdStore]:
    """Create the backend and the store of ``params.run_id`` on etcd.

    Args:
        params: ``endpoint`` (``host[:port]``, ``http(s)://host:port``, or several
            comma-separated), ``run_id``, and the config keys below.
        api: ``"v2"`` or ``"v3"``; by default from ``params.backend`` (``etcd-v2``/``etcd-v3``).

    ============  ===============================================================  ==========
    Key           Meaning                                                          Default
    ============  ===============================================================  ==========
    protocol      ``http`` or ``https`` (an ``https://`` endpoint implies it)      ``http``
    cacert        CA bundle (PEM path) that verifies the server                    system
    cert, key     client certificate and its key (PEM paths)                       none
    username      etcd user (or env ``RDZV_ETCD_USERNAME``)                        none
    password      its password (or env ``RDZV_ETCD_PASSWORD``); never logged      none
    read_timeout  seconds one request may take                                     60
    key_ttl       seconds the state outlives its last write                        7200
    membership    v3: per-node membership keys and transactions                    ``true``
                  (:mod:`rdzv_etcd.membership`); ``false``: the whole-state blob
                  with the join queue (the v2 API always uses the blob)
    ============  ===============================================================  ==========

    Unknown keys are reported by the caller (:meth:`rdzv_core.plugin.BackendPlugin.open`).

    The backend and the store share one connection pool. The store is scoped to the run
    (``<root>/<run>/store/``). One read of the state key checks that etcd is reachable.

    Returns:
        ``(backend, store)``.

    Raises:
        ValueError: a bad endpoint or config value (the message names the key).
        ImportError: the client library is missing (``pip install 'rdzv[etcd]'``).
        RendezvousConnectionError: etcd is unreachable or refuses the credentials; names
            the endpoint and the cause, never the password.
    """
    api = api or _api_of(params.backend)
    config = EtcdConfig.from_params(params)
    membership = params.get_as_bool("membership")
    if membership and api == "v2":
        raise ValueError(
            f"The rendezvous configuration option 'membership' needs etcd's v3 API (backend 'etcd-v3'), not {params.backend!r} (got {params.get('membership')!r})."
        )
    kv = create_kv(config, api)
    backend: EtcdRendezvousBackend
    if api == "v3" and membership is not False:
        from rdzv_etcd.membership import EtcdMembershipBackend

        backend = EtcdMembershipBackend(kv, params.run_id, key_ttl=config.key_ttl)
    else:
        backend = EtcdRendezvousBackend(kv, params.run_id, key_ttl=config.key_ttl)
    store = EtcdStore(kv, backend.keys.store_prefix)
    _probe(kv, backend.keys.state)
    return backend, store


def _probe(kv: EtcdKV, key: str) -> Any:
    """One read, so that a wrong endpoint, TLS setup or password fails at creation."""
    return kv.get_many([key])
