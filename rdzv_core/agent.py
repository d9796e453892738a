"""A torch-free elastic agent: join a rendezvous, run one worker process, supervise it.

One agent runs per node. It loops:

1. **Rendezvous** — ``handler.next_rendezvous()`` gives this node's rank and the world size.
2. **Start** the worker command with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
   ``MASTER_PORT`` and the ``RDZV_*`` variables (see :class:`WorkerEnv`) in its environment,
   in a process group of its own that dies with the agent (Linux: parent-death signal).
3. **Monitor** every ``monitor_interval`` seconds: the worker's exit, the agent's signals,
   ``handler.num_nodes_waiting()`` (with a change-notifying backend, an unchanged state costs
   one tiny token read, and the full state is read only after a change), and whether the
   rendezvous was closed (from the state the handler just read: no extra round trip).
4. **Decide**:

   * worker exit code 0 -> the *exit barrier*: the agent adds 1 to the counter
     ``rdzv_agent/done`` of the round's store; the agent that brings it to ``world_size``
     sets ``rdzv_agent/all_done``, which the others wait for (a blocking store wait, bounded
     by ``exit_barrier_timeout``). When all ranks are done the job succeeded: the agent calls
     ``handler.shutdown()``, which closes the rendezvous, and exits 0. If a participant of the
     round disappears while waiting (it died, or its worker failed and it re-rendezvoused),
     the round is broken: the agent re-rendezvouses and runs its worker again (the whole
     group restarts, as in torch). Nodes joining the wait list are ignored at that point:
     the job is finishing. Once ``all_done`` is set, success wins over anything seen later
     (a peer closing the rendezvous, a finished peer declared dead).
   * worker failed -> stop, re-rendezvous, restart, while fewer than ``max_restarts``
     failures were restarted; then the rendezvous is closed (so the other agents stop too,
     as torch's agent does) and the agent exits with the worker's code.
   * nodes waiting (scale-up) or a participant gone (scale-down) -> stop the worker
     (SIGTERM, SIGKILL after ``stop_timeout``), re-rendezvous, restart. This does not use up
     ``max_restarts`` (torch's rule: only failures count).
   * rendezvous closed by someone else -> stop the worker, exit :data:`EXIT_RENDEZVOUS`.
   * SIGINT/SIGTERM to the agent -> forwarded to the worker's process group; the worker gets
     ``stop_timeout`` seconds, then SIGKILL; exit ``128 + signal``. The rendezvous is not
     closed (the node just leaves; the others re-form without it).

Exit codes (:class:`AgentResult.exit_code`): see :data:`EXIT_CODES`.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any, Protocol, runtime_checkable

from rdzv_core.api import (
    RendezvousClosedError,
    RendezvousError,
    RendezvousGracefulExitError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
)
from rdzv_core.backend import Standing
from rdzv_core.state import NodeDesc
from rdzv_core.store import PrefixStore, Store, StoreTimeoutError

__all__ = [
    "Outcome",
    "Barrier",
    "HasStanding",
    "EXIT_SUCCESS",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_RENDEZVOUS",
    "EXIT_NOT_EXECUTABLE",
    "EXIT_NOT_FOUND",
    "EXIT_CODES",
    "DONE_KEY",
    "ALL_DONE_KEY",
    "AgentConfig",
    "RoundRecord",
    "AgentResult",
    "WorkerProcess",
    "ElasticAgent",
    "WorkerEnv",
    "open_worker_store",
    "exit_code_of",
]

logger = logging.getLogger(__name__)


class Outcome(str, enum.Enum):
    """How a round ended for this agent (:attr:`RoundRecord.outcome`; the value is what the
    summary JSON shows)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"  #: every rank succeeded; the rendezvous is closed
    FAILED = "failed"  #: the worker failed (restarted while restarts remain)
    MEMBERSHIP_CHANGED = "membership_changed"  #: nodes waiting or gone: re-rendezvous
    ROUND_BROKEN = "round_broken"  #: a peer left during the exit barrier
    CLOSED = "closed"  #: the rendezvous was closed
    SIGNAL = "signal"  #: SIGTERM/SIGINT reached the agent
    BACKEND_LOST = "backend_lost"  #: the backend stayed unreachable for BACKEND_GRACE s
    BARRIER_TIMEOUT = "barrier_timeout"  #: not every rank reported success in time
    NOT_STARTED = "not_started"  #: the program could not be started


