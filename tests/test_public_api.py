import os
import subprocess
import sys
import textwrap
from pathlib import Path

import samekey

ROOT = Path(__file__).resolve().parents[1]


def _users_mypy(user_code: Path) -> subprocess.CompletedProcess[str]:
    """mypy --strict on a user's program that imports samekey."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(user_code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(ROOT / "src")},
    )


def test_all_is_sorted_and_exported() -> None:
    assert samekey.__all__ == sorted(samekey.__all__)
    for name in samekey.__all__:
        assert hasattr(samekey, name), name


def test_errors_share_one_root() -> None:
    for name in (
        "RetriesExhausted",
        "OperationMismatch",
        "OperationInProgress",
        "KeyExpired",
        "JournalError",
    ):
        assert issubclass(getattr(samekey, name), samekey.SameKeyError)


def test_clients_are_httpx_drop_ins() -> None:
    import httpx

    assert issubclass(samekey.Client, httpx.Client)
    assert issubclass(samekey.AsyncClient, httpx.AsyncClient)


def test_a_third_store_builds_its_claim_result_from_the_public_api() -> None:
    # README "Writing another store": claim(...) -> ClaimResult; a Redis or DynamoDB store
    # must be able to make one without importing samekey's private modules
    # (and type its methods: claim receives an Intent)
    from samekey._contract import ClaimResult, Intent

    assert {"ClaimResult", "Intent"} <= set(samekey.__all__)
    assert samekey.ClaimResult is ClaimResult and samekey.Intent is Intent
    # and the optional list_page / settle (docs/reference/journal.md) take and give public types
    from samekey._contract import ListQuery, SettleResult, settled_answer

    public = (samekey.ListQuery, samekey.SettleResult, samekey.settled_answer)
    assert public == (ListQuery, SettleResult, settled_answer)


def test_a_third_store_with_a_read_only_location_type_checks(tmp_path: Path) -> None:
    # README "Writing another store": `location` is "a printable name"; the clients only read it,
    # so a store computing it in a property is correct and must pass the user's mypy --strict
    user_code = tmp_path / "redis_store.py"
    user_code.write_text(
        textwrap.dedent(
            """
            from __future__ import annotations

            import samekey
            from samekey import ClaimResult, Intent, OperationRecord


            class RedisStore:
                def __init__(self, url: str) -> None:
                    self.url = url

                @property
                def location(self) -> str:
                    return self.url.split("@")[-1]

                def claim(self, intent: Intent, owner: str, lease_seconds: float, now: float) -> \
ClaimResult:
                    raise NotImplementedError

                def record_attempt(
                    self, operation: str, owner: str, attempts: int, error: str | None, \
lease_seconds: float, now: float
                ) -> None: ...

                def complete(
                    self,
                    operation: str,
                    owner: str,
                    attempts: int,
                    status: int,
                    headers: list[tuple[str, str]],
                    body: bytes,
                    now: float,
                ) -> None: ...

                def release(self, operation: str, owner: str, attempts: int, error: str | None, \
now: float) -> None: ...

                def get(self, operation: str) -> OperationRecord | None:
                    return None

                def pending(self, prefix: str | None = None) -> list[OperationRecord]:
                    return []

                def records(
                    self, prefix: str | None = None, *, include_completed: bool = True, bodies: \
bool = True
                ) -> list[OperationRecord]:
                    return []

                def forget(self, operation: str) -> bool:
                    return False

                def purge_completed(self, older_than: float, now: float, limit: int | None = None) \
