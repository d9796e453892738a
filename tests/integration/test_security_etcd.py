"""etcd locked down, v2 and v3: authentication with a user whose role only reaches ``/rdzv/``
(the guest role revoked on v2), TLS with client certificates — each with a full rendezvous
through the registry — and passwords and auth tokens that never reach logs, exceptions or
``rdzv status``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
import traceback
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdzv_core.api import RendezvousConnectionError, RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler
from tests.integration.test_security_redis import make_pki

pytestmark = pytest.mark.integration

#: etcd's v2 API checks the password (bcrypt) on EVERY request: ~0.05-0.5 s of etcd CPU each
#: on a loaded machine. The v2 tests keep the request count low (default keep-alives, fewer
#: nodes, longer read timeout); v3 authenticates once per token.
V2_AUTH = dict(read_timeout=20)

ROOT_PASSWORD = "etcd-r00t-Pw-13f0"
PASSWORD = "etcd-rdzv-Pw-8a61"
BOUND = 30


def _request(url, path, body, method="POST", basic=None):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method=method)
    request.add_header("Content-Type", "application/json")
    if basic:
        request.add_header("Authorization", "Basic " + base64.b64encode(basic.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own server
        return json.loads(response.read() or b"{}")


def _b64(text):
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def auth_etcd():
    """etcd with auth on both APIs: ``root`` (admin) and ``rdzv``, whose role may read and
    write ``/rdzv/`` only; v2's guest role is revoked (v2 lets anyone in by default)."""
    try:
        from rdzv_etcd.server import EtcdServer

        server = EtcdServer(enable_v2=True).start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        url = server.url
        _request(url, "/v3/auth/user/add", {"name": "root", "password": ROOT_PASSWORD})
        _request(url, "/v3/auth/role/add", {"name": "root"})
        _request(url, "/v3/auth/user/grant", {"user": "root", "role": "root"})
        _request(url, "/v3/auth/role/add", {"name": "rdzv"})
        _request(
            url,
            "/v3/auth/role/grant",
            {"name": "rdzv", "perm": {"permType": "READWRITE", "key": _b64("/rdzv/"), "range_end": _b64("/rdzv0")}},
        )
        _request(url, "/v3/auth/user/add", {"name": "rdzv", "password": PASSWORD})
        _request(url, "/v3/auth/user/grant", {"user": "rdzv", "role": "rdzv"})
        _request(url, "/v3/auth/enable", {})
        root = f"root:{ROOT_PASSWORD}"
        _request(url, "/v2/auth/users/root", {"user": "root", "password": ROOT_PASSWORD}, "PUT")
        _request(url, "/v2/auth/enable", {}, "PUT")
        _request(
            url,
            "/v2/auth/roles/rdzv",
            {"role": "rdzv", "permissions": {"kv": {"read": ["/rdzv/*"], "write": ["/rdzv/*"]}}},
            "PUT",
            root,
        )
        _request(url, "/v2/auth/users/rdzv", {"user": "rdzv", "password": PASSWORD, "roles": ["rdzv"]}, "PUT", root)
        _request(
            url,
            "/v2/auth/roles/guest",
            {"role": "guest", "revoke": {"kv": {"read": ["/*"], "write": ["/*"]}}},
            "PUT",
            root,
        )
        yield server
    finally:
        server.stop()