class Barrier(str, enum.Enum):
    """How the exit barrier ended (:meth:`ElasticAgent._exit_barrier`)."""

    ALL_DONE = "all_done"
    ROUND_BROKEN = "round_broken"
    CLOSED = "closed"
    SIGNAL = "signal"
    BACKEND_LOST = "backend_lost"
    TIMEOUT = "timeout"


@runtime_checkable
class HasStanding(Protocol):
    """A handler that says which node it is and where that node stands, without a request
    (the dynamic handler): the agent reads ``node.key`` and ``standing.round``,
    ``.complete``, ``.missing`` and ``.closed``."""

    @property
    def node(self) -> NodeDesc: ...

    @property
    def standing(self) -> Standing: ...


#: The job succeeded on all nodes (or this node was redundant and the job ended).
EXIT_SUCCESS = 0
#: An error of the agent itself (unexpected exception).
EXIT_FAILURE = 1
#: Bad command line or configuration (also click's code for usage errors).
EXIT_USAGE = 2
#: The rendezvous failed: join timeout, backend unreachable or corrupt, or the rendezvous
#: was closed before the job succeeded (``rdzv close``, or a peer gave up).
EXIT_RENDEZVOUS = 3
#: The worker command exists but cannot be executed (shell convention).
EXIT_NOT_EXECUTABLE = 126
#: The worker command was not found (shell convention).
EXIT_NOT_FOUND = 127

#: Every exit code of ``rdzv run`` and its meaning (the CLI help prints this table).
EXIT_CODES: dict[str, str] = {
    "0": "the program succeeded on every node (or this node was surplus and the job ended)",
    "1-255": "the program's own exit code, after --max-restarts failures were restarted",
    "2": "bad arguments or configuration",
    "3": "rendezvous failure: join timeout, backend unreachable or corrupt, or the rendezvous was closed before the job succeeded",
    "126/127": "the program cannot be executed / was not found",
    "128+N": "the program, or the agent, was ended by signal N (130 = SIGINT, 143 = SIGTERM)",
}

#: Counter in the round's store: agents whose worker succeeded.
DONE_KEY = "rdzv_agent/done"
#: Set in the round's store when every rank's worker succeeded.
ALL_DONE_KEY = "rdzv_agent/all_done"
#: Keep supervising through backend errors this long before giving up (seconds).
BACKEND_GRACE = 30.0

_PR_SET_PDEATHSIG = 1


def exit_code_of(returncode: int) -> int:
    """Map a :class:`subprocess.Popen` return code to a shell-style exit code.

    Args:
        returncode: ``>= 0`` an exit status; ``< 0`` killed by signal ``-returncode``.

    Returns:
        ``returncode`` when ``>= 0`` (masked to 0..255), else ``128 + signal``.
    """
    return returncode & 0xFF if returncode >= 0 else 128 + (-returncode)


