"""torch's legacy etcd rendezvous (``EtcdRendezvousHandler``) on rdzv, on etcd v2 and v3.

* :mod:`.settings` — torch's constants and the configuration keys;
* :mod:`.transport` — the etcd operations the protocol needs; :mod:`.v2` (torch's wire
  format, python-etcd) and :mod:`.v3` (transactions and leases, etcd3gw);
* :mod:`.protocol` — the state machine (``setup`` -> ``joinable`` -> ``frozen`` -> ``final``);
* :mod:`.store` — torch's ``EtcdStore`` layout on rdzv's store;
* :mod:`.handler` — the :class:`~rdzv_core.api.RendezvousHandler`;
* :mod:`.plugin` — the backends ``etcd``, ``etcd-legacy`` and ``etcd-legacy-v3``.
"""
