"""Endpoint and config parsing, unknown-config warnings, free ports."""

from __future__ import annotations

import logging
import socket

import pytest

from rdzv_core.utils import (
    Endpoint,
    get_free_port,
    parse_rendezvous_config,
    parse_rendezvous_endpoint,
    warn_unknown_config,
)

pytestmark = pytest.mark.unit

SECRET = "pa55-w0rd-SECRET"


# -- parse_rendezvous_endpoint -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", Endpoint("example.com", 6379)),
        ("  example.com  ", Endpoint("example.com", 6379)),
        ("example.com:1234", Endpoint("example.com", 1234)),
        ("10.0.0.1:1", Endpoint("10.0.0.1", 1)),
        ("h:65535", Endpoint("h", 65535)),
        ("[::1]:2379", Endpoint("::1", 2379)),
        ("[fe80::1%eth0]:80", Endpoint("fe80::1%eth0", 80)),
        ("[::1]", Endpoint("::1", 6379)),
        ("::1", Endpoint("::1", 6379)),
        ("2001:db8::7", Endpoint("2001:db8::7", 6379)),
    ],
)
def test_host_port_forms(text, expected):
    assert parse_rendezvous_endpoint(text, 6379) == expected


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_endpoint_is_localhost(text):
    assert parse_rendezvous_endpoint(text, 2379) == Endpoint("localhost", 2379)


def test_redis_url_with_credentials_and_db():
    ep = parse_rendezvous_endpoint(f"redis://user:{SECRET}@h:1/0", 6379)
    assert ep == Endpoint("h", 1, scheme="redis", username="user", password=SECRET, path="/0")
    assert SECRET not in str(ep)
    assert str(ep) == "redis://h:1"


def test_rediss_url_without_port_uses_default():
    ep = parse_rendezvous_endpoint("rediss://cache.internal", 6380)
    assert (ep.scheme, ep.host, ep.port, ep.username, ep.password, ep.path) == (
        "rediss",
        "cache.internal",
        6380,
        None,
        None,
        "",
    )


def test_redis_url_password_only():
    ep = parse_rendezvous_endpoint(f"redis://:{SECRET}@h", 6379)
    assert ep.username is None and ep.password == SECRET


@pytest.mark.parametrize(
    ("text", "scheme", "port"),
    [("http://etcd:2379", "http", 2379), ("https://etcd", "https", 443), ("HTTPS://etcd:1", "https", 1)],
)
def test_http_urls(text, scheme, port):
    ep = parse_rendezvous_endpoint(text, 443)
    assert (ep.scheme, ep.host, ep.port) == (scheme, "etcd", port)


def test_ipv6_url():
    ep = parse_rendezvous_endpoint("redis://[::1]:7000/2", 6379)
    assert (ep.host, ep.port, ep.path) == ("::1", 7000, "/2")
    assert str(ep) == "redis://[::1]:7000"


def test_str_of_ipv6_endpoint_brackets_the_host():
    assert str(Endpoint("::1", 5)) == "[::1]:5"
    assert str(Endpoint("h", 5)) == "h:5"


@pytest.mark.parametrize("port", ["0", "65536", "abc", "-1", "99999999"])
@pytest.mark.parametrize("form", ["h:{}", "[::1]:{}", "redis://h:{}", f"redis://u:{SECRET}@h:{{}}", "http://h:{}/x"])
def test_bad_ports(form, port):
    text = form.format(port)
    with pytest.raises(ValueError, match="port") as info:
        parse_rendezvous_endpoint(text, 6379)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("text", ["ftp://h:1", f"mongodb://u:{SECRET}@h:1", f"tcp://:{SECRET}@h"])
def test_unknown_scheme(text):
    with pytest.raises(ValueError, match="scheme") as info:
        parse_rendezvous_endpoint(text, 1)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "h:",
        ":80",
        "[::1",
        "[]:80",
        "[::1]x",
        "a b:1",
        "path/to:1",
        "redis://",
        f"redis://u:{SECRET}@",
        f"redis://u:{SECRET}@:80",
    ],
)
def test_malformed_endpoints(text):
    with pytest.raises(ValueError) as info:
        parse_rendezvous_endpoint(text, 1)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        f"user:{SECRET}@host",
        f"user:{SECRET}@host:1",
        f"user:{SECRET}@[::1]:1",
        f":{SECRET}@host:abc",
        f"redis:/u:{SECRET}@h",
        f"redis//u:{SECRET}@h:1",
    ],
)
def test_password_never_in_error_messages(text):
    """Credentials given without a (proper) scheme are refused without echoing them."""
    with pytest.raises(ValueError) as info:
        parse_rendezvous_endpoint(text, 1)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


@pytest.mark.parametrize("text", ["not:an:ipv6", "1:2:3:4:5:6:7:8:9", "gg::1"])
def test_bare_multi_colon_must_be_an_ipv6_address(text):
    with pytest.raises(ValueError):
        parse_rendezvous_endpoint(text, 1)