@dataclass(frozen=True)
class AgentConfig:
    """How an :class:`ElasticAgent` runs and supervises its worker.

    Attributes:
        command: The worker command and its arguments (not empty; no shell).
        max_restarts: How many worker *failures* are answered with a restart (``>= 0``).
            Re-rendezvous after membership changes do not count.
        monitor_interval: Seconds between two checks of worker and membership (``> 0``).
        stop_timeout: Seconds a stopped worker gets between SIGTERM and SIGKILL (``>= 0``).
        exit_barrier_timeout: Seconds a succeeded agent waits for the other ranks (``> 0``);
            when it passes the agent exits 0 without closing the rendezvous.
        env: Extra environment variables for the worker (e.g. ``RDZV_BACKEND``), applied
            over the agent's environment and under the per-round variables.
        cwd: Working directory of the worker, or ``None`` for the agent's.

    Raises:
        ValueError: an empty command or an out-of-range number; the message names it.
    """

    command: Sequence[str]
    max_restarts: int = 0
    monitor_interval: float = 0.2
    stop_timeout: float = 5.0
    exit_barrier_timeout: float = 300.0
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None

    def __post_init__(self) -> None:
        if not self.command or not all(isinstance(part, str) for part in self.command):
            raise ValueError("The worker command must be a non-empty list of strings.")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0 (got {self.max_restarts}).")
        if not self.monitor_interval > 0:
            raise ValueError(f"monitor_interval must be > 0 seconds (got {self.monitor_interval}).")
        if not self.stop_timeout >= 0:
            raise ValueError(f"stop_timeout must be >= 0 seconds (got {self.stop_timeout}).")
        if not self.exit_barrier_timeout > 0:
            raise ValueError(f"exit_barrier_timeout must be > 0 seconds (got {self.exit_barrier_timeout}).")


@dataclass
class RoundRecord:
    """What happened in one round this agent took part in (times are wall-clock seconds since
    the epoch; durations in seconds).

    Attributes:
        round: The round number (from the rendezvous state; else a local count from 1).
        rank, world_size: This node's rank and the round's size.
        rendezvous_seconds: How long ``next_rendezvous`` took.
        joined_at: When the rendezvous returned.
        ended_at: When the round ended for this agent (``None`` while running).
        worker_exit_code: The worker's exit code (see :func:`exit_code_of`), ``None`` if it
            never started or is still running.
        outcome: An :class:`Outcome` (a str: ``running``, ``succeeded``, ``failed``,
            ``membership_changed``, ``round_broken``, ``closed``, ``signal``,
            ``backend_lost``, ``barrier_timeout`` or ``not_started``).
    """

    round: int
    rank: int
    world_size: int
    rendezvous_seconds: float
    joined_at: float
    ended_at: float | None = None
    worker_exit_code: int | None = None
    outcome: Outcome = Outcome.RUNNING


