"""password_file: the secret is read from a file the user names; errors name the key and the
path, never the content; the path (not a secret) is passed on to workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdzv_core.api import RendezvousParameters
from rdzv_core.plugin import without_secrets
from rdzv_core.utils import read_secret_file

pytestmark = pytest.mark.unit


def test_the_file_is_read_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("s3cret\n")
    assert read_secret_file("password_file", str(path)) == "s3cret"
    assert read_secret_file("password_file", None) is None


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_file_names_key_and_path(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=r"'password_file'.*pw"):
        read_secret_file("password_file", str(path))


def test_workers_keep_the_path_and_lose_the_password() -> None:
    conf = {"password": "x", "sentinel_password": "y", "password_file": "/run/pw", "last_call_timeout": "1"}
    assert without_secrets(conf) == {"password_file": "/run/pw", "last_call_timeout": "1"}


def test_both_clients_take_the_password_from_the_file(tmp_path: Path) -> None:
    from rdzv_etcd.client import EtcdConfig
    from rdzv_redis.client import RedisConfig

    path = tmp_path / "pw"
    path.write_text("from-file")
    params = RendezvousParameters("redis", "127.0.0.1:6379", "r", 1, 1, password_file=str(path))
    assert RedisConfig.from_params(params).password == "from-file"
    assert (
        EtcdConfig.from_endpoint("127.0.0.1:2379", {"username": "u", "password_file": str(path)}).password
        == "from-file"
    )
    explicit = RendezvousParameters("redis", "127.0.0.1:6379", "r", 1, 1, password="given", password_file=str(path))
    assert RedisConfig.from_params(explicit).password == "given"
