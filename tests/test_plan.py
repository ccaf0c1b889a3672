"""What a request is as an operation (_plan.py): which requests are keyed, under what name and key;
the fingerprint that tells a re-run from a mismatch; a multipart re-run sends its first bytes.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

import samekey
from client_helpers import URL, make_client, sent_keys
from samekey import _plan


@respx.mock
def test_one_uuid4_key_per_operation_identical_on_every_attempt(
    journal_path: Path, no_sleep: None
) -> None:
    route = respx.post(URL).mock(
        side_effect=[
            httpx.Response(503),
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("slow"),
            httpx.Response(201),
        ]
    )
    with make_client(journal_path) as client:
        response = client.post(URL, json={"amount": 100}, operation="order-1/charge")
    assert response.status_code == 201
    keys = sent_keys(route)
    assert len(keys) == 4 and len(set(keys)) == 1
    key = keys[0]
    assert key is not None and uuid.UUID(key).version == 4 and key == str(uuid.UUID(key))
    info = samekey.operation_info(response)
    assert info == samekey.OperationInfo("order-1/charge", key, 4, replayed=False)


@respx.mock
def test_two_operations_get_two_keys(journal_path: Path) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(201))
    with make_client(journal_path) as client:
        client.post(URL, json={"n": 1}, operation="a")
        client.post(URL, json={"n": 1}, operation="b")
        client.post(URL, json={"n": 1})  # no operation: still keyed, new key
    assert len(set(sent_keys(route))) == 3


@respx.mock
def test_same_operation_different_body_is_a_mismatch_and_nothing_is_sent(
    journal_path: Path,
) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(201))
    with make_client(journal_path) as client:
        client.post(URL, json={"amount": 100}, operation="op")
        with pytest.raises(
            samekey.OperationMismatch,
            match=r"different body.*new operation name.*samekey forget op",
        ):
            client.post(URL, json={"amount": 200}, operation="op")
        with pytest.raises(samekey.OperationMismatch, match=r"was POST .*, now PUT"):
            client.put(URL, json={"amount": 100}, operation="op")
    assert route.call_count == 1


@respx.mock
def test_mismatch_on_a_pending_operation_keeps_it_resumable(
    journal_path: Path, no_sleep: None
) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(503))
    policy = samekey.RetryPolicy(max_attempts=2)
    with make_client(journal_path, policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, json={"amount": 1}, operation="op")
        # "give it a new operation name" alone would pay twice if the server acted on the first
        with pytest.raises(
            samekey.OperationMismatch, match=r"still pending.*may have acted.*samekey resume op"
        ):
            client.post(URL, json={"amount": 2}, operation="op")
        route.mock(return_value=httpx.Response(201))
        assert (
            client.post(URL, json={"amount": 1}, operation="op").status_code == 201
        )  # not blocked by a lease
    assert len(set(sent_keys(route))) == 1


@respx.mock
def test_caller_supplied_key_is_respected_and_journaled(journal_path: Path) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(500), httpx.Response(201)])
    with samekey.set_testing(True), make_client(journal_path) as client:
        client.post(URL, json={}, headers={"Idempotency-Key": "my-key-1"}, operation="op")
        record = client.journal.get("op")
    assert sent_keys(route) == ["my-key-1", "my-key-1"]
    assert record is not None and record.key == "my-key-1"


@respx.mock
def test_caller_key_without_operation_is_remembered_by_key(journal_path: Path) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(201, json={"id": 1}))
    with make_client(journal_path) as client:
        client.post(URL, json={}, headers={"Idempotency-Key": "k-77"})
        again = client.post(URL, json={}, headers={"Idempotency-Key": "k-77"})
    assert route.call_count == 1 and samekey.operation_info(again).replayed  # type: ignore[union-attr]


@respx.mock
def test_pending_key_is_never_replaced_by_a_different_caller_key(
    journal_path: Path, no_sleep: None
) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(503))
    with make_client(journal_path, policy=samekey.RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, json={}, operation="op")
        with pytest.raises(samekey.OperationMismatch, match="its key is"):
            client.post(URL, json={}, headers={"Idempotency-Key": "other"}, operation="op")
    assert route.call_count == 1


@respx.mock
def test_structured_field_key_format_and_custom_header(journal_path: Path) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(201))
    with make_client(journal_path, key_format="structured", key_header="X-Idem") as client:
        client.post(URL, json={}, operation="op")
    (key,) = sent_keys(route, "X-Idem")
    assert (
        key is not None
        and key.startswith('"')
        and key.endswith('"')
        and uuid.UUID(key.strip('"')).version == 4
    )
    assert "Idempotency-Key" not in route.calls[0].request.headers


@respx.mock
def test_reads_and_idempotent_methods_are_retried_without_a_key(
    journal_path: Path, no_sleep: None
) -> None:
    get = respx.get(URL).mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    put = respx.put(URL).mock(side_effect=[httpx.ConnectError("x"), httpx.Response(200)])
    with make_client(journal_path) as client:
        assert client.get(URL).status_code == 200
        assert client.put(URL, json={}).status_code == 200
        assert client.journal.records() == []
    assert sent_keys(get) == [None, None] and sent_keys(put) == [None, None]


@respx.mock
def test_a_method_that_is_not_idempotent_is_keyed_without_operation(
    journal_path: Path, no_sleep: None
) -> None:
    route = respx.route(method="LOCK", url=URL).mock(
        side_effect=[httpx.Response(503), httpx.Response(200)]
    )
    with make_client(journal_path) as client:
        assert client.request("LOCK", URL, content=b"<lockinfo/>").status_code == 200
        (record,) = client.journal.records()
    keys = sent_keys(route)
    assert (
        record.operation.startswith("auto:")
        and keys[0] is not None
        and keys == [record.key, record.key]
    )


@respx.mock
def test_any_method_with_operation_is_keyed(journal_path: Path) -> None:
    route = respx.delete(URL).mock(return_value=httpx.Response(204))
    with make_client(journal_path) as client:
        client.delete(URL, operation="cancel-9")
    assert sent_keys(route)[0] is not None


def test_an_operation_journaled_by_an_older_samekey_keeps_its_identity(journal_path: Path) -> None:
    # The stored URL and the fingerprint are an operation's identity: the rule that hides query
    # values may not change under a pending record, or its re-run is a mismatch and its key lost.
    # (Computed by samekey at commit 2308322.)
    url = "https://pay.example/charges?payment_token=tok_a&key=invoices/41.pdf&authorization=Bearer%20x&author=Tolstoy&amount=5"
    with make_client(journal_path) as client:
        request = client.build_request(
            "POST", url, json={"a": 1}, extensions={samekey.OPERATION_EXTENSION: "op"}
        )
        request.read()
        plan = client.engine.plan(request)
    assert plan is not None
    assert plan.intent.url == (
        "https://pay.example/charges?payment_token=REDACTED&key=invoices%2F41.pdf&authorization=REDACTED"
        "&author=REDACTED&amount=5"
    )
    assert (
        plan.intent.fingerprint
        == "75e32fe30f387038ad9d8a63575cb76ac4deb066c69ee18788efc672f77c28e3"
    )


@pytest.mark.parametrize("name", ["  ", "x" * 513, "order\udc80", "order\x00-1"])
def test_bad_operation_name_is_refused(journal_path: Path, name: str) -> None:
    with (
        make_client(journal_path) as client,
        pytest.raises(ValueError, match="operation must be a non-empty string"),
    ):
        client.post(URL, json={}, operation=name)


def test_a_multipart_upload_built_again_is_the_same_operation(journal_path: Path) -> None:
    # httpx draws a new multipart boundary for every request it builds
    sent: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503 if len(sent) == 1 else 201)

    policy = samekey.RetryPolicy(max_attempts=1)
    upload = {"file": ("passport.pdf", b"%PDF-1.7 scan", "application/pdf")}
    with make_client(journal_path, transport=httpx.MockTransport(server), policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, files=upload, data={"booking": "b-42"}, operation="booking-42/upload")
        again = client.post(
            URL, files=upload, data={"booking": "b-42"}, operation="booking-42/upload"
        )
        with pytest.raises(samekey.OperationMismatch):  # another file is another request
            other = {"file": ("passport.pdf", b"%PDF-1.7 other", "application/pdf")}
            client.post(URL, files=other, data={"booking": "b-42"}, operation="booking-42/upload")
    assert again.status_code == 201
    # the re-run built a new boundary, but sends the first attempt's bytes: a server comparing raw
    # bodies under the key sees the same payload, not another one (422)
    assert sent[1].content == sent[0].content
    assert sent[1].headers["content-type"] == sent[0].headers["content-type"]
    assert sent[1].headers["content-length"] == str(len(sent[0].content))
    assert sent[0].headers["Idempotency-Key"] == sent[1].headers["Idempotency-Key"]
    assert len(sent) == 2, "the other file was refused before sending"


class _Unsized:
    """A file-like object of unknown length (no fileno, no seek): httpx sends its upload chunked."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        data, self.data = self.data, b""
        return data


