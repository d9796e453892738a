"""The backend registry: registration, lazy entry-point discovery, broken plug-ins, hints."""

from __future__ import annotations

import pytest

from rdzv_core import registry as registry_module
from rdzv_core.api import RendezvousHandler, RendezvousParameters
from rdzv_core.dynamic import DynamicRendezvousHandler
from rdzv_core.registry import (
    ENTRY_POINT_GROUP,
    RendezvousHandlerRegistry,
    get_rendezvous_handler,
    rendezvous_handler_registry,
)

pytestmark = pytest.mark.unit


class FakeHandler(RendezvousHandler):
    def __init__(self, backend: str) -> None:
        self._backend = backend

    def get_backend(self) -> str:
        return self._backend

    def next_rendezvous(self):  # pragma: no cover - not used
        raise NotImplementedError

    def is_closed(self) -> bool:
        return False

    def set_closed(self) -> None:
        pass

    def num_nodes_waiting(self) -> int:
        return 0

    def get_run_id(self) -> str:
        return "run"

    def shutdown(self) -> bool:
        return True


def creator_for(name):
    def create(params):
        return FakeHandler(name)

    return create


def params(backend):
    return RendezvousParameters(backend, "", "run", 1, 1)


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint: ``load()`` returns the factory or raises."""

    def __init__(self, name, factory=None, error=None):
        self.name = name
        self._factory = factory
        self._error = error
        self.loads = 0

    def load(self):
        self.loads += 1
        if self._error is not None:
            raise self._error
        return self._factory


@pytest.fixture
def fake_group(monkeypatch):
    """Install a fake ``rdzv.backends`` group; returns the list of entry points and call log."""
    entries: list[FakeEntryPoint] = []
    calls: list[str] = []

    def fake_entry_points(*, group):
        calls.append(group)
        return [ep for ep in entries if group == ENTRY_POINT_GROUP]

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    return entries, calls


# -- explicit registration ------------------------------------------------------------------


def test_register_and_create():
    reg = RendezvousHandlerRegistry(entry_point_group=None)
    reg.register("fake", creator_for("fake"))
    handler = reg.create_handler(params("fake"))
    assert isinstance(handler, FakeHandler)
    assert reg.backends() == ["fake"]


def test_reregister_same_creator_is_a_noop():
    reg = RendezvousHandlerRegistry(entry_point_group=None)
    creator = creator_for("fake")
    reg.register("fake", creator)
    reg.register("fake", creator)
    assert reg.backends() == ["fake"]


def test_different_creator_under_a_taken_name_raises():
    reg = RendezvousHandlerRegistry(entry_point_group=None)
    reg.register("fake", creator_for("fake"))
    with pytest.raises(ValueError, match="'fake'.*already registered"):
        reg.register("fake", creator_for("fake"))


def test_register_empty_name_raises():
    reg = RendezvousHandlerRegistry(entry_point_group=None)
    with pytest.raises(ValueError):
        reg.register("", creator_for("x"))


def test_create_handler_checks_the_backend_name():
    reg = RendezvousHandlerRegistry(entry_point_group=None)
    reg.register("fake", creator_for("other"))
    with pytest.raises(RuntimeError, match="'other'.*'fake'"):
        reg.create_handler(params("fake"))


def test_creator_gets_the_parameters():
    reg = RendezvousHandlerRegistry(entry_point_group=None)
    seen = []

    def create(p):
        seen.append(p)
        return FakeHandler("fake")

    reg.register("fake", create)
    p = params("fake")
    reg.create_handler(p)
    assert seen == [p]


# -- entry-point discovery ------------------------------------------------------------------


def test_discovery_is_lazy_and_happens_once(fake_group):
    entries, calls = fake_group
    good = FakeEntryPoint("good", factory=lambda: creator_for("good"))
    entries.append(good)
    reg = RendezvousHandlerRegistry()
    assert calls == []  # nothing is looked up at construction
    assert isinstance(reg.create_handler(params("good")), FakeHandler)
    assert reg.backends() == ["good"]
    reg.create_handler(params("good"))
    with pytest.raises(ValueError):
        reg.create_handler(params("unknown"))
    assert calls == [ENTRY_POINT_GROUP]
    assert good.loads == 1


def test_explicit_registration_wins_over_an_entry_point(fake_group):
    entries, _ = fake_group
    plugin = FakeEntryPoint("name", factory=lambda: creator_for("name"))
    entries.append(plugin)
    reg = RendezvousHandlerRegistry()
    mine = creator_for("name")
    reg.register("name", mine)
    reg.backends()
    assert plugin.loads == 0
    assert reg._creator("name") is mine


def test_broken_plugin_does_not_break_others(fake_group):
    entries, _ = fake_group
    cause = ModuleNotFoundError("No module named 'rdzv_redis.plugin'")
    entries.append(FakeEntryPoint("redis", error=cause))
    entries.append(FakeEntryPoint("good", factory=lambda: creator_for("good")))
    reg = RendezvousHandlerRegistry()
    assert isinstance(reg.create_handler(params("good")), FakeHandler)
    assert reg.backends() == ["good"]
    with pytest.raises(ImportError) as info:
        reg.create_handler(params("redis"))
    assert info.value.__cause__ is cause
    message = str(info.value)
    assert "rdzv_redis.plugin" in message and "failed to load" in message


def test_factory_that_raises_is_a_load_error(fake_group):
    entries, _ = fake_group

    def factory():
        raise RuntimeError("boom in factory")

    entries.append(FakeEntryPoint("broken", factory=factory))
    reg = RendezvousHandlerRegistry()
    with pytest.raises(ImportError, match="boom in factory") as info:
        reg.create_handler(params("broken"))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_registering_a_broken_name_clears_its_error(fake_group):
    entries, _ = fake_group
    entries.append(FakeEntryPoint("redis", error=ImportError("no redis")))
    reg = RendezvousHandlerRegistry()
    reg.backends()
    reg.register("redis", creator_for("redis"))
    assert isinstance(reg.create_handler(params("redis")), FakeHandler)


def test_a_plugins_missing_client_library_gives_its_pip_hint(fake_group):
    from rdzv_core.plugin import BackendPlugin

    def create_backend(params):
        raise ImportError("No module named 'someclient'")

    entries, _ = fake_group
    entries.append(FakeEntryPoint("kv", factory=BackendPlugin("kv", create_backend, extra="rdzv-kv[fast]")))
    reg = RendezvousHandlerRegistry()
    with pytest.raises(ImportError) as info:
        reg.create_handler(params("kv"))
    assert "someclient" in str(info.value) and "pip install 'rdzv-kv[fast]'" in str(info.value)


def test_an_entry_point_must_name_its_own_plugin(fake_group):
    from rdzv_core.plugin import BackendPlugin

    entries, _ = fake_group
    entries.append(FakeEntryPoint("alias", factory=BackendPlugin("real", lambda p: None)))
    reg = RendezvousHandlerRegistry()
    with pytest.raises(ImportError, match="'alias' names the plug-in of backend 'real'"):
        reg.create_handler(params("alias"))
    assert reg.plugin("alias") is None and reg.plugin("real") is None


def test_unknown_name_lists_installed_and_known_backends(fake_group):
    entries, _ = fake_group
    entries.append(FakeEntryPoint("memory", factory=lambda: creator_for("memory")))
    entries.append(FakeEntryPoint("zzz", factory=lambda: creator_for("zzz")))
    reg = RendezvousHandlerRegistry()
    with pytest.raises(ValueError) as info:
        reg.create_handler(params("no-such-backend"))
    message = str(info.value)
    assert "'no-such-backend'" in message
    assert "memory, zzz" in message
    assert ENTRY_POINT_GROUP in message


def test_unknown_name_with_nothing_installed():
    reg = RendezvousHandlerRegistry(entry_point_group=None)
    with pytest.raises(ValueError, match="Installed backends: none"):
        reg.create_handler(params("etcd-v3"))


# -- the real default registry --------------------------------------------------------------


def test_default_registry_finds_memory():
    assert "memory" in rendezvous_handler_registry.backends()
    handler = get_rendezvous_handler(
        RendezvousParameters("memory", "", "registry-test-run", 1, 1, keep_alive_interval=0.2)
    )
    try:
        assert isinstance(handler, DynamicRendezvousHandler)
        assert handler.get_backend() == "memory"
        assert handler.get_run_id() == "registry-test-run"
    finally:
        handler._stop_heartbeats()


def test_fresh_registry_discovers_the_installed_group():
    reg = RendezvousHandlerRegistry()
    assert "memory" in reg.backends()


def test_the_shipped_backends_are_plugins_and_their_servers_local_servers():
    from rdzv_core.plugin import BackendPlugin, LocalServer

    members = [
        name
        for name in ("endpoint", "running", "pid", "start", "stop", "kill", "restart")
        if hasattr(LocalServer, name)
    ]
    assert len(members) == 7
    kinds = {}
    for name in ("redis", "etcd-v2", "etcd-v3", "memory"):
        plugin = rendezvous_handler_registry.plugin(name)
        assert isinstance(plugin, BackendPlugin) and plugin.name == name
        kinds[name] = plugin.server_kind
        if plugin.local_server is not None:
            server = plugin.local_server(None)  # created, not started
            assert all(hasattr(type(server), member) for member in members), type(server)
    assert kinds == {"redis": "redis", "etcd-v2": "etcd", "etcd-v3": "etcd", "memory": None}
    assert not rendezvous_handler_registry.plugin("memory").cross_process
    with pytest.raises(ValueError, match="fixed port"):
        rendezvous_handler_registry.plugin("etcd-v3").local_server(2379)


def test_secret_keys_are_kept_from_workers():
    from rdzv_core.plugin import without_secrets

    conf = {"password": "p", "sentinel_password": "s", "api_token": "t", "last_call_timeout": "1", "username": "u"}
    assert rendezvous_handler_registry.plugin("redis").without_secrets(conf) == {
        "last_call_timeout": "1",
        "username": "u",
    }
    assert without_secrets({"my_secret": "x", "key_ttl": "60"}) == {"key_ttl": "60"}  # by name, for any plug-in
