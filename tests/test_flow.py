"""The decision core (_flow.py): naming a request's operation, claiming it, waiting for its holder,
taking it over from an owner that is gone.
"""

from __future__ import annotations

from pathlib import Path

import httpx

import samekey
from client_helpers import URL, make_client


def test_an_unnamed_post_answering_an_auth_challenge_leaves_no_stale_pending_record(journal_path: Path) -> None:
    # DigestAuth sends the same request again after the 401: it is the same unnamed operation,
    # not a second one that leaves the first pending (listed, and resent by --prefix auto:)
    def server(request: httpx.Request) -> httpx.Response:
        if "Authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Digest realm="pay", nonce="n1", qop="auth"'})
        return httpx.Response(201, json={"id": "ch_1"})

    transport = httpx.MockTransport(server)
    with make_client(journal_path, transport=transport, auth=httpx.DigestAuth("user", "pass")) as client:
        response = client.post(URL, json={"amount": 100})
        records = client.journal.records(include_completed=True)
    info = samekey.operation_info(response)
    assert response.status_code == 201 and info is not None
    assert [(r.operation, r.state, r.attempts) for r in records] == [(info.operation, "completed", 2)]
    assert info.operation is not None and info.operation.startswith("auto:")