@pytest.fixture
def handlers():
    made = []

    def make(params, n):
        new = [get_rendezvous_handler(params) for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for handler in made:
        handler._stop_heartbeats()
        handler.backend.close()


def params(api, endpoint, run_id, min_nodes, max_nodes, **config):
    config.setdefault("read_timeout", 5)
    config.setdefault("last_call_timeout", 1.0)
    config.setdefault("join_timeout", BOUND)
    return RendezvousParameters(f"etcd-{api}", endpoint, run_id, min_nodes, max_nodes, local_addr="127.0.0.1", **config)


def rendezvous(group):
    with ThreadPoolExecutor(max_workers=len(group)) as pool:
        infos = [f.result(timeout=BOUND) for f in [pool.submit(h.next_rendezvous) for h in group]]
    assert sorted(i.rank for i in infos) == list(range(len(group))) and {i.world_size for i in infos} == {len(group)}
    return infos


def full_life(group):
    """Round of 3, store, a silent node removed, round of 2, close."""
    infos = rendezvous(group)
    store = infos[0].store
    store.set("k", b"v")
    assert infos[2].store.get("k") == b"v" and store.add("n", 1) == 1
    group[2]._stop_heartbeats()
    deadline = time.monotonic() + BOUND
    while group[0].num_nodes_waiting() == 0:
        assert time.monotonic() < deadline, "the silent node was never removed"
        time.sleep(0.05)
    rendezvous(group[:2])
    assert group[0].shutdown() and group[1].is_closed()


def cli(*args, env=None):
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "rdzv_core.cli", *args], capture_output=True, text=True, timeout=60, env=full_env
    )


# -- authentication ----------------------------------------------------------------------------


def test_least_privilege_user_runs_a_full_rendezvous(auth_etcd, etcd_api, handlers):
    if etcd_api == "v2":  # one node: every v2 request costs etcd a bcrypt
        (handler,) = handlers(
            params("v2", auth_etcd.endpoint, "auth-v2", 1, 1, username="rdzv", password=PASSWORD, **V2_AUTH), 1
        )
        (info,) = rendezvous([handler])
        info.store.set("k", b"v")
        assert info.store.get("k") == b"v"
        assert handler.shutdown() and handler.is_closed()
        return
    group = handlers(
        params(
            "v3",
            auth_etcd.endpoint,
            "auth-v3",
            2,
            3,
            username="rdzv",
            password=PASSWORD,
            keep_alive_interval=0.3,
            keep_alive_max_attempt=4,
        ),
        3,
    )
    full_life(group)


@pytest.mark.parametrize(
    "credentials",
    [{}, {"username": "rdzv", "password": "wrong-" + PASSWORD}, {"username": "nobody", "password": PASSWORD}],
    ids=["none", "wrong-password", "unknown-user"],
)
def test_missing_or_wrong_credentials_are_bounded_clear_errors(auth_etcd, etcd_api, credentials):
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError) as info:
        handler = get_rendezvous_handler(params(etcd_api, auth_etcd.endpoint, f"auth-{etcd_api}", 1, 1, **credentials))
        try:
            handler.next_rendezvous()
        finally:
            handler.backend.close()
    assert time.monotonic() - start < 5  # refused, not retried
    message = str(info.value)
    assert auth_etcd.endpoint in message
    assert any(word in message.lower() for word in ("authentication", "credentials", "user name is empty", "password"))
    assert PASSWORD not in "".join(traceback.format_exception(info.value))


# -- TLS with client certificates ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    pytest.importorskip("cryptography")
    pki = make_pki(str(tmp_path_factory.mktemp("etcd-pki")))
    try:
        from rdzv_etcd.server import EtcdServer

        server = EtcdServer(
            enable_v2=True, cert_file=pki["server_cert"], key_file=pki["server_key"], client_ca_file=pki["ca"]
        ).start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield server, pki
    finally:
        server.stop()


def test_tls_client_certificates_full_rendezvous(tls_etcd, etcd_api, handlers):
    server, pki = tls_etcd
    tls = dict(
        cacert=pki["ca"],
        cert=pki["client_cert"],
        key=pki["client_key"],
        keep_alive_interval=0.3,
        keep_alive_max_attempt=4,
    )
    full_life(handlers(params(etcd_api, server.url, f"tls-{etcd_api}", 2, 3, **tls), 3))
    status = cli(
        "status",
        "--backend",
        f"etcd-{etcd_api}",
        "--endpoint",
        server.url,
        "--run-id",
        f"tls-{etcd_api}",
        "--json",
        "--rdzv-conf",
        f"cacert={pki['ca']},cert={pki['client_cert']},key={pki['client_key']}",
    )
    assert status.returncode == 0 and json.loads(status.stdout)["closed"] is True, status.stderr