@dataclass
class AgentResult:
    """The result of :meth:`ElasticAgent.run`.

    Attributes:
        exit_code: The agent's exit code (see :data:`EXIT_CODES`).
        reason: One line saying why the agent ended.
        node: This node's key in the rendezvous (``""`` when unknown).
        run_id: The run id.
        restarts: Worker failures answered with a restart.
        rounds: One :class:`RoundRecord` per round joined, in order.
        started_at, ended_at: Wall-clock seconds since the epoch.
    """

    exit_code: int
    reason: str
    node: str = ""
    run_id: str = ""
    restarts: int = 0
    rounds: list[RoundRecord] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (what ``rdzv run --summary-file`` writes)."""
        return asdict(self)

    def write_json(self, path: str) -> None:
        """Write :meth:`to_dict` as JSON to ``path`` atomically (temp file + rename).

        Raises:
            OSError: the file cannot be written.
        """
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that makes the child get SIGKILL when the agent dies (Linux),
    or ``None`` elsewhere. libc is resolved here, before ``fork``, so the child only calls
    one async-signal-safe system call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


class WorkerProcess:
    """The worker command running in a process group of its own.

    Args:
        command: Program and arguments (no shell).
        env: Its complete environment.
        cwd: Its working directory, or ``None``.

    Raises:
        FileNotFoundError, PermissionError: (from the constructor) the program cannot be run.
    """

    def __init__(self, command: Sequence[str], env: Mapping[str, str], cwd: str | None = None) -> None:
        self.command = list(command)
        self._process = subprocess.Popen(
            self.command,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # own process group: stop() reaches its children too
            preexec_fn=_pdeathsig_preexec(),
        )

    @property
    def pid(self) -> int:
        """The worker's process id (also its process group id)."""
        return self._process.pid

    def poll(self) -> int | None:
        """Return the exit code (see :func:`exit_code_of`) when the worker ended, else ``None``."""
        code = self._process.poll()
        return None if code is None else exit_code_of(code)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the worker to end; return its exit code or ``None``."""
        try:
            return exit_code_of(self._process.wait(timeout))
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the worker's process group (ignored when it is gone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)

    def stop(self, timeout: float, signum: int = signal.SIGTERM) -> int:
        """Stop the worker: ``signum`` to its group, SIGKILL after ``timeout`` seconds.

        Returns:
            Its exit code (``128 + signal`` when a signal ended it).
        """
        code = self.poll()
        if code is not None:
            self.send_signal(signal.SIGKILL)  # leftovers of its process group
            return code
        self.send_signal(signum)
        code = self.wait(timeout)
        if code is None:
            logger.warning(
                "The worker (pid %d) did not stop within %.1f s of signal %d; killing it.", self.pid, timeout, signum
            )
            self.send_signal(signal.SIGKILL)
            code = exit_code_of(self._process.wait())
        self.send_signal(signal.SIGKILL)
        return code


class _Interrupted(BaseException):
    """Raised by the signal handler to leave a blocking rendezvous call."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class ElasticAgent:
    """Supervises one worker per node across rendezvous rounds (see the module docs).

    Args:
        handler: The rendezvous handler of this node (not yet joined).
        config: The :class:`AgentConfig`.
        worker_env: Variables every worker gets on top of the agent's environment and
            ``config.env`` (the CLI passes the backend's ``RDZV_BACKEND``/``RDZV_ENDPOINT``).

    :meth:`run` may run in any thread. Signals are the caller's business: call
    :meth:`request_stop` (thread-safe), or use :meth:`signal_handlers` in the main thread.
    """

    def __init__(
        self, handler: RendezvousHandler, config: AgentConfig, worker_env: Mapping[str, str] | None = None
    ) -> None:
        self.handler = handler
        self.config = config
        self._worker_env = dict(worker_env or {})
        self._worker: WorkerProcess | None = None
        self._stop_signal: int | None = None
        self._interruptible = False
        self._lock = threading.Lock()
        self._restarts = 0
        self._rounds: list[RoundRecord] = []
        self._run_thread: threading.Thread | None = None
        self._round_listeners: list[Callable[[RoundRecord], None]] = []

    def add_round_listener(self, listener: Callable[[RoundRecord], None]) -> None:
        """Call ``listener(record)`` in :meth:`run`'s thread when a round ends for this agent
        (``record.outcome`` and ``ended_at`` are set); its exceptions are logged, not raised."""
        self._round_listeners.append(listener)

    def _round_ended(self, record: RoundRecord) -> None:
        for listener in list(self._round_listeners):
            try:
                listener(record)
            except Exception:
                logger.exception("A round listener failed on round %d", record.round)

    # -- signals ------------------------------------------------------------------------------

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask the agent to stop: ``signum`` is forwarded to the worker at once and :meth:`run`
        returns ``128 + signum`` soon after (within ``monitor_interval`` when supervising).
        A second request kills the worker at once (SIGKILL)."""
        with self._lock:
            repeated = self._stop_signal is not None
            if not repeated:
                self._stop_signal = signum
            worker = self._worker
        if worker is not None:
            worker.send_signal(signal.SIGKILL if repeated else signum)

    @contextlib.contextmanager
    def signal_handlers(self, signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
        """Install handlers of ``signums`` that call :meth:`request_stop` (main thread only);
        when :meth:`run` runs in the main thread too, a blocking rendezvous call is interrupted
        at once. The old handlers come back on exit.

        Raises:
            ValueError: not called from the main thread.
        """

        def handle(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signum)
            # Signal handlers run in the main thread: interrupt only a run() that is there.
            if self._interruptible and self._run_thread is threading.current_thread():
                self._interruptible = False
                raise _Interrupted(signum)

        previous = {s: signal.signal(s, handle) for s in signums}
        try:
            yield
        finally:
            for s, old in previous.items():
                signal.signal(s, old)

    @contextlib.contextmanager
    def _interruptible_section(self) -> Iterator[None]:
        self._interruptible = True
        try:
            if self._stop_signal is not None:
                raise _Interrupted(self._stop_signal)
            yield
        finally:
            self._interruptible = False

    # -- the loop -----------------------------------------------------------------------------

    def _node_key(self) -> str:
        return self.handler.node.key if isinstance(self.handler, HasStanding) else ""

    def _result(self, code: int, reason: str, started: float) -> AgentResult:
        if code == EXIT_SUCCESS:
            logger.info("%s", reason)
        else:
            logger.error("%s (exit code %d)", reason, code)
        return AgentResult(
            code,
            reason,
            self._node_key(),
            self.handler.get_run_id(),
            self._restarts,
            list(self._rounds),
            started,
            time.time(),
        )

    def run(self) -> AgentResult:
        """Run the job on this node until it succeeds, fails for good, or is stopped.

        Returns:
            An :class:`AgentResult`; never raises for rendezvous or worker problems (those
            become exit codes). Unexpected exceptions propagate.
        """
        started = time.time()
        self._run_thread = threading.current_thread()
        while True:
            if self._stop_signal is not None:
                return self._result(128 + self._stop_signal, f"Stopped by signal {self._stop_signal}.", started)
            try:
                info, record = self._rendezvous()
            except _Interrupted as exc:
                return self._result(
                    128 + exc.signum, f"Stopped by signal {exc.signum} while joining the rendezvous.", started
                )
            except RendezvousGracefulExitError:
                return self._result(
                    EXIT_SUCCESS,
                    "The rendezvous closed while this node was surplus (redundancy list); nothing to do.",
                    started,
                )
            except RendezvousClosedError:
                return self._result(
                    EXIT_RENDEZVOUS,
                    f"The rendezvous '{self.handler.get_run_id()}' is closed: the job has ended or was stopped.",
                    started,
                )
            except RendezvousError as exc:
                return self._result(EXIT_RENDEZVOUS, f"Rendezvous failed: {type(exc).__name__}: {exc}", started)
            code, reason, outcome = self._run_round(info, record)
            record.ended_at = time.time()
            record.outcome = outcome
            self._round_ended(record)
            if code is not None:
                return self._result(code, reason, started)

    def _rendezvous(self) -> tuple[RendezvousInfo, RoundRecord]:
        t0 = time.monotonic()
        with self._interruptible_section():
            info = self.handler.next_rendezvous()
        seconds = time.monotonic() - t0
        round_ = self.handler.standing.round if isinstance(self.handler, HasStanding) else len(self._rounds) + 1
        record = RoundRecord(round_, info.rank, info.world_size, round(seconds, 4), time.time())
        self._rounds.append(record)
        logger.info("Round %d: rank %d of %d (rendezvous took %.2f s).", round_, info.rank, info.world_size, seconds)
        return info, record

    def _env(self, info: RendezvousInfo, record: RoundRecord) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.config.env)
        env.update(self._worker_env)
        store = info.store
        env.update(
            {
                "RANK": str(info.rank),
                "WORLD_SIZE": str(info.world_size),
                "GROUP_RANK": str(info.rank),
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": info.bootstrap_store_info.master_addr,
                "MASTER_PORT": str(info.bootstrap_store_info.master_port),
                "RDZV_RUN_ID": self.handler.get_run_id(),
                "RDZV_ROUND": str(record.round),
                "RDZV_RESTART_COUNT": str(self._restarts),
                "RDZV_MAX_RESTARTS": str(self.config.max_restarts),
                "RDZV_STORE_PREFIX": store.prefix if isinstance(store, PrefixStore) else "",
                "RDZV_NODE": self._node_key(),
            }
        )
        return env

    def _run_round(self, info: RendezvousInfo, record: RoundRecord) -> tuple[int | None, str, Outcome]:
        """Run and supervise the worker for one round.

        Returns:
            ``(exit code or None to re-rendezvous, reason, outcome)``.
        """
        try:
            worker = WorkerProcess(self.config.command, self._env(info, record), self.config.cwd)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            failed = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
            self.handler.shutdown()  # a node that cannot run the job ends it (as a failure would)
            return (
                failed,
                f"Cannot start the program {self.config.command[0]!r}: {exc.strerror or exc}",
                Outcome.NOT_STARTED,
            )
        with self._lock:
            self._worker = worker
        logger.info("Started the worker (pid %d): %s", worker.pid, " ".join(self.config.command))
        try:
            outcome, code = self._monitor(worker)
        finally:
            with self._lock:
                self._worker = None
        record.worker_exit_code = code
        if outcome is Outcome.SUCCEEDED:
            return self._after_barrier(self._exit_barrier(info), info, record)
        if outcome is Outcome.FAILED:
            assert code is not None
            if self._restarts < self.config.max_restarts:
                self._restarts += 1
                logger.warning(
                    "The worker failed with exit code %d; restarting (%d/%d).",
                    code,
                    self._restarts,
                    self.config.max_restarts,
                )
                return None, "", outcome
            self.handler.shutdown()
            return (
                code,
                f"The worker failed with exit code {code} and --max-restarts ({self.config.max_restarts}) is used up; the rendezvous is closed.",
                outcome,
            )
        if outcome is Outcome.MEMBERSHIP_CHANGED:
            return None, "", outcome
        if outcome is Outcome.CLOSED:
            self.handler.shutdown()  # already closed: this only stops the keep-alives
            return EXIT_RENDEZVOUS, "The rendezvous was closed while the program ran; the program was stopped.", outcome
        if outcome is Outcome.SIGNAL:
            return self._signal_exit_code(), f"Stopped by signal {self._stop_signal}; the program was stopped.", outcome
        return (
            EXIT_RENDEZVOUS,
            f"The rendezvous backend stayed unreachable for {BACKEND_GRACE:g} s; the program was stopped.",
            outcome,
        )

    def _after_barrier(
        self, barrier: Barrier, info: RendezvousInfo, record: RoundRecord
    ) -> tuple[int | None, str, Outcome]:
        """``(exit code or None to re-rendezvous, reason, outcome)`` once the worker succeeded."""
        if barrier is Barrier.ALL_DONE:
            self.handler.shutdown()
            return (
                EXIT_SUCCESS,
                f"The program succeeded on all {info.world_size} node(s); the rendezvous is closed.",
                Outcome.SUCCEEDED,
            )
        if barrier is Barrier.ROUND_BROKEN:
            logger.warning(
                "A node left round %d before every rank finished; re-forming the round and running the program again.",
                record.round,
            )
            return None, "", Outcome.ROUND_BROKEN
        if barrier is Barrier.CLOSED:
            self.handler.shutdown()  # already closed: this only stops the keep-alives
            return EXIT_RENDEZVOUS, "The rendezvous was closed before every rank finished.", Outcome.CLOSED
        if barrier is Barrier.SIGNAL:
            return (
                self._signal_exit_code(),
                f"Stopped by signal {self._stop_signal} after the program succeeded.",
                Outcome.SIGNAL,
            )
        if barrier is Barrier.BACKEND_LOST:
            return (
                EXIT_RENDEZVOUS,
                "The rendezvous backend stayed unreachable after the program succeeded.",
                Outcome.BACKEND_LOST,
            )
        return (
            EXIT_SUCCESS,
            f"The program succeeded here, but not every rank reported success within {self.config.exit_barrier_timeout:g} s; the rendezvous is left open.",
            Outcome.BARRIER_TIMEOUT,
        )

    def _signal_exit_code(self) -> int:
        return 128 + (self._stop_signal or signal.SIGTERM)

    def _closed_hint(self, ticks: int) -> bool:
        """Whether the rendezvous was closed, from the standing the handler last saw (free) or,
        for other handlers, ``is_closed()`` every 10th tick."""
        if isinstance(self.handler, HasStanding):
            return self.handler.standing.closed
        return ticks % 10 == 0 and self.handler.is_closed()

    def _monitor(self, worker: WorkerProcess) -> tuple[Outcome, int | None]:
        """Watch the worker; return ``(outcome, worker exit code)``."""
        last_ok = time.monotonic()
        ticks = 0
        while True:
            if self._stop_signal is not None:  # before the exit code: the signal may be why it ended
                return Outcome.SIGNAL, worker.stop(self.config.stop_timeout, self._stop_signal)
            code = worker.poll()
            if code is not None:
                return (Outcome.SUCCEEDED if code == 0 else Outcome.FAILED), code
            ticks += 1
            try:
                waiting = self.handler.num_nodes_waiting()
                closed = self._closed_hint(ticks)
                last_ok = time.monotonic()
            except RendezvousError as exc:
                if time.monotonic() - last_ok > BACKEND_GRACE:
                    return Outcome.BACKEND_LOST, worker.stop(self.config.stop_timeout)
                logger.warning(
                    "Checking the rendezvous failed (the worker keeps running): %s: %s", type(exc).__name__, exc
                )
                waiting, closed = 0, False
            if closed:
                logger.warning("The rendezvous was closed; stopping the worker.")
                return Outcome.CLOSED, worker.stop(self.config.stop_timeout)
            if waiting > 0:
                logger.info("%d node(s) waiting or gone; stopping the worker to re-rendezvous.", waiting)
                code = worker.stop(self.config.stop_timeout)
                return Outcome.MEMBERSHIP_CHANGED, code
            worker.wait(self.config.monitor_interval)  # returns early when the worker ends

    def _round_broken(self, round_: int | None) -> bool:
        """Whether a participant of our round is gone (or the round moved on)."""
        waiting = self.handler.num_nodes_waiting()
        if not isinstance(self.handler, HasStanding):
            return waiting > 0
        standing = self.handler.standing
        if round_ is not None and standing.round != round_:
            return True
        return bool(standing.complete) and standing.missing > 0

    def _exit_barrier(self, info: RendezvousInfo) -> Barrier:
        """Report success in the round's store and wait for every rank."""
        store = info.store
        round_ = self.handler.standing.round if isinstance(self.handler, HasStanding) else None
        deadline = time.monotonic() + self.config.exit_barrier_timeout
        last_ok = time.monotonic()
        reported = False
        ticks = 0
        while True:
            if self._stop_signal is not None:
                return Barrier.SIGNAL
            try:
                if not reported:
                    if store.add(DONE_KEY, 1) >= info.world_size:
                        store.set(ALL_DONE_KEY, b"1")
                        return Barrier.ALL_DONE
                    reported = True
                    logger.info(
                        "The program succeeded; waiting for the other %d rank(s) to finish.", info.world_size - 1
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Barrier.ALL_DONE if store.check([ALL_DONE_KEY]) else Barrier.TIMEOUT
                try:
                    store.wait([ALL_DONE_KEY], min(self.config.monitor_interval * 2, remaining))
                    return Barrier.ALL_DONE
                except StoreTimeoutError:
                    pass
                ticks += 1
                broken = self._round_broken(round_)
                closed = not broken and self._closed_hint(ticks)
                if broken or closed:
                    # Every rank may have finished just now (and a peer closed the rendezvous,
                    # or a finished peer was declared dead): success wins.
                    if store.check([ALL_DONE_KEY]):
                        return Barrier.ALL_DONE
                    return Barrier.ROUND_BROKEN if broken else Barrier.CLOSED
                last_ok = time.monotonic()
            except RendezvousError as exc:
                if time.monotonic() - last_ok > BACKEND_GRACE:
                    return Barrier.BACKEND_LOST
                logger.warning("Waiting for the other ranks failed, retrying: %s: %s", type(exc).__name__, exc)
                time.sleep(min(self.config.monitor_interval, 1.0))


# --------------------------------------------------------------------------------------------
# The worker's side


@dataclass(frozen=True)
class WorkerEnv:
    """What ``rdzv run`` tells its worker, read from the environment.

    Attributes:
        rank, world_size: ``RANK``, ``WORLD_SIZE`` (ints).
        master_addr, master_port: ``MASTER_ADDR``, ``MASTER_PORT`` (for the worker's own
            communication bootstrap; the port is free on rank 0's node).
        run_id, round: ``RDZV_RUN_ID``, ``RDZV_ROUND`` (int).
        restart_count: ``RDZV_RESTART_COUNT``: worker failures restarted so far (int).
        backend, endpoint: ``RDZV_BACKEND``, ``RDZV_ENDPOINT``: where the store is.
        store_prefix: ``RDZV_STORE_PREFIX``: the key prefix of this round's store.
        config: ``RDZV_CONF`` (``k=v,...``), the rendezvous configuration to reach the store.
    """

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    run_id: str
    round: int
    restart_count: int
    backend: str
    endpoint: str
    store_prefix: str
    config: str

    @staticmethod
    def from_environ(environ: Mapping[str, str] | None = None) -> WorkerEnv:
        """Read the variables from ``environ`` (default ``os.environ``).

        Raises:
            KeyError: ``RANK`` or ``WORLD_SIZE`` is missing (not started by ``rdzv run``).
            ValueError: a number does not parse.
        """
        env = os.environ if environ is None else environ
        return WorkerEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", ""),
            master_port=int(env.get("MASTER_PORT", "0") or 0),
            run_id=env.get("RDZV_RUN_ID", ""),
            round=int(env.get("RDZV_ROUND", "0") or 0),
            restart_count=int(env.get("RDZV_RESTART_COUNT", "0") or 0),
            backend=env.get("RDZV_BACKEND", ""),
            endpoint=env.get("RDZV_ENDPOINT", ""),
            store_prefix=env.get("RDZV_STORE_PREFIX", ""),
            config=env.get("RDZV_CONF", ""),
        )


