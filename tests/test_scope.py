"""samekey.operation(name): a block names the request
an SDK builds, and its key replaces the SDK's."""

from __future__ import annotations

import asyncio
import pickle
import re
from pathlib import Path

import httpx
import pytest

import samekey
from samekey.testing import Fault, FaultPlan, PaymentServer

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def sdk_post(client: httpx.Client, url: str, amount: int = 1200) -> httpx.Response:
    """What an SDK does: its own per-call key in the header, no operation name."""
    return client.post(
        url, json={"amount": amount}, headers={"Idempotency-Key": "stainless-python-retry-abc"}
    )


def test_the_block_names_the_request_and_its_journaled_key_replaces_the_sdks(
    journal_path: Path,
) -> None:
    faults = FaultPlan(
        [Fault("drop_after")]
    )  # charged, answer lost: the retry must carry the same key
    with PaymentServer(faults=faults) as server, samekey.set_testing(True):
        with httpx.Client(transport=samekey.SameKeyTransport(journal=journal_path)) as client:
            with samekey.operation("order-7/charge"):
                first = sdk_post(client, server.url + "/charges")
            with samekey.operation("order-7/charge"):  # a re-run: answered from the journal
                again = sdk_post(client, server.url + "/charges")
        keys, charges = server.keys_seen(), server.charge_count()
    assert first.status_code == 201 and again.json() == first.json()
    assert charges == 1
    assert len(keys) == 2 and keys[0] == keys[1] and UUID4.fullmatch(keys[0])
    info = samekey.operation_info(again)
    assert (
        info is not None
        and info.operation == "order-7/charge"
        and info.replayed
        and info.key == keys[0]
    )


def test_a_second_different_request_in_one_block_is_refused_before_it_is_sent(
    server: PaymentServer,
) -> None:
    with samekey.Client(journal=server.db_path + ".journal") as client:
        with samekey.operation("order-8/charge"):
            sdk_post(client, server.url + "/charges")
            sdk_post(
                client, server.url + "/charges"
            )  # the same request again: same operation, a replay
            with pytest.raises(
                samekey.OperationMismatch, match=r"names one request.*another body.*one block per"
            ):
                sdk_post(client, server.url + "/charges", amount=999)
    assert server.charge_count() == 1 and len(server.requests()) == 1


def test_reads_pass_through_explicit_operation_wins_and_the_inner_block_wins(
    server: PaymentServer,
) -> None:
    with samekey.Client(journal=server.db_path + ".journal") as client:
        with samekey.operation("outer"):
            read = samekey.operation_info(client.get(server.url + "/charges"))
            assert (
                read is not None and read.operation is None and read.key is None
            )  # a read: not keyed
            with samekey.operation("inner"):
                inner = client.post(server.url + "/charges", json={"amount": 1})
            explicit = client.post(server.url + "/charges", json={"amount": 2}, operation="named")
            outer = client.post(server.url + "/charges", json={"amount": 3})
        unscoped = client.post(server.url + "/charges", json={"amount": 4})
    names = [samekey.operation_info(r).operation for r in (inner, explicit, outer, unscoped)]  # type: ignore[union-attr]
    assert names[:3] == ["inner", "named", "outer"] and names[3].startswith("auto:")


def test_the_block_follows_asyncio_tasks(journal_path: Path, server: PaymentServer) -> None:
    async def main() -> list[str | None]:
        async with samekey.AsyncClient(journal=journal_path) as client:

            async def pay(order: int) -> str | None:
                with samekey.operation(f"order-{order}/charge"):
                    task = asyncio.create_task(
                        client.post(server.url + "/charges", json={"order": order})
                    )
                    response = await task  # the task copied the block's context
                info = samekey.operation_info(response)
                return info.operation if info else None

            return list(await asyncio.gather(*(pay(n) for n in range(3))))

    assert asyncio.run(main()) == ["order-0/charge", "order-1/charge", "order-2/charge"]


def test_a_bad_name_is_refused_at_the_block() -> None:
    with pytest.raises(ValueError, match="operation's name"), samekey.operation(""):
        pass


def test_the_blocks_mismatch_error_survives_a_pickle(server: PaymentServer) -> None:
    with (
        samekey.Client(journal=server.db_path + ".journal") as client,
        samekey.operation("order-9/charge"),
    ):
        sdk_post(client, server.url + "/charges")
        with pytest.raises(samekey.OperationMismatch) as caught:
            client.put(server.url + "/charges", json={"amount": 1})
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is samekey.OperationMismatch and copy.operation == "order-9/charge"
    assert (
        str(copy) == str(caught.value)
        and "already sent POST" in str(copy)
        and "now sends PUT" in str(copy)
    )
