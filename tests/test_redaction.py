"""What never reaches the disk or a log (_redaction.py): secret headers and query values,
credentials in a URL or quoted by an error, a DSN's password.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import respx

import samekey
from client_helpers import URL, make_client, raising
from samekey.testing import PaymentServer

SRC = str(Path(samekey.__file__).resolve().parent.parent)


def test_a_cause_quoting_a_credential_is_journaled_redacted(journal_path: Path) -> None:
    error = httpx.ReadError("")
    error.__cause__ = OSError("peer refused header b'Bearer sk_live_in_the_cause'")
    policy = samekey.RetryPolicy(retry_exceptions=())
    headers = {"Authorization": "Bearer sk_live_in_the_cause"}
    with make_client(
        journal_path, transport=raising(error), policy=policy, headers=headers
    ) as client:
        with pytest.raises(httpx.ReadError):
            client.post(URL, json={"amount": 1}, operation="op")
        record = client.journal.get("op")
    assert (
        record is not None
        and record.last_error == "ReadError (OSError: peer refused header b'REDACTED')"
    )


def test_gave_up_on_an_error_quoting_a_credential_says_so_without_the_credential(
    journal_path: Path, no_sleep: None
) -> None:
    # services log RetriesExhausted: its message must not carry the token the journal keeps off disk
    quoting = [httpx.ReadError("peer refused header b'Bearer sk_live_quoted'") for _ in range(2)]
    policy = samekey.RetryPolicy(max_attempts=2)
    headers = {"Authorization": "Bearer sk_live_quoted"}
    with make_client(
        journal_path, transport=raising(*quoting), policy=policy, headers=headers
    ) as client:
        with pytest.raises(samekey.RetriesExhausted) as exhausted:
            client.post(URL, json={"amount": 1}, operation="op")
    message = str(exhausted.value)
    assert "sk_live" not in message
    assert "last error ReadError: peer refused header b'REDACTED'" in message, message
    assert exhausted.value.last_exception is quoting[1]  # the original, for code that needs it


@respx.mock
def test_secrets_never_reach_the_journal_file(journal_path: Path) -> None:
    respx.post(URL).mock(
        return_value=httpx.Response(201, headers={"Set-Cookie": "session=cookie-secret-1"})
    )
    with make_client(
        journal_path, headers={"X-Api-Key": "apikey-secret-2"}, auth=("user", "basic-secret-3")
    ) as client:
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
def test_redact_headers_keeps_the_named_headers_and_query_values_off_the_disk(
    journal_path: Path,
) -> None:
    respx.post(url__startswith=URL).mock(
        return_value=httpx.Response(201, headers={"X-Merchant-Pin": "pin-echo-1"})
    )
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
        assert (
            record is not None
            and record.url == "https://pay.example/charges?api_key=REDACTED&amount=5"
        )
        with pytest.raises(
            samekey.SameKeyError, match=r"credentials in its URL \(api_key\).*Nothing was sent"
        ):
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
def test_cloud_api_key_headers_never_reach_the_journal_but_the_echoed_key_does(
    journal_path: Path,
) -> None:
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
    assert (
        replayed.headers["Idempotency-Key"] == "echo"
    )  # the server's echo of the key is no secret


@pytest.mark.usefixtures("psycopg_installed")
def test_unreachable_server_names_the_dsn_without_its_password() -> None:
    dsn = "postgresql://alice:s3cr3t-pass@127.0.0.1:1/payments"
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Client(journal=dsn)
    text = str(caught.value)
    assert "s3cr3t-pass" not in text
    assert "postgresql://alice:***@127.0.0.1:1/payments" in text
    assert "cannot reach the PostgreSQL server" in text and "Check that it runs" in text


@pytest.mark.usefixtures("psycopg_installed")
def test_samekey_command_with_an_unreachable_dsn_exits_2_with_the_password_masked() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-m", "samekey", "list", "--journal", "postgresql://ops:pa55-w0rd@127.0.0.1:1/pay"],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2
    assert "pa55-w0rd" not in done.stderr and "postgresql://ops:***@127.0.0.1:1/pay" in done.stderr


def test_key_value_dsn_password_is_masked_too() -> None:
    with pytest.raises(samekey.JournalError) as caught:
        samekey.PostgresJournal(
            "host=127.0.0.1 port=1 user=bob password=hunter2-x dbname=d", connect_timeout=2
        )
    assert "hunter2-x" not in str(caught.value) and "password=***" in str(caught.value)


# passwords as a password manager makes them: '#', '?', '/', '@', spaces, quotes, backslashes
WELL_FORMED_DSNS = [
    # percent-encoded, as libpq wants them
    "postgresql://ops:Pw%23h4sh%3Fq%2Fsl%40at@127.0.0.1:1/pay",
    "postgres://ops:%40%2F%3F%23Pw@127.0.0.1:1/pay?sslmode=disable",
    "postgresql://ops:Pw#h4sh?q@127.0.0.1:1/pay",  # '#' and '?' need no encoding before the '@'
    "postgresql://ops:S3cr%3At@[::1]:1/pay",
    "postgresql://ops@127.0.0.1:1/pay?password=Pw%23h4sh%26amp%3Fq%2F%40",  # as a query parameter
    "postgresql://ops@127.0.0.1:1/pay?sslmode=disable&password=Pw#h4sh?q/@x&application_name=x",
    # twice, the key percent-encoded
    "postgresql://ops:Pw1%23x@127.0.0.1:1,[::1]:1/pay?pass%77ord=Pw2%23y",
    "host=127.0.0.1 port=1 user=bob password='Pw#h4sh ?q/sl@at' dbname=d",
    "host=127.0.0.1 password=Pw#h4sh?q/sl@at dbname=d",
    r"host=127.0.0.1 password = 'it\'s #?/@ Pw\\x' dbname=d",
    r"password=Pw\ h4sh#x host=127.0.0.1 port=1",
    "host=127.0.0.1 port=1 sslpassword=K3y#p4ss?/@ password=Pw@h4sh options='-c search_path=x'",
]


@pytest.mark.usefixtures("psycopg_installed")
@pytest.mark.parametrize("dsn", WELL_FORMED_DSNS)
def test_passwords_with_special_characters_are_masked_as_libpq_reads_them(dsn: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    from samekey._postgres import mask_dsn

    given = conninfo_to_dict(dsn)
    secrets = [given[k] for k in ("password", "sslpassword") if k in given]
    masked = mask_dsn(dsn)
    # exactly the passwords are masked: libpq reads the same connection, with *** for each password
    assert conninfo_to_dict(masked) == {
        k: "***" if k in ("password", "sslpassword") else v for k, v in given.items()
    }
    for secret in secrets:
        written = [secret, quote(secret, safe=""), *re.split(r"[#?/@ ]", secret)]
        assert not [piece for piece in written if len(piece) >= 3 and piece in masked], masked
    # and so in what the journal says when it cannot connect
    with pytest.raises(samekey.JournalError) as caught:
        samekey.PostgresJournal(dsn, connect_timeout=1)
    assert "***" in str(caught.value)
    assert not [
        s for s in secrets if s in str(caught.value) or quote(s, safe="") in str(caught.value)
    ]


@pytest.mark.usefixtures("psycopg_installed")
@pytest.mark.parametrize(
    "dsn",
    [
        # a raw '@': libpq takes 'S3CRET@127.0.0.1' for the host
        "postgresql://ops:pa@S3CRET@127.0.0.1:1/pay",
        # a raw '/': libpq reads 'S3CRET@...' as the database
        "postgresql://ops:pa/S3CRET@127.0.0.1:1/pay",
        # a bad escape: libpq's error quotes the password
        "postgresql://ops:pa%zzS3CRET@127.0.0.1:1/pay",
        "host=127.0.0.1 port=1 password='unterminated S3CRET",
        "host=127.0.0.1 port=1 PASSWORD=S3CRET",  # no such key for libpq, a password all the same
        "host=127.0.0.1 port=1 password 'S3CRET' dbname=x",
    ],
)
def test_a_misspelt_dsn_never_shows_its_password(dsn: str) -> None:
    from samekey._postgres import mask_dsn

    assert "S3CRET" not in mask_dsn(dsn)
    with pytest.raises(samekey.JournalError) as caught:
        samekey.PostgresJournal(dsn, connect_timeout=1)
    assert "S3CRET" not in str(caught.value) and "***" in str(caught.value)
    # nor the driver's error chained to it, which a traceback (logging.exception) prints too
    logged = "".join(traceback.format_exception(caught.value))
    assert "The above exception was the direct cause" in logged and "S3CRET" not in logged


@pytest.mark.usefixtures("psycopg_installed")
@pytest.mark.parametrize("given", ["--journal", "$SAMEKEY_JOURNAL"])
@pytest.mark.parametrize(
    "dsn",
    [
        # libpq's error quotes the bad escape, password and all
        "postgresql://ops:pa%zzS3CRET@127.0.0.1:1/pay",
        # libpq's error names the 'host' it read after a raw '@'
        "postgresql://ops:pa@S3CRET@127.0.0.1:1/pay",
    ],
)
def test_samekey_debug_traceback_never_shows_the_password(dsn: str, given: str) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    argv = [sys.executable, "-m", "samekey", "--debug", "list"]
    if given == "--journal":
        argv += ["--journal", dsn]
    else:
        env["SAMEKEY_JOURNAL"] = dsn
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 2
    # the whole traceback, the driver's own error included, only without the password
    assert "Traceback (most recent call last)" in done.stderr and "psycopg." in done.stderr
    assert "samekey.JournalError" in done.stderr or "JournalError" in done.stderr
    assert "S3CRET" not in done.stderr + done.stdout and "ops:***@" in done.stderr


def test_an_unexpected_error_quoting_the_dsn_is_shown_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from samekey import cli

    dsn = "postgresql://ops:Pw%23S3CRET@127.0.0.1:1/pay"

    def broken(location: str, **options: object) -> samekey.JournalStore:
        raise RuntimeError(
            f"cannot open {location} (password Pw#S3CRET)"
        )  # as a careless driver might

    monkeypatch.setattr(cli, "open_store", broken)
    for debug in ([], ["--debug"]):
        err = io.StringIO()
        assert cli.main([*debug, "list", "--journal", dsn], stdout=io.StringIO(), stderr=err) == 2
        assert (
            "unexpected RuntimeError: cannot open postgresql://ops:***@127.0.0.1:1/pay"
            in err.getvalue()
        )
        assert "S3CRET" not in err.getvalue() and ("Traceback" in err.getvalue()) == bool(debug)


PASSWORD = "Pw#h4sh?q/sl@at 'x\\y"  # a trust server ignores it: the journal opens


def _with_password(dsn: str, form: str) -> str:
    from urllib.parse import urlsplit

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if "password" in conninfo_to_dict(dsn):
        pytest.skip("the test database's DSN has a password of its own")
    if form == "kv":
        return make_conninfo("", **conninfo_to_dict(dsn), password=PASSWORD)
    parts = urlsplit(dsn)
    assert parts.username is not None and "://" in dsn
    return dsn.replace(f"//{parts.username}@", f"//{parts.username}:{quote(PASSWORD, safe='')}@", 1)


@pytest.mark.parametrize("form", ["url", "kv"])
def test_an_open_journal_never_shows_its_password(pg_dsn: str, form: str) -> None:
    dsn = _with_password(pg_dsn, form)
    journal = samekey.PostgresJournal(dsn)
    journal.close()
    with pytest.raises(samekey.JournalError) as caught:
        journal.get("op")  # closed: the error names the journal
    for text in (journal.location, repr(journal), str(caught.value)):
        assert "***" in text and not [
            p for p in (PASSWORD, quote(PASSWORD, safe=""), "h4sh") if p in text
        ], text


def test_the_samekey_command_never_shows_the_password(pg_dsn: str) -> None:
    import io

    from samekey import cli

    dsn = _with_password(pg_dsn, "url")
    samekey.PostgresJournal(dsn).close()
    for argv in (
        ["list"],
        ["list", "--all"],
        ["show", "order-1"],
        ["resume", "--all"],
        ["forget", "order-1"],
    ):
        out, err = io.StringIO(), io.StringIO()
        cli.main([*argv, "--journal", dsn], stdout=out, stderr=err, stdin=io.StringIO())
        text = out.getvalue() + err.getvalue()
        assert "postgresql://samekey:***@" in text or ":***@" in text, text
        assert "h4sh" not in text and quote(PASSWORD, safe="") not in text, text


def test_a_credential_quoted_by_an_http_error_never_reaches_the_journal(
    journal_path: Path, server: PaymentServer
) -> None:
    # A token read from a file with its newline: h11 refuses the header and quotes its value in the
    # error. The journal keeps the error as last_error (`samekey list` shows it), never the value.
    token = "sk_live_quoted_secret\n"
    with samekey.Client(journal=journal_path, base_url=server.url) as client:
        with pytest.raises(
            httpx.LocalProtocolError, match="sk_live_quoted_secret"
        ):  # httpx's own message
            client.post(
                "/charges",
                json={"amount": 5},
                operation="op",
                headers={"Authorization": f"Bearer {token}"},
            )
        record = client.journal.get("op")
        assert record is not None and record.state == "pending"
        assert record.last_error is not None and "Illegal header value" in record.last_error
        assert "sk_live_quoted_secret" not in record.last_error
    blob = b"".join(p.read_bytes() for p in journal_path.parent.iterdir())
    assert b"sk_live_quoted_secret" not in blob
    # the token fixed, the same operation goes out with its journaled key, once
    with samekey.Client(journal=journal_path, base_url=server.url) as client:
        response = client.post(
            "/charges",
            json={"amount": 5},
            operation="op",
            headers={"Authorization": f"Bearer {token.strip()}"},
        )
    assert (
        response.status_code == 201
        and server.keys_seen() == [record.key]
        and server.charge_count() == 1
    )
