"""A ``journal=`` argument turned into an open store (_open.py): none given, the default journal."""

from __future__ import annotations

from pathlib import Path

import httpx
import respx

import samekey
from client_helpers import URL


@respx.mock
def test_default_journal_location_is_used_without_journal_argument(tmp_path: Path) -> None:
    respx.post(URL).mock(return_value=httpx.Response(201))
    with samekey.Client() as client:
        client.post(URL, json={}, operation="op")
        assert client.journal.location == str(samekey.default_journal_path())
    assert samekey.default_journal_path() == tmp_path / "default-journal.sqlite3"
