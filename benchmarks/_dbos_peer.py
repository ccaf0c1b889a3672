"""The durable-execution peer: DBOS Transact, one workflow with one step doing the same POST.

DBOS checkpoints every workflow and step in its system database (SQLite here, with SQLite's
default rollback journal and synchronous=FULL: a sync per commit, as samekey's "fsync" mode).
The workflow id is the operation's name and goes out as the Idempotency-Key, as DBOS
recommends for calls to the outside. DBOS is a process-wide singleton: one peer per process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx

BODY = {"amount": 1000, "currency": "eur", "source": "tok_visa"}
_client: dict[str, httpx.Client] = {}


def peer(target: str, folder: str, run: str) -> tuple[Callable[[int], object], Callable[[], None]]:
    """(call(i), close) for the DBOS variant; the call raises on a non-2xx answer."""
    from dbos import DBOS, SetWorkflowID

    @DBOS.step()
    def post(url: str, key: str) -> int:
        response = _client["http"].post(url, json=BODY, headers={"Idempotency-Key": key})
        response.raise_for_status()
        return response.status_code

    @DBOS.workflow()
    def charge(url: str) -> int:
        return post(url, DBOS.workflow_id or "")

    _client["http"] = httpx.Client()
    database = os.path.join(folder, "dbos-system.sqlite3")
    config: Any = {
        "name": "samekey-bench",
        "system_database_url": f"sqlite:///{database}",
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()

    def call(i: int) -> None:
        with SetWorkflowID(f"order-{run}-{i}/charge"):
            charge(target)

    def close() -> None:
        DBOS.destroy()
        _client.pop("http").close()

    return call, close
