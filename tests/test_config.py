"""The options every client and transport takes (_config.py): a bad one is refused at construction,
with the fix, before the journal is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import samekey
from client_helpers import make_client


@pytest.mark.parametrize("make", [samekey.Client, samekey.AsyncClient, samekey.SameKeyTransport])
def test_one_header_name_for_redact_headers_is_refused_not_read_as_letters(
    journal_path: Path, make: Any
) -> None:
    # a bare string would be taken letter by letter: X-Merchant-Pin would go to the disk
    with pytest.raises(
        TypeError, match=r"redact_headers must be a tuple of names.*\('X-Merchant-Pin',\)"
    ):
        make(journal=journal_path, redact_headers="X-Merchant-Pin")
    assert not journal_path.exists()  # refused before the journal was opened
    with pytest.raises(TypeError, match=r"redact_headers must be a tuple of names.*got None"):
        make(journal=journal_path, redact_headers=None)  # was "'NoneType' object is not iterable"
    assert not journal_path.exists()


def test_bad_client_options_are_refused(journal_path: Path) -> None:
    with pytest.raises(ValueError, match="key_format must be 'uuid'"):
        make_client(journal_path, key_format="hex")
    with pytest.raises(TypeError, match=r"policy must be a samekey.RetryPolicy"):
        make_client(journal_path, policy={"max_attempts": 3})


@pytest.mark.parametrize("make", [samekey.Client, samekey.AsyncClient, samekey.SameKeyTransport])
@pytest.mark.parametrize(
    "name", ["Idempotency-Key:", "Idempotency-Key ", "Idempotency Key", "X-Key\n"]
)
def test_a_key_header_that_is_no_header_name_is_refused_before_anything_is_journaled(
    journal_path: Path, make: Any, name: str
) -> None:
    # accepted, every request journaled a pending key, then failed in h11 ("Illegal header name"),
    # and the operation was tied to that header for life: fixed, the client got OperationMismatch
    with pytest.raises(
        ValueError, match=r"key_header must be an HTTP header name.*'Idempotency-Key'"
    ):
        make(journal=journal_path, key_header=name)


@pytest.mark.parametrize("make", [samekey.Client, samekey.AsyncClient, samekey.SameKeyTransport])
def test_a_lease_that_never_expires_is_refused(journal_path: Path, make: Any) -> None:
    # lease=float("inf") was accepted: an owner that vanished on another host held its operation
    # forever, and `samekey list --json` / `samekey show` died on the record (OverflowError)
    with pytest.raises(ValueError, match=r"lease must be a finite duration.*lease=60"):
        make(journal=journal_path, lease=float("inf"))
