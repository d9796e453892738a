"""Redis locked down: a password, ACL users limited to rdzv's keys, channels and commands (and to
one run), mutual TLS — each through the registry with a full rendezvous — and secrets that
never reach logs, exceptions or ``rdzv status``.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdzv_core.api import RendezvousConnectionError, RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler
from rdzv_core.store import StoreTimeoutError
from rdzv_core.utils import get_free_port
from rdzv_redis.server import RedisServer, find_redis_server

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "adm1n-Pw-0b9e"
PASSWORD = "rdzv-Us3r-Pw-4c2d"
#: The ACL rules an rdzv user needs (README): its keys, its channels, these commands.
RDZV_COMMANDS = (
    "+ping +hello +client|setname +get +getrange +set +incr +pexpire +time +evalsha +script|load "
    "+multi +exec +publish +subscribe +unsubscribe +hset +hget +hmget +hgetall +hexists +hdel +hlen +del "
    "+hincrby +zadd +zcard +zmscore +zrange +zrangebyscore +zrank +zrem +zscore"
).split()
BOUND = 30


def make_pki(directory: str) -> dict[str, str]:
    """A CA, a server certificate for localhost/127.0.0.1 (also usable as a client
    certificate, as etcd's own health probe needs), a client certificate, and an unrelated CA.
    Returns PEM paths: ca, server_cert, server_key, client_cert, client_key, other_ca."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def builder(subject, issuer, key):
        return (
            x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )  # fmt: skip

    def write(stem, data):
        path = os.path.join(directory, stem)
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def key_pem(key):
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def ca(label):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(label, label, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("rdzv security test CA")
    _, other_ca = ca("some other CA")
    paths = {
        "ca": write("ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM)),
        "other_ca": write("other-ca.pem", other_ca.public_bytes(serialization.Encoding.PEM)),
    }
    sans = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    for stem, subject, usages, san in (
        ("server", "localhost", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], sans),
        ("client", "rdzv-client", [ExtendedKeyUsageOID.CLIENT_AUTH], None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = builder(subject, "rdzv security test CA", key).add_extension(
            x509.ExtendedKeyUsage(usages), critical=False
        )
        if san is not None:
            cert = cert.add_extension(san, critical=False)
        cert = cert.sign(ca_key, hashes.SHA256())
        paths[f"{stem}_cert"] = write(f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{stem}_key"] = write(f"{stem}.key", key_pem(key))
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    pytest.importorskip("cryptography")
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def acl_server():
    """Redis whose default user has ADMIN_PASSWORD, with ACL users ``rdzv`` (all runs) and
    ``job-a`` (run ``job-a`` only), both limited to rdzv's commands and channels."""
    if not find_redis_server():
        pytest.skip("no redis-server")
    import redis

    with RedisServer(password=ADMIN_PASSWORD) as server:
        admin = redis.Redis(host=server.host, port=server.port, password=ADMIN_PASSWORD)
        admin.execute_command(
            "ACL",
            "SETUSER",
            "rdzv",
            "reset",
            "on",
            f">{PASSWORD}",
            "~rdzv:*",
            "resetchannels",
            "&rdzv:*",
            *RDZV_COMMANDS,
        )
        admin.execute_command(
            "ACL",
            "SETUSER",
            "job-a",
            "reset",
            "on",
            f">{PASSWORD}",
            "~rdzv:{job-a}:*",
            "resetchannels",
            "&rdzv:{job-a}:*",
            *RDZV_COMMANDS,
        )
        # may publish (the scripts do) but not subscribe
        admin.execute_command(
            "ACL",
            "SETUSER",
            "no-subscribe",
            "reset",
            "on",
            f">{PASSWORD}",
            "~rdzv:*",
            "resetchannels",
            "&rdzv:*",
            *[c for c in RDZV_COMMANDS if c not in ("+subscribe", "+unsubscribe")],
        )
        admin.set("not-rdzv", "secret data")
        server.admin = admin
        yield server
        admin.close()


class Handlers:
    def __init__(self) -> None:
        self.made: list = []

    def make(self, params: RendezvousParameters, n: int) -> list:
        handlers = [get_rendezvous_handler(params) for _ in range(n)]
        self.made += handlers
        return handlers

    def close(self) -> None:
        for handler in self.made:
            handler._stop_heartbeats()
            handler.backend.close()
            handler._store.close()


@pytest.fixture
def handlers():
    made = Handlers()
    yield made
    made.close()


def rendezvous(handlers):
    with ThreadPoolExecutor(max_workers=len(handlers)) as pool:
        infos = [f.result(timeout=BOUND) for f in [pool.submit(h.next_rendezvous) for h in handlers]]
    assert sorted(i.rank for i in infos) == list(range(len(handlers))) and {i.world_size for i in infos} == {
        len(handlers)
    }
    return infos


def store_round_trip(info) -> None:
    store = info.store
    store.set("k", b"v")
    assert store.get("k") == b"v" and store.add("n", 2) == 2 and store.compare_set("k", b"v", b"w") == b"w"
    store.append("k", b"+")
    store.multi_set(["a", "b"], [b"1", b"2"])
    assert store.multi_get(["a", "b"]) == [b"1", b"2"] and store.check(["a"]) and store.num_keys() >= 4
    store.wait(["a", "b"], 1)
    assert store.delete_key("a")


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "rdzv_core.cli", *args], capture_output=True, text=True, timeout=60, env=full_env
    )


def params(endpoint, run_id, n=2, min_nodes=None, **config):
    """``n`` nodes (``min_nodes`` to ``n``): a round of all ``n`` completes at once."""
    config.setdefault("last_call_timeout", 1.0)
    config.setdefault("join_timeout", BOUND)
    return RendezvousParameters("redis", endpoint, run_id, min_nodes or n, n, local_addr="127.0.0.1", **config)


# -- password and ACL users ---------------------------------------------------------------------


def test_password_protected_rendezvous_and_wrong_password(own_redis_server, handlers):
    server = own_redis_server(password=PASSWORD)
    infos = rendezvous(handlers.make(params(server.endpoint, "pw-run", password=PASSWORD), 2))
    store_round_trip(infos[0])
    for wrong in ({"password": "nope-" + PASSWORD}, {}):
        start = time.monotonic()
        with pytest.raises(RendezvousConnectionError, match="Authentication .* failed") as info:
            get_rendezvous_handler(params(server.endpoint, "pw-run", retry_timeout=10, **wrong))
        assert time.monotonic() - start < 2  # an authentication failure is not retried
        assert PASSWORD not in "".join(traceback.format_exception(info.value))


def test_acl_user_with_the_documented_rules_runs_everything(acl_server, handlers):
    endpoint = acl_server.endpoint
    acl_server.admin.execute_command("ACL", "LOG", "RESET")
    group = handlers.make(
        params(
            endpoint,
            "acl-run",
            n=3,
            min_nodes=2,
            username="rdzv",
            password=PASSWORD,
            keep_alive_interval=0.3,
            keep_alive_max_attempt=4,
        ),
        3,
    )
    infos = rendezvous(group)
    store_round_trip(infos[1])
    group[2]._stop_heartbeats()  # dead-node removal, a second round, close: every code path
    deadline = time.monotonic() + BOUND
    while group[0].num_nodes_waiting() == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rendezvous(group[:2])
    status = cli(
        "status",
        "--endpoint",
        endpoint,
        "--run-id",
        "acl-run",
        "--json",
        "--rdzv-conf",
        f"username=rdzv,password={PASSWORD}",
    )
    assert status.returncode == 0, status.stderr
    assert group[0].shutdown()
    denied = acl_server.admin.execute_command("ACL", "LOG")
    assert denied == [], f"the documented ACL rules miss something: {denied}"


def test_acl_user_of_one_run_cannot_touch_another(acl_server, handlers):
    import redis

    endpoint = acl_server.endpoint
    acl_server.admin.execute_command("ACL", "LOG", "RESET")
    own = handlers.make(params(endpoint, "job-a", n=1, username="job-a", password=PASSWORD), 1)
    rendezvous(own)
    # Its own run's channels are all it subscribes to: allowed, so it waits by pub/sub.
    assert own[0].backend._client.notifier.wait_subscribed(5)
    assert acl_server.admin.execute_command("ACL", "LOG") == []
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError, match="refused .*no permissions") as info:
        handlers.make(params(endpoint, "job-b", n=1, username="job-a", password=PASSWORD, retry_timeout=10), 1)[
            0
        ].next_rendezvous()
    assert time.monotonic() - start < 2 and endpoint in str(info.value)
    as_user = redis.Redis(host=acl_server.host, port=acl_server.port, username="job-a", password=PASSWORD)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_user.get("not-rdzv")
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_user.flushall()
    finally:
        as_user.close()


def test_acl_user_without_subscribe_still_completes_by_polling(acl_server, handlers, caplog):
    """A user denied SUBSCRIBE: waiters fall back to polling (the state and the store's
    blocking reads alike), and the client says so once as a warning."""
    group = handlers.make(
        params(acl_server.endpoint, "no-subscribe-run", username="no-subscribe", password=PASSWORD), 2
    )
    start = time.monotonic()
    infos = rendezvous(group)
    store = infos[0].store
    store.set_timeout(BOUND)
    with ThreadPoolExecutor(max_workers=1) as pool:
        later = pool.submit(store.get, "later")
        time.sleep(0.3)
        infos[1].store.set("later", b"seen")
        assert later.result(timeout=BOUND) == b"seen"
    assert time.monotonic() - start < 10
    assert not group[0].backend._client.notifier.subscribed
    # Refused, it retries with a back-off (at most about once a second), not at every poll of
    # a waiter: count the connections made while a get() waits 3 s for a key nobody writes.
    connections = lambda: int(acl_server.admin.info("stats")["total_connections_received"])  # noqa: E731
    before = connections()
    with pytest.raises(StoreTimeoutError):
        store.multi_get(["never"], timeout=3.0)
    assert connections() - before <= 6
    warnings = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "refused the pub/sub" in r.getMessage()
    ]
    assert warnings and "+subscribe" in warnings[0] and PASSWORD not in "".join(warnings)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(pki):
    if not find_redis_server():
        pytest.skip("no redis-server")
    with RedisServer(
        password=PASSWORD,
        tls_cert_file=pki["server_cert"],
        tls_key_file=pki["server_key"],
        tls_ca_cert_file=pki["ca"],
        tls_auth_clients=True,
    ) as server:
        yield server


def test_mutual_tls_rendezvous(tls_server, pki, handlers):
    tls = dict(
        ssl_ca_certs=pki["ca"], ssl_certfile=pki["client_cert"], ssl_keyfile=pki["client_key"], password=PASSWORD
    )
    group = handlers.make(params(tls_server.tls_url, "tls-run", **tls), 2)
    assert group[0].backend._client.config.tls
    infos = rendezvous(group)
    store_round_trip(infos[0])
    status = cli(
        "status",
        "--endpoint",
        tls_server.tls_url,
        "--run-id",
        "tls-run",
        "--json",
        "--rdzv-conf",
        ",".join(f"{k}={v}" for k, v in tls.items()),
    )
    assert status.returncode == 0 and '"exists": true' in status.stdout, status.stderr
    assert PASSWORD not in status.stdout + status.stderr


@pytest.mark.parametrize(
    "config",
    [
        {"ssl_ca_certs": "ca"},  # no client certificate
        {"ssl_ca_certs": "other_ca", "ssl_certfile": "client_cert", "ssl_keyfile": "client_key"},  # server not trusted
        {"ssl_certfile": "client_cert", "ssl_keyfile": "client_key"},  # system trust store only
    ],
    ids=["no-client-cert", "untrusted-server", "no-ca"],
)
def test_tls_refusals_are_bounded_connection_errors(tls_server, pki, config):
    from rdzv_redis import create_backend

    conf = {key: pki[value] for key, value in config.items()}
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError) as info:
        create_backend(
            RendezvousParameters(
                "redis",
                tls_server.tls_url,
                "tls-run",
                1,
                1,
                password=PASSWORD,
                retry_timeout=1,
                connect_timeout=1,
                socket_timeout=1,
                **conf,
            )
        )
    assert time.monotonic() - start < 5
    assert f"rediss://localhost:{tls_server.tls_port}" in str(info.value)
    assert PASSWORD not in "".join(traceback.format_exception(info.value))