class _OwningPrefixStore(PrefixStore):
    """A :class:`PrefixStore` whose :meth:`close` also closes the backend opened with it."""

    def __init__(self, prefix: str, store: Store, on_close: Callable[[], None]) -> None:
        super().__init__(prefix, store)
        self._on_close = on_close

    def close(self) -> None:
        self._on_close()


def open_worker_store(environ: Mapping[str, str] | None = None, timeout: float | None = None) -> Store:
    """Open, from a worker started by ``rdzv run``, the store of its round.

    The store is the one the agents share for the round (:attr:`RendezvousInfo.store`): keys
    written by one rank are seen by all, ``add`` is atomic, ``get``/``wait`` block. Close it
    when done.

    Args:
        environ: The environment to read (default ``os.environ``; see :class:`WorkerEnv`).
        timeout: Default timeout (seconds) of blocking calls, or ``None`` for the store's.

    ``rdzv run`` passes no secret: on a server with a password the worker needs the
    backend's password variable (``RDZV_REDIS_PASSWORD``, ``RDZV_ETCD_PASSWORD``) set in its
    environment by the user.

    Raises:
        KeyError: not started by ``rdzv run`` (no ``RANK``/``RDZV_*`` variables).
        ValueError: the backend offers no store to other processes (``memory``).
        RendezvousConnectionError: the backend is unreachable.
    """
    from rdzv_core.registry import rendezvous_handler_registry
    from rdzv_core.status import open_backend
    from rdzv_core.utils import parse_rendezvous_config

    env = WorkerEnv.from_environ(environ)
    if not env.backend or not env.run_id or not env.store_prefix:
        raise KeyError(
            "RDZV_BACKEND, RDZV_RUN_ID and RDZV_STORE_PREFIX must be set: was this process started by 'rdzv run'?"
        )
    plugin = rendezvous_handler_registry.plugin(env.backend)
    if plugin is not None and not plugin.cross_process:
        raise ValueError(f"The rendezvous backend '{env.backend}' offers no store shared between processes.")
    params = RendezvousParameters(env.backend, env.endpoint, env.run_id, 1, 1, **parse_rendezvous_config(env.config))
    session = open_backend(params)
    if session.store is None:
        session.close()
        raise ValueError(f"The rendezvous backend '{env.backend}' offers no store shared between processes.")
    store = _OwningPrefixStore(env.store_prefix, session.store, session.close)
    if timeout is not None:
        store.set_timeout(timeout)
    return store
