"""The pure part of the state machine: actions, state transitions, and the operations that
look at a state and decide the next action (torch's op/action design).

Nothing here reads a clock or talks to a backend: the time comes in the :class:`_Context`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rdzv_core.backend import Role, Standing
from rdzv_core.dynamic.settings import RendezvousSettings
from rdzv_core.state import RendezvousState

#: After an operation's deadline, a node still tries this long to take itself out of the round.
_ROLLBACK_PERIOD = 5.0


class _Action(enum.Enum):
    KEEP_ALIVE = enum.auto()
    ADD_TO_PARTICIPANTS = enum.auto()
    ADD_TO_WAIT_LIST = enum.auto()
    ADD_TO_REDUNDANCY_LIST = enum.auto()
    REMOVE_FROM_PARTICIPANTS = enum.auto()
    REMOVE_FROM_WAIT_LIST = enum.auto()
    REMOVE_FROM_REDUNDANCY_LIST = enum.auto()
    MARK_RENDEZVOUS_COMPLETE = enum.auto()
    MARK_RENDEZVOUS_CLOSED = enum.auto()
    SYNC = enum.auto()
    ERROR_CLOSED = enum.auto()
    ERROR_TIMEOUT = enum.auto()
    ERROR_GRACEFUL_EXIT = enum.auto()
    FINISH = enum.auto()


# --------------------------------------------------------------------------------------------
# State transitions shared by the operations and the dead-node sweep


def _remove_nodes(state: RendezvousState, nodes: Sequence[str], settings: RendezvousSettings) -> bool:
    """Remove ``nodes`` from every list of ``state``; return whether a participant was removed."""
    removed_participant = False
    for node in nodes:
        state.last_heartbeats.pop(node, None)
        if state.participants.pop(node, None) is not None:
            removed_participant = True
        if node in state.wait_list:
            state.wait_list.remove(node)
        if node in state.redundancy_list:
            state.redundancy_list.remove(node)
    if removed_participant:
        if state.complete:
            if not state.participants:  # the last one left: the next round starts
                state.complete = False
                state.world_size = 0
                state.round += 1
        elif len(state.participants) < settings.min_nodes:
            state.deadline = None
    return removed_participant


def _mark_complete(state: RendezvousState) -> None:
    state.complete = True
    state.deadline = None
    state.participants = {node: rank for rank, node in enumerate(sorted(state.participants))}
    state.world_size = len(state.participants)


def _add_participant(state: RendezvousState, node: str, settings: RendezvousSettings, wall: float) -> None:
    """Make ``node`` a participant; ``wall`` is the wall-clock time now (the last call's start)."""
    if node in state.wait_list:
        state.wait_list.remove(node)
    state.participants[node] = 0
    if len(state.participants) == settings.min_nodes:
        state.deadline = wall + settings.timeout.last_call.total_seconds()
    if len(state.participants) == settings.max_nodes:
        _mark_complete(state)


def _admit(state: RendezvousState, node: str, settings: RendezvousSettings, wall: float) -> None:
    """Admit ``node`` (not in any list) as the join operation would decide for itself."""
    if not state.complete:
        _add_participant(state, node, settings, wall)
    elif len(state.participants) < settings.max_nodes:
        state.wait_list.append(node)
    else:
        state.redundancy_list.append(node)


def _missing_participants(state: RendezvousState) -> int:
    """Participants of a complete round that were removed (dead or left)."""
    return max(0, state.world_size - len(state.participants)) if state.complete else 0


# --------------------------------------------------------------------------------------------
# Operations: look at the state, return the next action


@dataclass
class _Context:
    """What an operation looks at: this node, the state it read, and the time (``now``:
    monotonic seconds, compared with operation deadlines; ``wall``: seconds since the epoch,
    compared with the state's last-call deadline)."""

    node: str
    state: RendezvousState
    settings: RendezvousSettings
    keep_alive_due: bool
    now: float
    wall: float


def state_standing(state: RendezvousState, node: str, wall: float) -> Standing:
    """``node``'s :class:`~rdzv_core.backend.Standing` in a whole ``state`` (the state path's
    counterpart of a membership server's answer, for the progress lines). Its version is a
    digest of what a waiting node reacts to (round, completion, close, the last call running,
    the wait list non-empty), so it changes O(1) times per round, not once per join."""
    role = Role.of(node, state.participants, state.wait_list, state.redundancy_list)
    digest = hash((state.round, state.complete, state.closed, state.deadline is not None, bool(state.wait_list)))
    return Standing(
        incarnation="state",
        version=digest,
        round=state.round,
        complete=state.complete,
        closed=state.closed,
        role=role,
        rank=state.participants.get(node) if state.complete else None,
        world_size=state.world_size,
        participants=len(state.participants),
        waiting=len(state.wait_list),
        redundant=len(state.redundancy_list),
        deadline_in=None if state.deadline is None or state.complete else max(0.0, state.deadline - wall),
    )


def _keep_alive_or_sync(ctx: _Context) -> _Action:
    return _Action.KEEP_ALIVE if ctx.keep_alive_due else _Action.SYNC


def _join_op(ctx: _Context, deadline: float) -> _Action:
    state, node, settings = ctx.state, ctx.node, ctx.settings
    if state.closed:
        return _Action.ERROR_GRACEFUL_EXIT if node in state.redundancy_list else _Action.ERROR_CLOSED
    if node in state.redundancy_list:
        # No timeout here: a redundant node waits as long as the round is full; leaving the
        # list starts its join deadline again (the executor resets it, as torch does).
        if len(state.participants) >= settings.max_nodes:
            return _keep_alive_or_sync(ctx)
        return _Action.REMOVE_FROM_REDUNDANCY_LIST
    is_participant = node in state.participants
    if state.complete and is_participant:
        return _Action.FINISH
    now = ctx.now
    if now > deadline:
        if now <= deadline + _ROLLBACK_PERIOD:
            if is_participant:
                return _Action.REMOVE_FROM_PARTICIPANTS
            if node in state.wait_list:
                return _Action.REMOVE_FROM_WAIT_LIST
        return _Action.ERROR_TIMEOUT
    if state.complete:
        if len(state.participants) < settings.max_nodes:
            if node not in state.wait_list:
                return _Action.ADD_TO_WAIT_LIST
        else:  # full: a wait-listed node left out of the new round moves on too
            return _Action.ADD_TO_REDUNDANCY_LIST
    elif is_participant:
        if len(state.participants) >= settings.min_nodes and state.deadline is not None and ctx.wall >= state.deadline:
            return _Action.MARK_RENDEZVOUS_COMPLETE
    else:
        return _Action.ADD_TO_PARTICIPANTS
    return _keep_alive_or_sync(ctx)


def _exit_op(ctx: _Context, deadline: float) -> _Action:
    if ctx.node in ctx.state.participants:
        return _Action.ERROR_TIMEOUT if ctx.now > deadline else _Action.REMOVE_FROM_PARTICIPANTS
    return _Action.FINISH


def _close_op(ctx: _Context, deadline: float) -> _Action:
    if ctx.state.closed:
        return _Action.FINISH
    return _Action.ERROR_TIMEOUT if ctx.now > deadline else _Action.MARK_RENDEZVOUS_CLOSED


def _keep_alive_op(ctx: _Context, deadline: float) -> _Action:
    if not ctx.keep_alive_due:
        return _Action.FINISH
    return _Action.ERROR_TIMEOUT if ctx.now > deadline else _Action.KEEP_ALIVE


def _flush_op(ctx: _Context, deadline: float) -> _Action:
    """Finish once pending local changes (dead-node removals) are written."""
    return _Action.FINISH


_Op = Callable[[_Context, float], _Action]
_ADMISSIONS = frozenset({_Action.ADD_TO_PARTICIPANTS, _Action.ADD_TO_WAIT_LIST, _Action.ADD_TO_REDUNDANCY_LIST})