# -- secrets -------------------------------------------------------------------------------------


def test_secrets_never_in_logs_exceptions_or_status(own_redis_server, handlers, caplog, monkeypatch):
    secret = "Sup3r-s3cret-" + PASSWORD
    server = own_redis_server(password=secret)
    caplog.set_level(logging.DEBUG)  # root and every library logger
    for name in ("redis", "rdzv_core", "rdzv_redis", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    texts: list[str] = []
    # a full rendezvous: password in the URL for one node, in the config for the others
    url = f"redis://:{secret}@{server.endpoint}/0"
    group = handlers.make(
        params(url, "secret-run", n=3, min_nodes=2, keep_alive_interval=0.3, keep_alive_max_attempt=4), 1
    )
    group += handlers.make(
        params(
            server.endpoint,
            "secret-run",
            n=3,
            min_nodes=2,
            password=secret,
            keep_alive_interval=0.3,
            keep_alive_max_attempt=4,
        ),
        2,
    )
    infos = rendezvous(group)
    store_round_trip(infos[0])
    texts += [
        repr(h) + repr(h.backend) + repr(h._store) + repr(i) + str(h.backend._client.config)
        for h, i in zip(group, infos, strict=True)
    ]
    time.sleep(0.5)  # keep-alives
    group[2]._stop_heartbeats()
    deadline = time.monotonic() + BOUND
    while group[0].num_nodes_waiting() == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rendezvous(group[:2])
    # failures: a wrong password, an unreachable server with the password in the URL
    for endpoint, conf in (
        (server.endpoint, {"password": secret[::-1]}),
        (f"redis://:{secret}@127.0.0.1:{get_free_port()}/0", {"retry_timeout": 0.3}),
    ):
        try:
            get_rendezvous_handler(params(endpoint, "secret-run", **conf))
        except RendezvousConnectionError as exc:
            texts.append("".join(traceback.format_exception(exc)))
        else:
            pytest.fail("expected a connection error")
    # rdzv status: password in --rdzv-conf, in RDZV_CONF, in the endpoint URL; table and JSON
    runs = [
        cli(
            "status",
            "--endpoint",
            server.endpoint,
            "--run-id",
            "secret-run",
            "--json",
            "--log-level",
            "DEBUG",
            "--rdzv-conf",
            f"password={secret}",
        ),
        cli(
            "status",
            "--endpoint",
            server.endpoint,
            "--run-id",
            "secret-run",
            "--log-level",
            "DEBUG",
            env={"RDZV_CONF": f"password={secret}"},
        ),
        cli("status", "--endpoint", url, "--run-id", "secret-run", "--json", "--log-level", "DEBUG"),
        cli(
            "status",
            "--endpoint",
            server.endpoint,
            "--run-id",
            "secret-run",
            "--log-level",
            "DEBUG",
            "--rdzv-conf",
            f"password={secret[::-1]}",
        ),
    ]
    assert [r.returncode for r in runs[:3]] == [0, 0, 0], [r.stderr for r in runs]
    assert '"participants"' in runs[0].stdout and runs[3].returncode != 0
    texts += [r.stdout + r.stderr for r in runs]
    texts.append(caplog.text)
    assert "DEBUG" in caplog.text or caplog.records  # logs were captured at DEBUG
    for text in texts:
        assert secret not in text and secret[::-1] not in text
