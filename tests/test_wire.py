"""Between the journal and the wire (_wire.py): a replayed answer as the server sent it, and a
redirect handed to httpx (a 303 followed without the key, a 307/308 with it).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx

import samekey
from client_helpers import URL, make_client, sent_keys


@respx.mock
def test_completed_operation_is_replayed_without_a_network_call(journal_path: Path) -> None:
    route = respx.post(URL).mock(
        return_value=httpx.Response(201, json={"id": "ch_1"}, headers={"X-Req": "1"})
    )
    with make_client(journal_path) as client:
        first = client.post(URL, json={"amount": 5}, operation="op")
    with make_client(journal_path) as client:  # a new run of the program
        again = client.post(URL, json={"amount": 5}, operation="op")
    assert route.call_count == 1
    assert (
        again.status_code == 201
        and again.json() == {"id": "ch_1"}
        and again.headers["X-Req"] == "1"
    )
    info = samekey.operation_info(again)
    assert info is not None and info.replayed and info.key == sent_keys(route)[0]
    assert samekey.operation_info(first) is not None and not samekey.operation_info(first).replayed  # type: ignore[union-attr]


@respx.mock
def test_gzip_body_replays_decoded(journal_path: Path) -> None:
    import gzip

    body = gzip.compress(b'{"ok": true}')
    respx.post(URL).mock(
        return_value=httpx.Response(200, content=body, headers={"Content-Encoding": "gzip"})
    )
    with make_client(journal_path) as client:
        assert client.post(URL, operation="gz").json() == {"ok": True}
        assert client.post(URL, operation="gz").json() == {"ok": True}


@respx.mock
def test_a_followed_redirect_is_not_mistaken_for_the_operation(journal_path: Path) -> None:
    respx.post(URL).mock(
        return_value=httpx.Response(303, headers={"Location": "https://pay.example/charges/ch_1"})
    )
    created = respx.get("https://pay.example/charges/ch_1").mock(
        return_value=httpx.Response(200, json={"id": "ch_1"})
    )
    with make_client(journal_path, follow_redirects=True) as client:
        for _ in range(2):  # the second run replays the 303 and follows it again
            response = client.post(URL, json={"amount": 1}, operation="op")
            assert response.status_code == 200 and response.json() == {"id": "ch_1"}
        record = client.journal.get("op")
    assert record is not None and record.response_status == 303
    assert created.call_count == 2 and "Idempotency-Key" not in created.calls[0].request.headers


@pytest.mark.parametrize("status", [307, 308])
def test_a_re_run_that_replays_a_307_follows_it_with_the_same_key(
    journal_path: Path, status: int
) -> None:
    # A 307/308 re-sends the POST, body and key, to the new location. On a re-run the
    # redirect is replayed from the journal and httpx follows it again: without the
    # operation's key the follow-up would be a new payment.
    charged: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/charges":
            return httpx.Response(status, headers={"Location": "https://pay.example/v2/charges"})
        key = request.headers.get("Idempotency-Key")
        if key not in charged:
            charged.append(key)
        return httpx.Response(201, json={"charge": charged.index(key)})

    for _ in range(2):
        with make_client(
            journal_path, transport=httpx.MockTransport(server), follow_redirects=True
        ) as client:
            response = client.post(URL, json={"amount": 100}, operation="order-1/charge")
            assert response.status_code == 201 and response.json() == {"charge": 0}
            record = client.journal.get("order-1/charge")
    assert record is not None and record.response_status == status
    assert charged == [record.key], (
        "one key, one charge: the re-run followed the redirect with the same key"
    )
