"""rdzv etcd plug-ins: ``etcd-v2`` (python-etcd) and ``etcd-v3`` (etcd3gw, JSON gateway).

Install with ``pip install 'rdzv[etcd]'``. Importing this package needs neither client
library: they are imported when a backend is created (a missing one raises ``ImportError``
saying what to install).

Public surface:

* :func:`create_backend` — ``params -> (EtcdRendezvousBackend, EtcdStore)``;
* :class:`EtcdRendezvousBackend`, :class:`EtcdStore` — the backend and store, on either API;
* :class:`EtcdConfig` — endpoints, TLS, credentials and timeouts;
* :class:`EtcdServer` — a throw-away local etcd for tests and single-machine jobs.
"""

from rdzv_etcd.backend import EtcdRendezvousBackend, create_backend, create_kv
from rdzv_etcd.client import ETCD_CONFIG_KEYS, EtcdConfig, EtcdKV, OutcomeUnknownError, Versioned
from rdzv_etcd.keys import RunKeys
from rdzv_etcd.server import EtcdServer
from rdzv_etcd.store import EtcdStore

__all__ = [
    "ETCD_CONFIG_KEYS",
    "EtcdConfig",
    "EtcdKV",
    "EtcdRendezvousBackend",
    "EtcdServer",
    "EtcdStore",
    "OutcomeUnknownError",
    "RunKeys",
    "Versioned",
    "create_backend",
    "create_kv",
]
