"""The invariants of a lab run, checked from the nodes' own records (see
:mod:`tests.netlab.node` for their fields). Pure functions of the records: the unit tests
feed them broken runs."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

#: The join timeout the lab's nodes run with (seconds).
JOIN_TIMEOUT_S = 20.0
#: How far past its own deadline a call may return: one request in flight when it passes.
DEADLINE_SLACK_S = 4.0
#: The longest a ``num_nodes_waiting()`` may take: its retry budget plus one request.
WAITING_BOUND_S = 3.0 + 2.0 + DEADLINE_SLACK_S
#: The errors the API documents for ``next_rendezvous()`` and ``num_nodes_waiting()``.
DOCUMENTED_ERRORS = {
    "rdzv_core.api.RendezvousConnectionError",
    "rdzv_core.api.RendezvousTimeoutError",
    "rdzv_core.api.RendezvousStateError",
    "rdzv_core.store.StoreTimeoutError",
}
#: Seconds a node may take to notice that a round formed without it.
NOTICE_S = 1.5


def group_rounds(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The formed rounds: round id -> the ``round`` records of its members."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record["ev"] == "round":
            grouped[record["round"]].append(record)
    return dict(grouped)


def check_records(
    records: list[dict[str, Any]], max_nodes: int, allowed_errors: set[str] | None = None, dump: str = ""
) -> None:
    """The invariants of every run, from the records (AssertionError naming the broken one):

    * within a round, all members report the same world size and bootstrap address, and
      their ranks are distinct, in ``0..W-1`` (a permutation once all W reported);
    * no two nodes of a round run on one host; a round has at most ``max_nodes`` members;
    * each node's rounds only increase (within one incarnation of the server's record);
    * no node returns 0 from ``num_nodes_waiting()`` :data:`NOTICE_S` after a round formed
      without it, later than the one it holds (same incarnation);
    * no call outlives its deadline (``next_rendezvous``: the join timeout; others: their
      retry budget), each plus :data:`DEADLINE_SLACK_S`;
    * every error is a documented one (``allowed_errors``: default all of
      :data:`DOCUMENTED_ERRORS`).
    """
    allowed = DOCUMENTED_ERRORS if allowed_errors is None else allowed_errors
    rounds = group_rounds(records)
    for round_id, got in rounds.items():
        sizes = {r["world_size"] for r in got}
        masters = {r["master"] for r in got}
        ranks = [r["rank"] for r in got]
        hosts = [r["host"] for r in got]
        assert len(sizes) == 1, f"round {round_id}: members disagree on the world size {sizes}\n{dump}"
        assert len(masters) == 1, f"round {round_id}: members disagree on the bootstrap address {masters}\n{dump}"
        world = sizes.pop()
        assert 1 <= world <= max_nodes, f"round {round_id}: world size {world}\n{dump}"
        assert len(set(hosts)) == len(hosts), f"round {round_id}: a node reported it twice {hosts}\n{dump}"
        assert len(set(ranks)) == len(ranks) and all(0 <= r < world for r in ranks), (
            f"round {round_id}: ranks {ranks} are not distinct in 0..{world - 1}\n{dump}"
        )
    for host in sorted({r["host"] for r in records}):
        mine = [r for r in records if r["host"] == host and r["ev"] == "round"]
        for before, after in zip(mine, mine[1:], strict=False):
            if _incarnation(before) == _incarnation(after):
                assert after["number"] > before["number"], (
                    f"{host}: round {after['round']} after {before['round']}: rounds went back\n{dump}"
                )
    formed = [(min(r["t1"] for r in got), got) for got in rounds.values()]
    for record in records:
        if record["ev"] != "waiting" or record["n"] != 0:
            continue
        held = next((got for got in rounds.values() if got[0]["round"] == record["round"]), None)
        if held is None:
            continue
        for at, got in formed:
            newer = (
                _incarnation(got[0]) == _incarnation(held[0])
                and got[0]["number"] > held[0]["number"]
                and record["host"] not in {r["host"] for r in got}
            )
            assert not (newer and record["t0"] > at + NOTICE_S), (
                f"{record['host']} holds {record['round']} and its num_nodes_waiting() returned 0 at "
                f"{record['t0']:.2f}, {record['t0'] - at:.2f} s after round {got[0]['round']} formed without it\n{dump}"
            )
    for record in records:
        if "t1" not in record:
            continue  # a "joining" mark
        took = record["t1"] - record["t0"]
        bound = JOIN_TIMEOUT_S + DEADLINE_SLACK_S if record["call"] == "next_rendezvous" else WAITING_BOUND_S
        assert took <= bound, f"{record['host']}: {record['call']} took {took:.2f} s (bound {bound} s)\n{dump}"
        if record["ev"] == "error":
            assert record["type"] in allowed, f"{record['host']}: undocumented error {record}\n{dump}"


def _incarnation(record: dict[str, Any]) -> str:
    """The incarnation part of a round's store prefix (``rdzv.RUN.ROUND[.INCARNATION]``)."""
    parts = record["round"].split(".")
    return parts[3] if len(parts) > 3 else ""
