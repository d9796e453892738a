"""The network lab's invariant checks fail on broken runs (they are pure functions of the
nodes' records, so a broken run is easy to write down)."""

from __future__ import annotations

import pytest

from tests.netlab.invariants import JOIN_TIMEOUT_S, check_records

pytestmark = pytest.mark.unit

INC = "abc"


def _round(host: str, number: int, rank: int, world: int, t1: float, master: str = "10.0.0.10:1", inc: str = INC):
    return {
        "ev": "round", "call": "next_rendezvous", "host": host, "t0": t1 - 0.1, "t1": t1,
        "round": f"rdzv.run.{number}.{inc}", "number": number, "rank": rank, "world_size": world, "master": master,
    }  # fmt: skip


def _waiting(host: str, number: int, n: int, t0: float, inc: str = INC):
    return {
        "ev": "waiting", "call": "num_nodes_waiting", "host": host, "t0": t0, "t1": t0 + 0.01, "n": n,
        "round": f"rdzv.run.{number}.{inc}",
    }  # fmt: skip


def _good() -> list[dict]:
    return [_round(h, 0, r, 3, 1.0) for r, h in enumerate(["n0", "n1", "n2"])] + [_waiting("n0", 0, 0, 1.5)]


def test_a_good_run_passes():
    check_records(_good(), max_nodes=4, allowed_errors=set())


@pytest.mark.parametrize(
    "broken, message",
    [
        (lambda rs: rs[1].update(world_size=2), "world size"),
        (lambda rs: rs[1].update(master="10.0.0.11:2"), "bootstrap address"),
        (lambda rs: rs[1].update(rank=0), "not distinct"),
        (lambda rs: rs[2].update(rank=3), "not distinct"),
        (lambda rs: rs.append(_round("n0", 0, 3, 3, 1.2)), "twice"),
    ],
)
def test_a_round_members_disagree_on(broken, message):
    records = _good()
    broken(records)
    with pytest.raises(AssertionError, match=message):
        check_records(records, max_nodes=4)


def test_more_members_than_max_nodes():
    records = [_round(h, 0, r, 3, 1.0) for r, h in enumerate(["n0", "n1", "n2"])]
    with pytest.raises(AssertionError, match="world size 3"):
        check_records(records, max_nodes=2)


def test_rounds_going_back():
    records = _good() + [_round("n0", 2, 0, 1, 2.0), _round("n0", 1, 0, 1, 3.0)]
    with pytest.raises(AssertionError, match="rounds went back"):
        check_records(records, max_nodes=4)
    # A new incarnation (the server lost its data) starts again from round 0.
    check_records(_good() + [_round("n0", 2, 0, 1, 2.0), _round("n0", 0, 0, 1, 3.0, inc="new")], max_nodes=4)


def test_a_stranded_node_answers_zero_after_a_round_formed_without_it():
    records = _good() + [_round("n0", 1, 0, 2, 5.0), _round("n1", 1, 1, 2, 5.0)]
    check_records(records + [_waiting("n2", 0, 0, 5.5)], max_nodes=4)  # within the notice time
    with pytest.raises(AssertionError, match="formed without it"):
        check_records(records + [_waiting("n2", 0, 0, 8.0)], max_nodes=4)
    check_records(records + [_waiting("n2", 0, 1, 8.0)], max_nodes=4)


def test_a_call_outliving_its_deadline():
    records = _good()
    records[0]["t0"] = records[0]["t1"] - JOIN_TIMEOUT_S - 10
    with pytest.raises(AssertionError, match="took"):
        check_records(records, max_nodes=4)


def test_undocumented_errors():
    error = {"ev": "error", "call": "num_nodes_waiting", "host": "n0", "t0": 2.0, "t1": 2.1, "message": "boom"}
    check_records(_good() + [{**error, "type": "rdzv_core.api.RendezvousConnectionError"}], max_nodes=4)
    with pytest.raises(AssertionError, match="undocumented error"):
        check_records(_good() + [{**error, "type": "builtins.KeyError"}], max_nodes=4)
    with pytest.raises(AssertionError, match="undocumented error"):
        check_records(_good() + [{**error, "type": "rdzv_core.api.RendezvousConnectionError"}], 4, allowed_errors=set())
