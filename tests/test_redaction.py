"""What never reaches the disk or a log (_redaction.py): secret headers and query values, credentials
in a URL or quoted by an error, a DSN's password.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import respx

import samekey
from client_helpers import URL, make_client, raising


def test_a_cause_quoting_a_credential_is_journaled_redacted(journal_path: Path) -> None:
    error = httpx.ReadError("")
    error.__cause__ = OSError("peer refused header b'Bearer sk_live_in_the_cause'")
    policy = samekey.RetryPolicy(retry_exceptions=())
    headers = {"Authorization": "Bearer sk_live_in_the_cause"}
    with make_client(journal_path, transport=raising(error), policy=policy, headers=headers) as client:
        with pytest.raises(httpx.ReadError):
            client.post(URL, json={"amount": 1}, operation="op")
        record = client.journal.get("op")
    assert record is not None and record.last_error == "ReadError (OSError: peer refused header b'REDACTED')"


def test_gave_up_on_an_error_quoting_a_credential_says_so_without_the_credential(
    journal_path: Path, no_sleep: None
) -> None:
    # services log RetriesExhausted: its message must not carry the token the journal keeps off disk
    quoting = [httpx.ReadError("peer refused header b'Bearer sk_live_quoted'") for _ in range(2)]
    policy = samekey.RetryPolicy(max_attempts=2)
    headers = {"Authorization": "Bearer sk_live_quoted"}
    with make_client(journal_path, transport=raising(*quoting), policy=policy, headers=headers) as client:
        with pytest.raises(samekey.RetriesExhausted) as exhausted:
            client.post(URL, json={"amount": 1}, operation="op")
    message = str(exhausted.value)
    assert "sk_live" not in message
    assert "last error ReadError: peer refused header b'REDACTED'" in message, message
    assert exhausted.value.last_exception is quoting[1]  # the original, for code that needs it


@respx.mock
def test_secrets_never_reach_the_journal_file(journal_path: Path) -> None:
    respx.post(URL).mock(return_value=httpx.Response(201, headers={"Set-Cookie": "session=cookie-secret-1"}))
    with make_client(journal_path, headers={"X-Api-Key": "apikey-secret-2"}, auth=("user", "basic-secret-3")) as client:
        client.post(
            URL,
            json={"amount": 1},
            operation="op",
            headers={"Authorization": "Bearer sk_live_secret4", "Cookie": "sid=cookie-secret-5"},
        )
        record = client.journal.get("op")
    assert record is not None
    blob = b"".join(p.read_bytes() for p in journal_path.parent.iterdir())
    for secret in (b"cookie-secret-1", b"apikey-secret-2", b"sk_live_secret4", b"cookie-secret-5"):
        assert secret not in blob
    import base64

    assert base64.b64encode(b"user:basic-secret-3") not in blob
    names = {name.lower() for name, _ in record.request_headers}
    assert "authorization" not in names and "content-type" in names


@respx.mock
def test_redact_headers_keeps_the_named_headers_and_query_values_off_the_disk(journal_path: Path) -> None:
    respx.post(url__startswith=URL).mock(return_value=httpx.Response(201, headers={"X-Merchant-Pin": "pin-echo-1"}))
    with make_client(journal_path, redact_headers=("X-Merchant-Pin", "merchant_pin")) as client:
        client.post(
            f"{URL}?merchant_pin=pin-query-2&amount=5",
            json={"amount": 5},
            operation="op",
            headers={"x-merchant-pin": "pin-header-3", "X-Tenant": "acme"},
        )
        record = client.journal.get("op")
    assert record is not None and record.url == f"{URL}?merchant_pin=REDACTED&amount=5"
    assert ("x-tenant", "acme") in record.request_headers
    blob = b"".join(p.read_bytes() for p in journal_path.parent.iterdir())
    for secret in (b"pin-echo-1", b"pin-query-2", b"pin-header-3"):
        assert secret not in blob


def test_credentials_in_the_url_never_reach_the_journal_file_or_the_logs(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="samekey")
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(503 if len(sent) == 1 else 201)

    policy = samekey.RetryPolicy(max_attempts=1)
    url = "https://acct:url-secret-1@pay.example/charges?api_key=sk_live_url2&amount=5"
    with make_client(journal_path, transport=httpx.MockTransport(server), policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(url, json={"amount": 5}, operation="op")
        record = client.journal.get("op")
        assert record is not None and record.url == "https://pay.example/charges?api_key=REDACTED&amount=5"
        with pytest.raises(samekey.SameKeyError, match=r"credentials in its URL \(api_key\).*Nothing was sent"):
            client.resume("op")
        # the code that made it runs again, with a rotated key: the same operation, the same key
        rotated = url.replace("sk_live_url2", "sk_live_url3")
        assert client.post(rotated, json={"amount": 5}, operation="op").status_code == 201
    assert sent == [url, rotated]
    blob = b"".join(p.read_bytes() for p in journal_path.parent.iterdir())
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "samekey")
    assert "attempt=1 POST https://pay.example/charges?api_key=REDACTED&amount=5" in logged
    for secret in (b"url-secret-1", b"sk_live_url2", b"sk_live_url3", b"acct:"):
        assert secret not in blob and secret.decode() not in logged


@respx.mock
def test_cloud_api_key_headers_never_reach_the_journal_but_the_echoed_key_does(journal_path: Path) -> None:
    echoed = {"Idempotency-Key": "echo", "X-Access-Key": "resp-secret-1"}
    respx.post(URL).mock(return_value=httpx.Response(201, headers=echoed))
    secrets = {
        "Ocp-Apim-Subscription-Key": "azure-apim-secret-2",  # Azure API Management
        "x-functions-key": "azure-fn-secret-3",  # Azure Functions
        "X-Client-Key": "client-secret-4",
        "Private-Key": "private-secret-5",
        "X-Credentials": "cred-secret-6",
    }
    with make_client(journal_path) as client:
        client.post(URL, json={"amount": 1}, operation="op", headers=secrets)
        replayed = client.post(URL, json={"amount": 1}, operation="op")
    blob = b"".join(p.read_bytes() for p in journal_path.parent.iterdir())
    for secret in ["resp-secret-1", *secrets.values()]:
        assert secret.encode() not in blob
    assert replayed.headers["Idempotency-Key"] == "echo"  # the server's echo of the key is no secret
