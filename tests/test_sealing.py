"""Card data kept out of the journal: redact_body= and
body_key= (samekey._bodies, _sealing, _sealed_store)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import samekey
from samekey._bodies import body_redactor
from samekey._sealing import KEY_ENV
from test_cli import run

KEY = "k" * 43  # what secrets.token_urlsafe(32) makes: 43 characters
CARD = {"amount": 1000, "card": {"number": "4242424242424242", "cvc": "737", "exp": "12/30"}}
PAN = b"4242424242424242"


@pytest.fixture(autouse=True)
def _no_waiting_no_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with samekey.set_testing(True):
        yield


def _journal_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


def _client(path: Path, handler: object, **options: object) -> samekey.Client:
    options.setdefault("body_key", KEY)
    options.setdefault("redact_body", ("card.number", "card.cvc"))
    return samekey.Client(journal=path, transport=httpx.MockTransport(handler), **options)  # type: ignore[arg-type]


def _pending(path: Path, body: object = CARD, **options: object) -> None:
    with _client(
        path, lambda r: httpx.Response(503), policy=samekey.RetryPolicy(max_attempts=1), **options
    ) as c:
        with pytest.raises(samekey.RetriesExhausted):
            c.post("https://pay.test/charges", operation="order-1/charge", json=body)


def test_card_data_never_reaches_the_journal_file_nor_show(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(201, json={"id": "ch_1", "card": {"number": "4242424242424242"}})

    _pending(journal_path)
    assert PAN not in _journal_bytes(journal_path) and b'"737"' not in _journal_bytes(journal_path)
    with _client(journal_path, handler) as client:  # the re-run sends the real body, same key
        response = client.post("https://pay.test/charges", operation="order-1/charge", json=CARD)
        replayed = client.post("https://pay.test/charges", operation="order-1/charge", json=CARD)
    assert PAN in sent[0] and len(sent) == 1
    assert (
        response.json()["card"]["number"] == "4242424242424242"
    )  # the caller gets the real answer
    assert replayed.json()["card"]["number"] == "REDACTED"  # the stored one never held it
    assert PAN not in _journal_bytes(journal_path)
    shown = run("show", "order-1/charge", "--journal", str(journal_path))
    assert "encrypted" in shown.out and PAN.decode() not in shown.out, shown.out
    monkeypatch.setenv(KEY_ENV, KEY)
    shown = run("show", "order-1/charge", "--journal", str(journal_path))
    assert '"number":"REDACTED"' in shown.out and '"exp":"12/30"' in shown.out, shown.out
    assert PAN.decode() not in shown.out and '"737"' not in shown.out


def test_another_card_number_under_the_same_operation_is_refused(journal_path: Path) -> None:
    _pending(journal_path)
    other = {**CARD, "card": {**CARD["card"], "number": "5555555555554444"}}  # type: ignore[dict-item]
    with _client(journal_path, lambda r: httpx.Response(201)) as client:
        with pytest.raises(samekey.OperationMismatch, match="different body"):
            client.post("https://pay.test/charges", operation="order-1/charge", json=other)
    with sqlite3.connect(journal_path) as db:
        (fingerprint,) = db.execute("SELECT fingerprint FROM operations").fetchone()
    assert fingerprint.startswith(
        "hmac:"
    )  # keyed: a plain SHA-256 of a card number can be enumerated


def test_resume_refuses_a_body_with_redacted_fields(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pending(journal_path)
    with _client(journal_path, lambda r: httpx.Response(201)) as client:
        with pytest.raises(
            samekey.SameKeyError, match=r"never stored.*Run the code that made it again"
        ):
            client.resume("order-1/charge")
    monkeypatch.setenv(KEY_ENV, KEY)
    result = run("resume", "order-1/charge", "--journal", str(journal_path))
    assert result.code != 0 and "Run the code that made it again" in result.out + result.err, result


def test_a_body_key_alone_seals_bodies_and_resume_sends_them_whole(journal_path: Path) -> None:
    _pending(journal_path, redact_body=None)
    assert PAN not in _journal_bytes(journal_path) and b"amount" not in _journal_bytes(journal_path)
    sent: list[bytes] = []
    with _client(
        journal_path, lambda r: sent.append(r.content) or httpx.Response(201), redact_body=None
    ) as client:
        assert client.resume("order-1/charge").status_code == 201
    assert PAN in sent[0]
    with samekey.Client(
        journal=journal_path
    ) as keyless:  # without the key: nothing is sent, it says why
        with pytest.raises(samekey.SameKeyError, match="with a body_key and this one has none"):
            keyless.post("https://pay.test/charges", operation="order-1/charge", json=CARD)


def test_another_key_does_not_open_a_body(journal_path: Path) -> None:
    _pending(journal_path, redact_body=None)
    with _client(
        journal_path, lambda r: httpx.Response(201), redact_body=None, body_key="x" * 32
    ) as client:
        with pytest.raises(samekey.SameKeyError, match="does not open with this body_key"):
            client.resume("order-1/charge")


def test_redact_body_without_a_key_names_the_fix() -> None:
    with pytest.raises(
        ValueError, match=r"redact_body needs a body_key.*secrets.token_urlsafe\(32\)"
    ):
        samekey.Client(redact_body=("card.number",))
    with pytest.raises(ValueError, match="at least 32 characters"):
        samekey.Client(body_key="short")
    with pytest.raises(TypeError, match="note the comma"):
        samekey.Client(redact_body="card.number", body_key=KEY)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("paths", "content_type", "body", "stored"),
    [
        (("card.number",), "application/json", b'{"card": {"number": "4242"}}',
        b'{"card":{"number":"REDACTED"}}'),
        (("cards.*.cvc",), "application/json", b'{"cards": [{"cvc": "1"}, {"cvc": "2"}]}',
         b'{"cards":[{"cvc":"REDACTED"},{"cvc":"REDACTED"}]}'),
        (("card[number]",), "application/x-www-form-urlencoded", b"amount=1&card%5Bnumber%5D=4242",
         b"amount=1&card%5Bnumber%5D=REDACTED"),
        (("card.number",), "application/json", b'{"amount": 1}', b'{"amount": 1}'),
        (("card.number",), "application/octet-stream", b"4242", b"4242"),
    ],
)  # fmt: skip
def test_field_paths_mask_json_and_form_bodies(
    paths: tuple[str, ...], content_type: str, body: bytes, stored: bytes
) -> None:
    redactor = body_redactor(paths)
    assert redactor is not None
    assert redactor.redact(body, content_type) == (stored, stored != body)


def test_a_function_decides_what_is_stored() -> None:
    redactor = body_redactor(lambda body, content_type: body.replace(b"4242", b"****"))
    assert redactor is not None and redactor.redact(b"pan=4242", "text/plain") == (
        b"pan=****",
        True,
    )


def test_the_async_client_seals_through_its_batching_journal_thread(journal_path: Path) -> None:
    import asyncio

    async def main() -> httpx.Response:
        transport = httpx.MockTransport(lambda r: httpx.Response(201, json={"cvc": "737"}))
        async with samekey.AsyncClient(
            journal=journal_path, transport=transport, body_key=KEY, redact_body=("card.cvc", "cvc")
        ) as client:
            await client.post("https://pay.test/charges", operation="order-1/charge", json=CARD)
            return await client.post(
                "https://pay.test/charges", operation="order-1/charge", json=CARD
            )

    replayed = asyncio.run(main())
    assert replayed.json() == {"cvc": "REDACTED"} and samekey.operation_info(replayed).replayed  # type: ignore[union-attr]
    assert b'"737"' not in _journal_bytes(journal_path) and b"amount" not in _journal_bytes(
        journal_path
    )
