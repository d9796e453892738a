"""Configuration, connection errors, authentication, TLS, server restarts and the lazy import."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import traceback

import pytest

from rdzv_core.api import RendezvousConnectionError, RendezvousParameters
from rdzv_core.utils import get_free_port
from rdzv_redis import RedisConfig, create_backend

pytestmark = pytest.mark.integration

PASSWORD = "s3cr3t-Pw-7f1d"


def config_of(endpoint: str, **config) -> RedisConfig:
    return RedisConfig.from_params(RendezvousParameters("redis", endpoint, "run", 1, 1, **config))


def formatted(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("myhost", ("myhost", 6379, 0, None, False)),
        ("myhost:7000", ("myhost", 7000, 0, None, False)),
        ("redis://alice:pw@myhost:7001/3", ("myhost", 7001, 3, "alice", False)),
        ("rediss://myhost", ("myhost", 6379, 0, None, True)),
        ("redis://myhost/", ("myhost", 6379, 0, None, False)),
        ("[::1]:7002", ("::1", 7002, 0, None, False)),
    ],
)
def test_endpoint_forms(endpoint, expected):
    config = config_of(endpoint)
    assert (config.host, config.port, config.db, config.username, config.tls) == expected


def test_password_sources_and_precedence(monkeypatch):
    monkeypatch.setenv("RDZV_REDIS_PASSWORD", "from-env")
    assert config_of("h").password == "from-env"
    assert config_of("redis://:from-url@h").password == "from-url"
    assert config_of("redis://:from-url@h", password="from-config").password == "from-config"
    monkeypatch.delenv("RDZV_REDIS_PASSWORD")
    assert config_of("h").password is None


def test_password_never_in_repr_or_display():
    config = config_of(f"redis://bob:{PASSWORD}@h:1/2", ssl_ca_certs="/ca.pem")
    assert PASSWORD not in repr(config) and PASSWORD not in config.display
    assert config.display == "rediss://h:1/2"
    assert PASSWORD not in repr(RendezvousParameters("redis", "h", "r", 1, 1, password=PASSWORD))


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"socket_timeout": "abc"}, "socket_timeout"),
        ({"socket_timeout": 0}, "socket_timeout"),
        ({"connect_timeout": -1}, "connect_timeout"),
        ({"key_ttl": 0.5}, "key_ttl"),
        ({"retry_timeout": "soon"}, "retry_timeout"),
        ({"max_connections": 1}, "max_connections"),
        ({"db": "x"}, "db"),
        ({"db": -1}, "db"),
        ({"ssl": "maybe"}, "ssl"),
        ({"password": 123}, "password"),
    ],
)
def test_bad_values_name_the_key(config, key):
    with pytest.raises(ValueError, match=key):
        config_of("h", **config)


def test_db_from_url_and_config_must_agree():
    assert config_of("redis://h/4", db=4).db == 4
    assert config_of("h", db="5").db == 5
    with pytest.raises(ValueError, match="db"):
        config_of("redis://h/4", db=5)
    with pytest.raises(ValueError, match="db"):
        config_of("redis://h/abc")


def test_unsupported_scheme():
    with pytest.raises(ValueError, match="redis"):
        config_of("http://h:1")


def test_unknown_keys_are_warned_but_handler_keys_are_not(redis_params, caplog):
    caplog.set_level(logging.WARNING)
    from rdzv_redis.plugin import PLUGIN

    backend, store = PLUGIN.open(redis_params(colour="blue", join_timeout=5, key_ttl=60))
    backend.close()
    store.close()
    warnings = [r.getMessage() for r in caplog.records if "Unknown rendezvous configuration" in r.getMessage()]
    assert len(warnings) == 1
    assert "colour" in warnings[0] and "join_timeout" not in warnings[0] and "key_ttl" not in warnings[0]


# -- failures ------------------------------------------------------------------------------


def test_closed_port_fails_within_the_retry_budget(caplog):
    caplog.set_level(logging.DEBUG)
    port = get_free_port()
    params = RendezvousParameters("redis", f"127.0.0.1:{port}", "run", 1, 1, retry_timeout=0.5, password=PASSWORD)
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError) as info:
        create_backend(params)
    assert time.monotonic() - start < 3
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "unreachable" in message
    assert PASSWORD not in formatted(info.value)
    assert "retrying" in caplog.text and PASSWORD not in caplog.text


def test_wrong_password_fails_fast_with_a_clear_message(own_redis_server):
    server = own_redis_server(password=PASSWORD)
    for config in ({"password": "wrong-" + PASSWORD[::-1]}, {}, {"username": "nobody", "password": "x" + PASSWORD}):
        start = time.monotonic()
        with pytest.raises(RendezvousConnectionError, match="Authentication .* failed") as info:
            create_backend(RendezvousParameters("redis", server.endpoint, "run", 1, 1, retry_timeout=10, **config))
        assert time.monotonic() - start < 2  # not retried
        assert PASSWORD not in formatted(info.value) and PASSWORD[::-1] not in formatted(info.value)


def test_right_password_from_url_config_or_env(own_redis_server, monkeypatch):
    server = own_redis_server(password=PASSWORD)
    sources = [
        (f"redis://:{PASSWORD}@{server.endpoint}/0", {}),
        (server.endpoint, {"password": PASSWORD}),
        (server.endpoint, {"env": True}),
    ]
    for endpoint, config in sources:
        if config.pop("env", False):
            monkeypatch.setenv("RDZV_REDIS_PASSWORD", PASSWORD)
        backend, store = create_backend(RendezvousParameters("redis", endpoint, "run", 1, 1, **config))
        try:
            backend.set_state(b"x")
            store.set("k", b"v")
            assert store.get("k") == b"v"
            assert PASSWORD not in repr(backend) + repr(store) + repr(backend._client)
        finally:
            backend.close()
            store.close()


def test_operations_survive_a_server_restart(own_redis_server):
    server = own_redis_server()
    backend, store = create_backend(RendezvousParameters("redis", server.endpoint, "run", 1, 1, retry_timeout=10))
    try:
        _, token, _ = backend.set_state(b"v1")
        store.set("k", b"v")
        waiting = {}
        thread = threading.Thread(
            target=lambda: waiting.update(changed=backend.wait_for_change(token, 10), at=time.monotonic())
        )
        thread.start()
        server.restart(keep_data=True)  # scripts and connections are gone, data kept
        written_at = time.monotonic()
        state, token2, has_set = backend.set_state(b"v2", token)
        assert has_set and state == b"v2"
        thread.join(10)
        assert waiting["changed"] is True and waiting["at"] - written_at < 2
        assert store.get("k") == b"v"
        assert store.add("n", 1) == 1
    finally:
        backend.close()
        store.close()


def test_an_operation_waits_for_a_server_that_comes_back(own_redis_server):
    server = own_redis_server()
    backend, store = create_backend(RendezvousParameters("redis", server.endpoint, "run", 1, 1, retry_timeout=10))
    try:
        server.kill()
        timer = threading.Timer(0.5, server.start)
        timer.start()
        start = time.monotonic()
        assert backend.set_state(b"after")[2] is True
        assert 0.3 < time.monotonic() - start < 8
        timer.join()
    finally:
        backend.close()
        store.close()


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path):
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def write_key(key, name):
        path = tmp_path / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return str(path)

    def certificate(subject, issuer, public_key, signing_key, *, ca, san=None):
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("rdzv test CA", "rdzv test CA", ca_key.public_key(), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = certificate("localhost", "rdzv test CA", server_key.public_key(), ca_key, ca=False, san="localhost")
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return {
        "ca": str(tmp_path / "ca.pem"),
        "cert": str(tmp_path / "server.pem"),
        "key": write_key(server_key, "server.key"),
    }


def test_tls_endpoint(own_redis_server, tls_files):
    server = own_redis_server(
        tls_cert_file=tls_files["cert"], tls_key_file=tls_files["key"], tls_ca_cert_file=tls_files["ca"]
    )
    params = RendezvousParameters("redis", server.tls_url, "run", 1, 1, ssl_ca_certs=tls_files["ca"])
    backend, store = create_backend(params)
    try:
        assert backend._client.config.tls
        _, token, _ = backend.set_state(b"over tls")
        assert backend.get_state() == (b"over tls", token)
        store.set("k", b"v")
        assert store.get("k") == b"v"
        assert backend.wait_for_change(token, 0) is False
    finally:
        backend.close()
        store.close()
    untrusted = RendezvousParameters("redis", server.tls_url, "run", 1, 1, retry_timeout=0.3)
    with pytest.raises(RendezvousConnectionError):
        create_backend(untrusted)  # the system trust store does not know the test CA


# -- packaging -----------------------------------------------------------------------------


def test_import_works_without_redis_py_and_says_what_to_install():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "redis" or name.startswith("redis."):
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
import rdzv_redis
from rdzv_core.api import RendezvousParameters
try:
    rdzv_redis.create_backend(RendezvousParameters("redis", "127.0.0.1:1", "r", 1, 1))
except ImportError as exc:
    print("IMPORT-ERROR:", exc)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'rdzv[redis]'" in result.stdout
