"""Small helpers shared by the core and the plug-ins: endpoints, config strings, ports."""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "Endpoint",
    "parse_rendezvous_endpoint",
    "parse_rendezvous_config",
    "warn_unknown_config",
    "get_free_port",
    "scrub",
    "read_secret_file",
]

_URL_SCHEMES = ("redis", "rediss", "http", "https", "unix")
_HOST_RE = re.compile(r"[\w.:-]+")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint. ``scheme`` is ``None`` for the ``host[:port]`` forms.

    ``username``/``password`` come from ``user:password@`` in a URL; ``path`` keeps the rest
    of a URL (``/0`` for a Redis database). ``str()`` never shows the password.
    """

    host: str
    port: int
    scheme: str | None = None
    username: str | None = None
    password: str | None = None
    path: str = ""

    # torch's parse_rendezvous_endpoint returns ``(host, port)``: unpacking and indexing work
    # the same here (``host, port = parse_rendezvous_endpoint(...)``).
    def __iter__(self) -> Iterator[str | int]:
        return iter((self.host, self.port))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> str | int:
        return (self.host, self.port)[index]

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"{host}:{self.port}"
        return f"{self.scheme}://{where}" if self.scheme else where


def _check_port(port: int | str, endpoint: str) -> int:
    try:
        value = int(port)
    except (TypeError, ValueError):
        raise ValueError(
            f"The port number of the rendezvous endpoint '{endpoint}' must be an integer (got {port!r})."
        ) from None
    if not 0 < value < 65536:
        raise ValueError(
            f"The port number of the rendezvous endpoint '{endpoint}' must be between 1 and 65535 (got {value})."
        )
    return value


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def parse_rendezvous_endpoint(endpoint: str | None, default_port: int) -> Endpoint:
    """Parse ``host``, ``host:port``, ``[ipv6]:port`` or a URL (``redis://``, ``rediss://``,
    ``http(s)://``; the scheme is kept) into an :class:`Endpoint`.

    An empty endpoint means ``localhost:default_port``.

    Raises:
        ValueError: malformed endpoint, unknown scheme, or a port outside 1..65535; the message
            quotes the endpoint (without its password).
    """
    text = (endpoint or "").strip()
    if not text:
        return Endpoint("localhost", default_port)
    if "://" in text:
        return _parse_url(text, default_port)
    if "@" in text:  # credentials outside a URL: refuse without quoting them
        raise ValueError(
            "The rendezvous endpoint has credentials ('user:password@') but no URL scheme; write it as a URL, e.g. 'redis://user:password@host:port'."
        )
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not _is_ipv6(host) or (rest and not rest.startswith(":")):
            raise ValueError(f"The rendezvous endpoint '{text}' is not a valid '[IPv6]:port' address.")
        port = _check_port(rest[1:], text) if rest else default_port
        return Endpoint(host, port)
    if text.count(":") > 1:  # a bare IPv6 address without a port
        if not _is_ipv6(text):
            raise ValueError(f"The rendezvous endpoint '{text}' is neither 'host[:port]' nor an IPv6 address.")
        return Endpoint(text, default_port)
    host, sep, port_text = text.partition(":")
    if not host or any(c in host for c in "/@ ") or (sep and not port_text):
        raise ValueError(f"The rendezvous endpoint '{text}' must be 'host[:port]' or a URL.")
    _check_host(host, text)
    return Endpoint(host, _check_port(port_text, text) if sep else default_port)


def _check_host(host: str, endpoint: str) -> None:
    """torch's rule: letters, digits, ``_``, ``.``, ``-`` (and ``:`` of IPv6) only."""
    if not _HOST_RE.fullmatch(host):
        raise ValueError(
            f"The hostname of the rendezvous endpoint '{endpoint}' must be a dot-separated list of labels, an IPv4 address, or an IPv6 address."
        )


def _parse_url(text: str, default_port: int) -> Endpoint:
    parts = urlsplit(text)
    if parts.scheme not in _URL_SCHEMES:
        raise ValueError(
            f"The rendezvous endpoint '{parts.scheme}://{parts.hostname}' has an unsupported scheme '{parts.scheme}'; use one of {', '.join(_URL_SCHEMES)}."
        )
    safe = f"{parts.scheme}://{parts.hostname or ''}"
    if not parts.hostname:
        raise ValueError(f"The rendezvous endpoint '{safe}' has no host.")
    _check_host(parts.hostname, safe)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"The port number of the rendezvous endpoint '{safe}' must be between 1 and 65535.") from None
    if port is not None:
        port = _check_port(port, safe)  # urllib accepts port 0
    return Endpoint(
        host=parts.hostname,
        port=port if port is not None else default_port,
        scheme=parts.scheme,
        username=parts.username or None,
        password=parts.password or None,
        path=parts.path or "",
    )


def parse_rendezvous_config(text: str | None) -> dict[str, str]:
    """Parse ``"key=value,key2=value2"`` (torchrun's ``--rdzv-conf`` form) into a dict.

    Whitespace around keys and values is stripped; an empty (or blank) string is ``{}``.

    Raises:
        ValueError: as torch: an empty item or key (``"a=1,,b=2"``, ``"=1"``), an item without
            a value (``"a"``, ``"a="``); and a key that repeats. The message names the item.
    """
    config: dict[str, str] = {}
    if not (text or "").strip():
        return config
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not key:
            raise ValueError(
                f"The rendezvous configuration string must be in format <key1>=<value1>,...,<keyN>=<valueN> (got the item '{item.strip()}')."
            )
        if not sep or not value:
            raise ValueError(f"The rendezvous configuration option '{key}' must have a value specified.")
        if key in config:
            raise ValueError(f"The rendezvous configuration key '{key}' is given more than once.")
        config[key] = value
    return config


def read_secret_file(key: str, path: str | None) -> str | None:
    """The secret held in file ``path`` (configuration key ``key``, e.g. ``password_file``):
    its text without the trailing newline; ``None`` when ``path`` is ``None``.

    A file keeps a credential out of command lines, logs and a worker's environment: the
    worker gets the path, never the secret.

    Raises:
        ValueError: the file cannot be read, is not UTF-8 or is empty; the message names the
            key and the path, never the content.
    """
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"The rendezvous configuration option '{key}': cannot read {path!r} ({type(exc).__name__})."
        ) from None
    if not secret:
        raise ValueError(f"The rendezvous configuration option '{key}': the file {path!r} is empty.")
    return secret


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-empty secret of ``secrets`` replaced by ``***`` (for messages
    and logs built from a library's error text)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def warn_unknown_config(config: Mapping[str, object], known: Iterable[str], backend: str) -> list[str]:
    """Log one warning naming the keys of ``config`` that ``backend`` does not know.

    Returns:
        The unknown keys, sorted.
    """
    unknown = sorted(set(config) - set(known))
    if unknown:
        logger.warning(
            "Unknown rendezvous configuration keys for backend '%s' are ignored: %s", backend, ", ".join(unknown)
        )
    return unknown


def get_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind to port 0, then close)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