def test_tls_without_a_client_certificate_is_refused_in_bounded_time(tls_etcd, etcd_api):
    server, pki = tls_etcd
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError):
        get_rendezvous_handler(
            params(etcd_api, server.url, f"tls-{etcd_api}", 1, 1, cacert=pki["ca"])
        ).next_rendezvous()
    assert time.monotonic() - start < 10


# -- secrets -------------------------------------------------------------------------------------


def test_passwords_and_tokens_never_in_logs_exceptions_or_status(auth_etcd, etcd_api, handlers, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("etcd", "etcd3gw", "urllib3", "requests", "rdzv_core", "rdzv_etcd"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    run_id = f"secret-{etcd_api}"
    extra = V2_AUTH if etcd_api == "v2" else dict(keep_alive_interval=0.3, keep_alive_max_attempt=5)
    url_form = f"http://rdzv:{PASSWORD}@{auth_etcd.endpoint}"  # credentials in the endpoint URL
    n = 1 if etcd_api == "v2" else 2
    group = handlers(params(etcd_api, url_form, run_id, n, n, **extra), 1)
    group += handlers(
        params(etcd_api, auth_etcd.endpoint, run_id, n, n, username="rdzv", password=PASSWORD, **extra), n - 1
    )
    texts = []
    infos = rendezvous(group)
    texts += [
        repr(h) + repr(h.backend) + repr(h.backend.kv) + repr(h.backend.kv.config) + repr(i)
        for h, i in zip(group, infos, strict=True)
    ]
    time.sleep(0.5)  # keep-alives (v3)
    tokens = set()
    for handler in group:
        for client in handler.backend.kv._clients:
            token = getattr(getattr(client, "session", None), "headers", {}).get("Authorization")
            if token and not token.startswith("Basic"):
                tokens.add(token)
    if etcd_api == "v3":
        assert tokens, "expected v3 auth tokens to look for"
    try:
        get_rendezvous_handler(
            params(etcd_api, auth_etcd.endpoint, run_id, n, n, username="rdzv", password=PASSWORD[::-1])
        )
    except RendezvousConnectionError as exc:
        texts.append("".join(traceback.format_exception(exc)))
    else:
        pytest.fail("a wrong password was accepted")
    backend_name = f"etcd-{etcd_api}"
    conf = f"read_timeout={extra.get('read_timeout', 5)}"
    runs = [  # (v2: the environment form is left out, each v2 request costs etcd a bcrypt)
        cli(
            "status",
            "--backend",
            backend_name,
            "--endpoint",
            auth_etcd.endpoint,
            "--run-id",
            run_id,
            "--json",
            "--log-level",
            "DEBUG",
            "--rdzv-conf",
            f"username=rdzv,password={PASSWORD},{conf}",
        ),
        cli(
            "status",
            "--backend",
            backend_name,
            "--endpoint",
            url_form,
            "--run-id",
            run_id,
            "--log-level",
            "DEBUG",
            "--rdzv-conf",
            conf,
        ),
        cli(
            "status",
            "--backend",
            backend_name,
            "--endpoint",
            auth_etcd.endpoint,
            "--run-id",
            run_id,
            "--log-level",
            "DEBUG",
            "--rdzv-conf",
            conf,
            env={"RDZV_ETCD_USERNAME": "rdzv", "RDZV_ETCD_PASSWORD": PASSWORD},
        )
        if etcd_api == "v3"
        else cli("--version"),
        cli(
            "status",
            "--backend",
            backend_name,
            "--endpoint",
            auth_etcd.endpoint,
            "--run-id",
            run_id,
            "--json",
            "--log-level",
            "DEBUG",
            "--rdzv-conf",
            f"username=rdzv,password={PASSWORD[::-1]},{conf}",
        ),
    ]
    assert [r.returncode for r in runs[:3]] == [0, 0, 0], [r.stderr[-500:] for r in runs]
    assert len(json.loads(runs[0].stdout)["participants"]) == n and runs[3].returncode != 0
    texts += [r.stdout + r.stderr for r in runs]
    texts.append(caplog.text)
    assert len(caplog.records) > 10
    for text in texts:
        assert PASSWORD not in text and PASSWORD[::-1] not in text
        for token in tokens:
            assert token not in text