def test_a_re_run_of_a_chunked_upload_never_sends_both_content_length_and_transfer_encoding(
    journal_path: Path,
) -> None:
    # RFC 9112 6.1: a sender MUST NOT send Content-Length with Transfer-Encoding; a server or proxy
    # may answer 400 (request smuggling defence), which would be recorded as the operation's answer
    sent: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        request.read()
        sent.append(request)
        return httpx.Response(503 if len(sent) == 1 else 201)

    policy = samekey.RetryPolicy(max_attempts=1)
    with make_client(journal_path, transport=httpx.MockTransport(server), policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(
                URL,
                files={"file": ("a.pdf", _Unsized(b"%PDF-1.7 scan"))},
                operation="booking-42/upload",
            )
        again = client.post(
            URL,
            files={"file": ("a.pdf", _Unsized(b"%PDF-1.7 scan"))},
            operation="booking-42/upload",
        )
    assert again.status_code == 201
    assert (
        sent[0].headers.get("transfer-encoding") == "chunked"
        and "content-length" not in sent[0].headers
    )
    assert sent[1].content == sent[0].content
    assert not ("content-length" in sent[1].headers and "transfer-encoding" in sent[1].headers), (
        sent[1].headers
    )


def test_an_async_re_run_of_a_multipart_upload_sends_the_first_bytes(journal_path: Path) -> None:
    sent: list[bytes] = []

    async def server(request: httpx.Request) -> httpx.Response:
        sent.append(await request.aread())
        return httpx.Response(503 if len(sent) == 1 else 201)

    async def story() -> int:
        upload = {"file": ("passport.pdf", b"%PDF-1.7 scan", "application/pdf")}
        policy = samekey.RetryPolicy(max_attempts=1)
        async with samekey.AsyncClient(
            journal=journal_path, transport=httpx.MockTransport(server), policy=policy
        ) as c:
            with pytest.raises(samekey.RetriesExhausted):
                await c.post(URL, files=upload, operation="booking-42/upload")
            return (await c.post(URL, files=upload, operation="booking-42/upload")).status_code

    assert asyncio.run(story()) == 201
    assert sent[0] == sent[1]


class _BodySignature(httpx.Auth):
    """An API that signs each request's body (HMAC, as SigV4 or a webhook-style scheme does)."""

    requires_request_body = True

    def auth_flow(self, request: httpx.Request) -> Any:
        import hashlib
        import hmac

        request.headers["X-Signature"] = hmac.new(
            b"secret", request.content, hashlib.sha256
        ).hexdigest()
        yield request


def _signature_checking_server(bodies: list[bytes]) -> httpx.MockTransport:
    import hashlib
    import hmac

    def server(request: httpx.Request) -> httpx.Response:
        body = request.read()
        expected = hmac.new(b"secret", body, hashlib.sha256).hexdigest()
        if request.headers.get("X-Signature") != expected:
            return httpx.Response(403, json={"error": "bad signature"})
        bodies.append(body)
        return httpx.Response(503 if len(bodies) == 1 else 201)

    return httpx.MockTransport(server)


def test_a_re_run_upload_is_signed_over_the_bytes_it_sends(journal_path: Path) -> None:
    # the first attempt's bytes are put back BEFORE auth runs: a body signature covers them
    bodies: list[bytes] = []
    upload = {"file": ("passport.pdf", b"%PDF-1.7 scan", "application/pdf")}
    policy = samekey.RetryPolicy(max_attempts=1)
    with make_client(
        journal_path,
        transport=_signature_checking_server(bodies),
        policy=policy,
        auth=_BodySignature(),
    ) as c:
        with pytest.raises(samekey.RetriesExhausted):
            c.post(URL, files=upload, operation="booking-42/upload")
        again = c.post(URL, files=upload, operation="booking-42/upload")
    assert again.status_code == 201, again.text
    assert bodies[0] == bodies[1]


def test_an_async_re_run_upload_is_signed_over_the_bytes_it_sends(journal_path: Path) -> None:
    bodies: list[bytes] = []

    async def story() -> int:
        upload = {"file": ("passport.pdf", b"%PDF-1.7 scan", "application/pdf")}
        async with samekey.AsyncClient(
            journal=journal_path,
            transport=_signature_checking_server(bodies),
            policy=samekey.RetryPolicy(max_attempts=1),
            auth=_BodySignature(),
        ) as c:
            with pytest.raises(samekey.RetriesExhausted):
                await c.post(URL, files=upload, operation="booking-42/upload")
            return (await c.post(URL, files=upload, operation="booking-42/upload")).status_code

    assert asyncio.run(story()) == 201
    assert bodies[0] == bodies[1]


def test_only_a_multipart_body_is_taken_for_a_multipart_upload() -> None:
    # the check before auth (carry_first_bytes) runs on every send: most bodies skip the headers
    def request(**kwargs: Any) -> httpx.Request:
        extensions = {"samekey.operation": "booking-42/upload"}
        return httpx.Request("POST", URL, extensions=extensions, **kwargs)

    built = b'--b1\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b1--\r\n'
    form = {"Content-Type": "multipart/form-data; boundary=b1"}
    op = "booking-42/upload"
    assert _plan.multipart_operation(request(json={"amount": 1})) is None
    assert _plan.multipart_operation(request(files={"f": ("a.pdf", b"%PDF")})) == op
    assert _plan.multipart_operation(request(content=built, headers=form)) == op
    assert _plan.multipart_operation(request(content=b"--not a form")) is None
    assert _plan.multipart_operation(httpx.Request("POST", URL, files={"f": b"x"})) is None


def test_every_key_is_a_distinct_uuid4_across_pool_refills() -> None:
    keys = [_plan.uuid4() for _ in range(3 * _plan.KEY_POOL + 1)]
    assert len(set(keys)) == len(keys)
    for key in keys:
        parsed = uuid.UUID(key)
        assert str(parsed) == key and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_never_hands_out_its_parents_pooled_keys() -> None:
    _plan.uuid4()  # the pool is full: the child must not reuse what the parent will send
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(writer, ",".join(_plan.uuid4() for _ in range(_plan.KEY_POOL)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {_plan.uuid4() for _ in range(_plan.KEY_POOL)}
    assert len(child) == _plan.KEY_POOL and not child & parent
