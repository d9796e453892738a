"""Connecting to etcd: configuration, errors, fail-over, authentication, TLS, missing clients."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from rdzv_core.api import RendezvousConnectionError
from rdzv_core.registry import rendezvous_handler_registry
from rdzv_core.utils import get_free_port
from rdzv_etcd.backend import create_backend
from rdzv_etcd.client import EtcdConfig
from rdzv_etcd.server import EtcdServer
from tests.fixtures_etcd import etcd_params, unique_run_id

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Pa55"


def _params(api, endpoint, **config):
    from rdzv_core.api import RendezvousParameters

    return RendezvousParameters(f"etcd-{api}", endpoint, unique_run_id(), 1, 2, **config)


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"read_timeout": 0}, "read_timeout"),
        ({"read_timeout": "soon"}, "read_timeout"),
        ({"key_ttl": 0}, "key_ttl"),
        ({"key_ttl": "1.5"}, "key_ttl"),
        ({"protocol": "ftp"}, "protocol"),
        ({"protocol": "https", "cacert": "/no/such/ca.pem"}, "cacert"),
        ({"protocol": "https", "key": __file__}, "key"),
        ({"cert": __file__}, "cert"),  # a certificate without TLS
        ({"username": "root"}, "password"),
        ({"password": SECRET}, "username"),
    ],
)
def test_bad_config_values_name_the_key(config, key):
    with pytest.raises(ValueError, match=f"'{key}'") as info:
        EtcdConfig.from_endpoint("127.0.0.1:2379", config)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("endpoint", ["redis://h:1", "h:99999", "http://h:1/v3", "http://a:1,https://b:2", "a:"])
def test_bad_endpoints_name_the_endpoint_option(endpoint):
    with pytest.raises(ValueError, match="'endpoint'"):
        EtcdConfig.from_endpoint(endpoint)


def test_endpoint_forms():
    config = EtcdConfig.from_endpoint("etcd-a, etcd-b:2380 ,[::1]:3000")
    assert [(e.host, e.port) for e in config.endpoints] == [("etcd-a", 2379), ("etcd-b", 2380), ("::1", 3000)]
    assert config.urls[-1] == "http://[::1]:3000"
    secure = EtcdConfig.from_endpoint(f"https://user:{SECRET}@etcd:4000")
    assert (secure.protocol, secure.username, secure.password) == ("https", "user", SECRET)
    assert SECRET not in repr(secure) and SECRET not in secure.describe()
    with pytest.raises(ValueError, match="'protocol'"):
        EtcdConfig.from_endpoint("https://etcd:4000", {"protocol": "http"})


def test_options_given_as_none_take_their_defaults():
    config = EtcdConfig.from_endpoint(
        "etcd", {key: None for key in ("protocol", "cacert", "cert", "key", "read_timeout", "key_ttl")}
    )
    assert (config.protocol, config.read_timeout, config.key_ttl, config.cacert) == ("http", 60.0, 7200, None)


def test_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("RDZV_ETCD_USERNAME", "env-user")
    monkeypatch.setenv("RDZV_ETCD_PASSWORD", SECRET)
    config = EtcdConfig.from_endpoint("etcd")
    assert (config.username, config.password) == ("env-user", SECRET)
    assert EtcdConfig.from_endpoint("etcd", {"username": "u", "password": "p"}).username == "u"


def test_unknown_config_keys_are_reported(etcd_server, etcd_api, caplog):
    with caplog.at_level(logging.WARNING, logger="rdzv_core.utils"):
        params = etcd_params(etcd_server, etcd_api, key_ttl=60, join_timeout=10, colour="blue")
        backend, _ = rendezvous_handler_registry.plugin(params.backend).open(params)
    backend.close()
    warnings = [r.getMessage() for r in caplog.records if "Unknown rendezvous configuration" in r.getMessage()]
    assert len(warnings) == 1 and "colour" in warnings[0]
    assert "join_timeout" not in warnings[0] and "key_ttl" not in warnings[0]


# -- connection errors and fail-over ------------------------------------------------------


def test_unreachable_endpoint_is_a_connection_error(etcd_api):
    port = get_free_port()
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError) as info:
        create_backend(_params(etcd_api, f"127.0.0.1:{port}", username="root", password=SECRET))
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "refused" in message.lower() or "connect" in message.lower()
    assert SECRET not in message
    assert 1.0 < elapsed < 10  # a short, bounded retry


def test_fail_over_to_the_next_endpoint(etcd_server, etcd_api):
    dead = f"127.0.0.1:{get_free_port()}"
    backend, store = create_backend(_params(etcd_api, f"{dead},{etcd_server.endpoint}", read_timeout=5))
    try:
        _, token, has_set = backend.set_state(b"via the second endpoint")
        assert has_set and backend.get_state() == (b"via the second endpoint", token)
        store.set("k", b"v")
        assert store.get("k") == b"v"
    finally:
        backend.close()


def test_url_endpoint(etcd_server, etcd_api):
    backend, _ = create_backend(_params(etcd_api, etcd_server.url))
    try:
        assert backend.set_state(b"x")[2]
    finally:
        backend.close()


def test_client_libraries_are_imported_lazily():
    script = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("etcd", "etcd3gw"):
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        import rdzv_etcd
        from rdzv_etcd import EtcdConfig, create_kv
        for api in ("v2", "v3"):
            try:
                create_kv(EtcdConfig(), api)
            except ImportError as exc:
                print(api, ("pip install 'rdzv[etcd-v2]'" if api == "v2" else "pip install 'rdzv[etcd]'") in str(exc))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["v2", "True", "v3", "True"]


# -- authentication -----------------------------------------------------------------------


def _post(url, path, body, token=None):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    if token:
        request.add_header("Authorization", token)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read() or b"{}")


def _put_v2(url, path, body):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="PUT")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return response.status


@pytest.fixture(scope="module")
def auth_server():
    """etcd with authentication on: v3 user root/SECRET (only authenticated requests pass);
    v2 user root/SECRET (a wrong password is refused)."""
    with EtcdServer(enable_v2=True) as server:
        _post(server.url, "/v3/auth/user/add", {"name": "root", "password": SECRET})
        _post(server.url, "/v3/auth/role/add", {"name": "root"})
        _post(server.url, "/v3/auth/user/grant", {"user": "root", "role": "root"})
        _post(server.url, "/v3/auth/enable", {})
        _put_v2(server.url, "/v2/auth/users/root", {"user": "root", "password": SECRET})
        _put_v2(server.url, "/v2/auth/enable", {})
        yield server


def test_authenticated_backend_and_store(auth_server, etcd_api):
    backend, store = create_backend(_params(etcd_api, auth_server.endpoint, username="root", password=SECRET))
    try:
        _, token, has_set = backend.set_state(b"authenticated")
        assert has_set
        backend.keep_alive("n", 30)
        assert backend.heartbeat_ages(["n"])[0] is not None
        store.set("k", b"v")
        assert store.get("k") == b"v"
        assert backend.wait_for_change(token, 0.2) is False  # the watch is authenticated too
    finally:
        backend.close()


def test_wrong_password_is_a_connection_error_without_the_password(auth_server, etcd_api):
    wrong = SECRET + "-wrong"
    with pytest.raises(RendezvousConnectionError) as info:
        create_backend(_params(etcd_api, auth_server.endpoint, username="root", password=wrong))
    assert auth_server.endpoint in str(info.value)
    assert wrong not in str(info.value) and SECRET not in str(info.value)


def test_v3_without_credentials_is_refused(auth_server):
    with pytest.raises(RendezvousConnectionError, match="user name is empty|permission denied|token"):
        create_backend(_params("v3", auth_server.endpoint))


def test_v3_expired_token_is_renewed(auth_server):
    backend, _ = create_backend(_params("v3", auth_server.endpoint, username="root", password=SECRET))
    try:
        backend.set_state(b"one")
        for client in backend.kv._clients:  # what an expired simple token looks like to etcd
            if client is not None:
                client.session.headers["Authorization"] = "expired.token.123"
        assert backend.get_state()[0] == b"one"
    finally:
        backend.close()


# -- TLS ----------------------------------------------------------------------------------


def _write_pki(directory):
    """A CA, a server certificate for 127.0.0.1/localhost (also usable as a client
    certificate, for the server's own health probe) and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def save(stem, key, cert):
        key_path, cert_path = os.path.join(directory, f"{stem}.key"), os.path.join(directory, f"{stem}.pem")
        with open(key_path, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("rdzv test CA")).issuer_name(name("rdzv test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip

    def leaf(common, sans, usages):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )  # fmt: skip
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    ca_path = save("ca", ca_key, ca)[0]
    server = save("server", *leaf("127.0.0.1", sans, both))
    client = save("client", *leaf("rdzv-client", [], [ExtendedKeyUsageOID.CLIENT_AUTH]))
    return ca_path, server, client


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """etcd serving clients over TLS and requiring a client certificate from our CA."""
    ca, (server_cert, server_key), client = _write_pki(str(tmp_path_factory.mktemp("pki")))
    with EtcdServer(enable_v2=True, cert_file=server_cert, key_file=server_key, client_ca_file=ca) as server:
        yield server, ca, client


def test_tls_with_client_certificate(tls_server, etcd_api):
    server, ca, (cert, key) = tls_server
    assert server.url.startswith("https://")
    backend, store = create_backend(_params(etcd_api, server.url, cacert=ca, cert=cert, key=key))
    try:
        _, token, has_set = backend.set_state(b"over TLS")
        assert has_set
        store.set("k", b"v")
        assert store.get("k") == b"v"
        assert backend.wait_for_change(token, 0.2) is False
    finally:
        backend.close()


def test_tls_without_client_certificate_is_refused(tls_server, etcd_api):
    server, ca, _ = tls_server
    with pytest.raises(RendezvousConnectionError, match=server.endpoint.split(":")[0]):
        create_backend(_params(etcd_api, server.endpoint, protocol="https", cacert=ca))


def test_tls_with_an_untrusted_server_is_refused(tls_server, etcd_api, tmp_path):
    server, _, (cert, key) = tls_server
    other_ca = _write_pki(str(tmp_path))[0]
    with pytest.raises(RendezvousConnectionError, match="(?i)ssl|certificate"):
        create_backend(_params(etcd_api, server.url, cacert=other_ca, cert=cert, key=key))