# -- parse_rendezvous_config -----------------------------------------------------------------


def test_config_basic():
    assert parse_rendezvous_config("k=v,k2=v2") == {"k": "v", "k2": "v2"}


def test_config_whitespace_is_stripped():
    assert parse_rendezvous_config("  k = v , k2=  v2 ") == {"k": "v", "k2": "v2"}


def test_config_empty_and_none():
    assert parse_rendezvous_config("") == {}
    assert parse_rendezvous_config(None) == {}
    with pytest.raises(ValueError, match="must be in format"):  # torch refuses empty items
        parse_rendezvous_config(" , ")


def test_config_value_may_contain_equals_but_not_be_empty():
    assert parse_rendezvous_config("a=b=c") == {"a": "b=c"}
    with pytest.raises(ValueError, match="'empty' must have a value specified"):
        parse_rendezvous_config("a=b=c,empty=")


@pytest.mark.parametrize("text", ["k", "k=v,novalue", "=v", " = v"])
def test_config_missing_equals_or_key(text):
    with pytest.raises(ValueError, match="must be in format|must have a value specified"):
        parse_rendezvous_config(text)


def test_config_missing_equals_names_the_item():
    with pytest.raises(ValueError, match="'novalue'"):
        parse_rendezvous_config("k=v,novalue")


def test_config_duplicate_key():
    with pytest.raises(ValueError, match="'k'.*more than once"):
        parse_rendezvous_config("k=1, k =2")


# -- warn_unknown_config ---------------------------------------------------------------------


def test_warn_unknown_config_logs_the_unknown_keys(caplog):
    with caplog.at_level(logging.WARNING, logger="rdzv_core.utils"):
        unknown = warn_unknown_config({"join_timeout": 1, "zeta": 2, "alpha": 3}, {"join_timeout"}, "redis")
    assert unknown == ["alpha", "zeta"]
    records = [r for r in caplog.records if r.name == "rdzv_core.utils"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "alpha" in message and "zeta" in message and "'redis'" in message
    assert "join_timeout" not in message


def test_warn_unknown_config_silent_when_all_known(caplog):
    with caplog.at_level(logging.WARNING, logger="rdzv_core.utils"):
        assert warn_unknown_config({"a": 1}, ["a", "b"], "memory") == []
    assert not [r for r in caplog.records if r.name == "rdzv_core.utils"]


def test_warn_unknown_config_does_not_log_values(caplog):
    with caplog.at_level(logging.WARNING, logger="rdzv_core.utils"):
        warn_unknown_config({"pasword": SECRET}, [], "redis")
    assert SECRET not in caplog.text
    assert "pasword" in caplog.text


# -- get_free_port -------------------------------------------------------------------------


def test_get_free_port_is_bindable():
    port = get_free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_get_free_port_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        port = get_free_port("::1")
    except OSError:
        pytest.skip("IPv6 loopback not configured")
    assert 0 < port < 65536


def test_scrub_masks_every_given_secret():
    from rdzv_core.utils import scrub

    assert scrub("auth pw1 then pw2 failed", ("pw1", None, "", "pw2")) == "auth *** then *** failed"
    assert scrub("nothing here", ()) == "nothing here"


# -- torch compatibility: the cases of torch's own rendezvous utils tests ----------------------


def test_endpoint_unpacks_as_torchs_host_port_tuple():
    host, port = parse_rendezvous_endpoint("localhost:1234", 5678)
    assert (host, port) == ("localhost", 1234) and tuple(parse_rendezvous_endpoint("", 29400)) == ("localhost", 29400)
    endpoint = parse_rendezvous_endpoint("redis://h:1/0", 6379)
    assert (endpoint[0], endpoint[1], len(endpoint), endpoint.scheme) == ("h", 1, 2, "redis")


@pytest.mark.parametrize("endpoint", ["~", "~:123", "a$b:1", "redis://~:1"])
def test_invalid_hostnames_are_refused_as_torch_does(endpoint):
    with pytest.raises(ValueError, match="must be a dot-separated list of labels, an IPv4 address, or an IPv6 address"):
        parse_rendezvous_endpoint(endpoint, 29400)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("a=1,,b=2", "must be in format"),
        (",a=1", "must be in format"),
        ("a=1,", "must be in format"),
        ("=1", "must be in format"),
        ("a", "'a' must have a value specified"),
        ("a=", "'a' must have a value specified"),
        ("a= ", "'a' must have a value specified"),
    ],
)
def test_config_strings_torch_refuses_are_refused(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_rendezvous_config(text)


def test_config_blank_is_empty_and_values_are_stripped():
    assert parse_rendezvous_config("  ") == {} and parse_rendezvous_config(" a = 1 , b=x=y ") == {"a": "1", "b": "x=y"}


def test_prefix_store_refuses_a_missing_store():
    from rdzv_core.store import PrefixStore

    with pytest.raises(TypeError, match="wraps a Store"):
        PrefixStore("p", None)  # type: ignore[arg-type]
