"""The soak proof, in the normal suite: 300 charges, 30% network faults, workers SIGKILLed.

Worker processes run samekey.Client on one shared journal, through a FaultProxy
in front of the PaymentServer; the test SIGKILLs them at seeded random moments and
restarts them on the same journal until every operation is done. The invariants
are read from the server's SQLite file. The long form is scripts/soak.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import samekey
from samekey.testing import PaymentServer
from samekey.testing._soak import SoakReport, payload, run_soak, verify

N = 300


@pytest.mark.timeout(110)
def test_soak_exactly_once_under_faults_and_sigkill(tmp_path: Path) -> None:
    report = run_soak(
        N,
        fault_rate=0.3,
        workers=3,
        seed=2026,
        kills=12,
        kill_interval=(0.05, 0.3),
        time_limit=100,
        folder=tmp_path,
    )
    print("\n".join(report.lines()))
    assert report.problems == []
    assert report.charges == N
    assert report.duplicate_charges == 0 and report.lost_charges == 0
    assert report.distinct_keys == N and report.operations_with_several_keys == 0
    # the run was not vacuous: faults of every kind
    # at about the asked rate, real kills mid-operation
    assert set(report.faults) == {"drop_after", "reset_before", "slow", "status_429", "status_503"}
    assert 0.2 < report.faults_injected / report.requests < 0.4
    assert report.kills >= 10 and report.kills_mid_operation >= 1  # (12 unless the run ends first)
    assert (
        report.server_replays >= report.faults["drop_after"]
    )  # each lost answer was replayed, not re-charged


def test_verify_catches_double_and_missing_charges(tmp_path: Path) -> None:
    # the checker must be able to fail: order 0 charged twice under two keys, order 1 never
    server_db, journal = tmp_path / "server.sqlite3", tmp_path / "journal.sqlite3"
    with PaymentServer(server_db) as server, httpx.Client(base_url=server.url) as client:
        for key in ("first-try", "naive-retry"):
            client.post("/charges", json=payload(0), headers={"Idempotency-Key": key})
    samekey.Journal(journal).close()  # an empty journal: no operation was ever completed
    report = verify(SoakReport(n=2, workers=1, fault_rate=0.0, seed=0), server_db, journal)
    assert report.duplicate_charges == 1 and report.lost_charges == 1
    assert not report.ok
    text = "; ".join(report.problems)
    assert "1 duplicate charges" in text and "1 operations never charged" in text
    assert "2 operations not completed in the journal" in text
