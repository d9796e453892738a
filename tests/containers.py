"""Redis, Sentinel and etcd in Docker containers (testcontainers), with the local launchers'
interface, so that the same tests run against both providers.

:class:`ContainerRedis`, :class:`ContainerSentinel` and :class:`ContainerEtcd` are
:class:`rdzv_redis.server.RedisServer`, :class:`~rdzv_redis.server.RedisSentinel` and
:class:`rdzv_etcd.server.EtcdServer` whose process is a container: the same configuration
file or command line (``--port``/``--listen-client-urls`` on a free port of 127.0.0.1), the
same health checks, ``start``/``stop``/``restart``/``kill``, plus :meth:`pause`/:meth:`unpause`
(``docker pause``, the cgroup freezer: the container's SIGSTOP).

How the container runs:

* host networking (``network_mode="host"``): the server binds the free port the launcher
  picked, on 127.0.0.1, exactly as the local binary does; no port mapping, no bridge;
* the launcher's temporary directory (configuration, data, log) is bind-mounted at the same
  path, and the container runs as the calling user, so files stay removable;
* ``kill()`` is ``docker kill`` (SIGKILL), ``restart()`` stops the container (SIGTERM, like
  ``docker stop``) and starts the *same* container again (``docker start``), ``stop()``
  removes it;
* the entry point is the server binary found on the image's ``PATH`` (``redis-server``,
  ``redis-sentinel``, ``etcd``), so the public images (``redis:7``,
  ``quay.io/coreos/etcd:v3.4.x``) and the locally built ``rdzv-local/*`` ones both work;
* no reaper (Ryuk): :mod:`tests.servers` sets ``TESTCONTAINERS_RYUK_DISABLED=true``; every
  container carries the label ``rdzv.test=1`` and is removed by ``stop()`` or at exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from rdzv_etcd.server import EtcdServer
from rdzv_redis.server import RedisSentinel, RedisServer

__all__ = ["ContainerEtcd", "ContainerLauncher", "ContainerRedis", "ContainerSentinel", "LABEL"]

#: Label of every test container (``docker ps --filter label=rdzv.test``).
LABEL = {"rdzv.test": "1"}


class ContainerProcess:
    """The part of :class:`subprocess.Popen` the launchers use (``poll``, ``wait``,
    ``send_signal``, ``kill``, ``pid``, ``returncode``), over a running Docker container
    (a ``docker.models.containers.Container``). Every Docker call has a timeout."""

    def __init__(self, container: Any) -> None:
        self._container = container
        self.returncode: int | None = None

    def _state(self) -> dict[str, Any]:
        self._container.reload()
        return dict(self._container.attrs["State"])

    @property
    def pid(self) -> int:
        """The server's process id on this host (0 once the container stopped)."""
        return int(self._state()["Pid"])

    def poll(self) -> int | None:
        """``None`` while the container runs (or is paused), else its exit code."""
        state = self._state()
        if state["Status"] in ("running", "paused", "restarting"):
            return None
        self.returncode = int(state["ExitCode"])
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` s for the container to stop; raise
        :class:`subprocess.TimeoutExpired` after that, as ``Popen.wait`` does."""
        import requests

        try:
            result = self._container.wait(timeout=timeout if timeout is not None else 60)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
            raise subprocess.TimeoutExpired(f"container {self._container.short_id}", timeout or 60) from exc
        self.returncode = int(result.get("StatusCode", -1))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """``docker kill --signal``; a paused container is thawed first so it can act on it."""
        if self.poll() is not None:
            return
        if self._state()["Status"] == "paused":
            self._container.unpause()
        self._container.kill(signal=int(sig))

    def kill(self) -> None:
        """``docker kill`` (SIGKILL)."""
        self.send_signal(signal.SIGKILL)


class ContainerLauncher:
    """Runs a launcher's command in a container instead of a child process.

    ``_run(command, mounts)`` starts the container (creating it on first use, or when the
    command changed, e.g. a retry on other free ports; ``docker start`` otherwise) and sets
    ``self._process`` to a :class:`ContainerProcess`.
    """

    image: str
    _container: Any = None
    _container_command: list[str] | None = None

    def _run(self, command: Sequence[str], mounts: Sequence[str]) -> None:
        if self._container is not None and self._container_command != list(command):
            self._remove_container()
        if self._container is None:
            from testcontainers.core.container import DockerContainer

            container = DockerContainer(self.image).with_command(list(command[1:]))
            for path in dict.fromkeys(mounts):
                container.with_volume_mapping(path, path, "rw")
            container.with_kwargs(
                network_mode="host", entrypoint=[command[0]], user=f"{os.getuid()}:{os.getgid()}", labels=LABEL
            )
            self._container, self._container_command = container.start(), list(command)
        else:
            self._container.get_wrapped_container().start()
        self._process = ContainerProcess(self._container.get_wrapped_container())

    def _remove_container(self) -> None:
        container, self._container, self._container_command = self._container, None, None
        if container is not None:
            container.stop()  # testcontainers: docker rm --force

    def pause(self) -> None:
        """``docker pause``: freeze every process of the server (it keeps its sockets)."""
        self._wrapped().pause()

    def unpause(self) -> None:
        """``docker unpause``: thaw what :meth:`pause` froze."""
        self._wrapped().unpause()

    def _wrapped(self) -> Any:
        if self._container is None:
            raise RuntimeError(f"No container of {self.image} has been started.")
        return self._container.get_wrapped_container()

    @property
    def container_id(self) -> str | None:
        """The Docker id of the server's container, or ``None`` before the first start."""
        return None if self._container is None else str(self._wrapped().id)


class ContainerRedis(ContainerLauncher, RedisServer):
    """:class:`RedisServer` in a container of ``image`` (arguments as for :class:`RedisServer`,
    except ``binary``: the entry point on the image's PATH). TLS files are mounted read-write
    at their own path, with their directory."""

    _entrypoint = "redis-server"

    def __init__(self, image: str, port: int | None = None, **kwargs: Any) -> None:
        super().__init__(port, binary=self._entrypoint, **kwargs)
        self.image = image

    def _launch(self, binary: str) -> None:
        assert self._tmpdir is not None
        config = os.path.join(self._tmpdir, "redis.conf")
        with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write("\n".join(self._config_lines()) + "\n")
        tls_dirs = [os.path.dirname(os.path.abspath(f)) for f in self._tls_files if f]
        self._run([binary, config, *self._extra_args], [self._tmpdir, *tls_dirs])
        self._wait_until_up()

    def _log_tail(self, lines: int = 20) -> str:
        """The end of the server's log file, else of the container's output (an error before
        the log file was opened, such as a bad argument)."""
        tail = super()._log_tail(lines)
        if self._container is not None and tail.strip() in ("", "(no log)"):
            tail = self._wrapped().logs(tail=lines).decode(errors="replace") or tail
        return tail

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server, remove its container and its temporary directory."""
        super().stop(timeout)
        self._remove_container()

    def __repr__(self) -> str:
        return f"Container{super().__repr__()}[{self.image}]"


class ContainerSentinel(ContainerRedis, RedisSentinel):
    """:class:`RedisSentinel` in a container of ``image`` (``redis-sentinel`` on its PATH;
    arguments as for :class:`RedisSentinel`)."""

    _entrypoint = "redis-sentinel"

    def __init__(self, image: str, master: str, master_name: str = "mymaster", **kwargs: Any) -> None:
        # binary given: the entry point is redis-sentinel itself, no ``--sentinel`` argument
        RedisSentinel.__init__(self, master, master_name, binary=self._entrypoint, **kwargs)
        self.image = image


class ContainerEtcd(ContainerLauncher, EtcdServer):
    """:class:`EtcdServer` in a container of ``image`` (arguments as for :class:`EtcdServer`,
    except ``binary``). etcd logs to ``log_path`` in the mounted temporary directory."""

    def __init__(self, image: str, **kwargs: Any) -> None:
        self.image = image
        super().__init__(**kwargs)

    def _resolve_binary(self, binary: str | None) -> str:
        return "etcd"  # the entry point, on the image's PATH

    def _launch(self) -> None:
        assert self._base_dir is not None and self.log_path is not None
        mounts = [self._base_dir, os.path.dirname(os.path.abspath(self.data_dir))]
        mounts += [
            os.path.dirname(os.path.abspath(f)) for f in (self.cert_file, self.key_file, self.client_ca_file) if f
        ]
        try:
            self._run([*self._command(), "--log-outputs", self.log_path], mounts)
            self._wait_healthy()
        except BaseException:
            self._terminate(kill=True)
            raise

    def stop(self) -> None:
        """Stop etcd, remove its container and its temporary directory."""
        super().stop()
        self._remove_container()

    def __repr__(self) -> str:
        return f"Container{super().__repr__()}[{self.image}]"