-> int:
                    return 0

                def close(self) -> None: ...


            store: samekey.JournalStore = RedisStore("redis://127.0.0.1:6379")
            client = samekey.Client(journal=RedisStore("redis://127.0.0.1:6379"))
            transport = samekey.SameKeyTransport(journal=store)
            """
        )
    )
    result = _users_mypy(user_code)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_transports_keywords_are_checked_by_the_users_mypy(tmp_path: Path) -> None:
    # SameKeyTransport(**options: Any) let lease="60", on_busy="wiat" and a misspelt keyword
    # through mypy --strict; they failed only at run time
    user_code = tmp_path / "wiring.py"
    user_code.write_text(
        textwrap.dedent(
            """
            from datetime import timedelta

            import httpx

            import samekey

            good = samekey.SameKeyTransport(
                httpx.HTTPTransport(), journal="pay.sqlite3", lease=timedelta(seconds=30), \
on_busy="raise"
            )
            agood = samekey.AsyncSameKeyTransport(journal="pay.sqlite3", \
policy=samekey.RetryPolicy(), key_ttl=3600)
            bad1 = samekey.SameKeyTransport(lease="60")
            bad2 = samekey.AsyncSameKeyTransport(on_busy="wiat")
            bad3 = samekey.SameKeyTransport(jounral="pay.sqlite3")
            """
        )
    )
    result = _users_mypy(user_code)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["12", "13", "14"], (
        result.stdout + result.stderr
    )


def test_a_misspelt_samekey_name_fails_the_users_mypy(tmp_path: Path) -> None:
    # samekey's module __getattr__ (it loads PostgresJournal on first use) was seen by type checkers
    # too, and returned Any: samekey.Clinet(...) or samekey.OPERATION_EXT passed mypy --strict and
    # failed only at run time. PostgresJournal itself stays typed.
    user_code = tmp_path / "typo.py"
    user_code.write_text(
        textwrap.dedent(
            """
            import samekey

            client = samekey.Clinet()
            extensions = {samekey.OPERATION_EXT: "order-42/charge"}
            journal: samekey.JournalStore = \
samekey.PostgresJournal("postgresql://localhost/payments", pool_size=2)
            """
        )
    )
    result = _users_mypy(user_code)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["4", "5"], result.stdout + result.stderr
    assert 'Module has no attribute "Clinet"; maybe "Client"?' in errors[0]


def test_retry_hooks_are_checked_by_the_users_mypy(tmp_path: Path) -> None:
    # RetryHook is a Protocol: a function, a callable object, a lambda or list.append fits,
    # whatever its parameter is called; a hook taking something else does not
    user_code = tmp_path / "metrics.py"
    user_code.write_text(
        textwrap.dedent(
            """
            from collections import Counter

            import samekey
            from samekey import RetryDetails, RetryHook

            retries: Counter[str] = Counter()
            seen: list[RetryDetails] = []


            def count(d: RetryDetails) -> None:
                retries[d.reason] += 1


            class Alert:
                def __call__(self, details: RetryDetails) -> None:
                    print(details.operation, details.attempt, details.next_wait, \
details.from_retry_after)


            hooks: list[RetryHook] = [count, Alert(), seen.append]
            samekey.Client(on_retry=count)
            samekey.AsyncClient(on_retry=[count, Alert(), lambda d: print(d.status_code)])
            samekey.SameKeyTransport(on_retry=hooks)
            samekey.AsyncSameKeyTransport(on_retry=None)


            def by_status(status: int) -> None: ...


            samekey.Client(on_retry=by_status)
            """
        )
    )
    result = _users_mypy(user_code)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["30"], result.stdout + result.stderr


def test_end_hooks_are_checked_by_the_users_mypy(tmp_path: Path) -> None:
    # EndHook, as RetryHook: any callable taking an EndDetails fits; a RetryDetails hook does not
    user_code = tmp_path / "ends.py"
    user_code.write_text(
        textwrap.dedent(
            """
            import samekey
            from samekey import EndDetails, EndHook, RetryDetails

            seen: list[EndDetails] = []


            def count(d: EndDetails) -> None:
                print(d.outcome, d.status_code, d.attempts, d.this_run, d.duration, d.error_type, \
d.reason)


            hooks: list[EndHook] = [count, seen.append]
            samekey.Client(on_end=count, on_retry=None)
            samekey.AsyncClient(on_end=[count, lambda d: print(d.outcome)])
            samekey.SameKeyTransport(on_end=hooks)
            samekey.AsyncSameKeyTransport(on_end=None)
            samekey.instrumentation.set_opentelemetry(True)


            def by_retry(details: RetryDetails) -> None: ...


            samekey.Client(on_end=by_retry)
            """
        )
    )
    result = _users_mypy(user_code)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["23"], result.stdout + result.stderr
