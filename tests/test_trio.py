"""AsyncClient under trio: journal calls on anyio worker threads, cancellation by cancel scopes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import samekey
from samekey.testing import PaymentServer

trio = pytest.importorskip("trio")


def test_under_trio_one_charge_per_operation_and_replays(
    journal_path: Path, tmp_path: Path
) -> None:
    async def story(url: str) -> list[samekey.OperationInfo | None]:
        async with samekey.AsyncClient(journal=journal_path, base_url=url) as client:
            first = await client.post("/charges", json={"amount": 5}, operation="order-1/charge")
            again = await client.post("/charges", json={"amount": 5}, operation="order-1/charge")

            async def pay(i: int) -> None:
                await client.post("/charges", json={"amount": i}, operation=f"order-{i}/charge")

            async with trio.open_nursery() as nursery:
                for i in range(2, 32):
                    nursery.start_soon(pay, i)
            return [samekey.operation_info(first), samekey.operation_info(again)]

    with PaymentServer(tmp_path / "server.sqlite3") as server:
        first, again = trio.run(story, server.url)
        assert server.charge_count() == 31
    assert first is not None and not first.replayed
    assert again is not None and again.replayed and again.key == first.key


def test_under_trio_a_cancel_scope_frees_the_lease(journal_path: Path, tmp_path: Path) -> None:
    async def story(url: str) -> tuple[samekey.OperationRecord | None, float]:
        async with samekey.AsyncClient(
            journal=journal_path, base_url=url, on_busy="raise"
        ) as client:
            with trio.move_on_after(0.2):  # the answer takes 0.6 s
                await client.post("/charges", json={"amount": 7}, operation="slow")
            interrupted = client.journal.get("slow")
            started = time.monotonic()
            # the retry meets the server's 409 (the
            # first still running) and backs off until the replay
            await client.post("/charges", json={"amount": 7}, operation="slow")
            return interrupted, time.monotonic() - started

    with PaymentServer(tmp_path / "server.sqlite3", work_seconds=0.6) as server:
        interrupted, waited = trio.run(story, server.url)
        keys = server.keys_seen()
        assert server.charge_count() == 1
    assert interrupted is not None and interrupted.pending and interrupted.lease_owner is None
    assert set(keys) == {interrupted.key}, "the retry used the same key"
    assert waited < 10
