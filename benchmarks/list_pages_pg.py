"""`samekey list`'s page query on a PostgreSQL journal of a million records, beside the way
list read it before the query existed (every record of the prefix, filtered in Python).

The records are copied straight into the real table (COPY), then ANALYZEd, as autovacuum
would; 10 of them pending, as after a crash. The queries are those of
`benchmarks.journal_scale`'s list table, through `PostgresJournal.list_page`.

    python -m benchmarks.list_pages_pg [--records 1000000] [--dsn postgresql://...]

Needs `pip install "samekey[postgres]"` and PostgreSQL server binaries (or --dsn, whose
database must have no samekey tables yet).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator

import samekey
from samekey._contract import ListQuery

from ._common import median, report, table

PENDING = 10
URL = "https://api.example.com/v1/charges"


@contextlib.contextmanager
def _database(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from samekey.testing import PostgresServer

    with PostgresServer() as server:
        yield server.dsn


def _fill(dsn: str, count: int) -> None:
    import psycopg

    now = time.time() - 3600
    columns = (
        "operation, key, key_header, method, url, fingerprint, request_headers, "
        "request_body, state, "
        "created_at, updated_at, completed_at, attempts"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor().copy(f"COPY samekey_operations ({columns}) FROM STDIN") as copy:
            for i in range(count):
                t = now + i * 1e-3
                copy.write_row((f"completed-{i:07d}/charge", f"key-{i}", "Idempotency-Key", "POST",
                    URL,
                                "f", "[]", b"{}", "completed", t, t, t, 1))  # fmt: skip
            for i in range(PENDING):
                copy.write_row((f"pending-{i:07d}/charge", f"key-p{i}", "Idempotency-Key", "POST",
                    URL,
                                "f", "[]", b"{}", "pending", now, now, None, 1))  # fmt: skip
        conn.execute("ANALYZE samekey_operations")


def _before(journal: samekey.PostgresJournal, query: ListQuery) -> int:
    records = journal.records(
        query.prefix, include_completed=query.state != "pending", bodies=False
    )
    return len([r for r in records if query.matches(r)][: query.limit])


def run(count: int, dsn: str | None) -> dict[str, object]:
    with _database(dsn) as url:
        journal = samekey.PostgresJournal(url)
        try:
            _fill(url, count)
            middle = journal.get(f"completed-{count // 2:07d}/charge")
            assert middle is not None
            newest, common = f"completed-{count - 1:07d}"[:-3], f"completed-{count // 2:07d}"[:-5]
            half_way = (middle.created_at, middle.operation)
            cases = [
                ("pending (list)", ListQuery(limit=None)),
                ("pending, 50 a page", ListQuery(limit=51)),
                ("pending, prefix pending-0000", ListQuery(prefix="pending-0000")),
                (f"all, prefix {newest} (~1,000, the newest)", ListQuery(state=None,
                prefix=newest)),
                (f"all, prefix {common} (~10%), 100 a page", ListQuery(state=None, prefix=common,
                limit=101)),
                ("completed, 100 a page", ListQuery(state="completed", limit=101)),
                ("all, 100 a page after half way", ListQuery(state=None, after=half_way,
                limit=101)),
            ]  # fmt: skip
            rows = []
            for label, query in cases:
                journal.list_page(query)  # warm the server's cache, as a second page would find it
                samples = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    shown = len(journal.list_page(query))
                    samples.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _before(journal, query)
                before = time.perf_counter() - t0
                after = median(samples)
                rows.append(
                    [
                        label,
                        str(shown),
                        f"{after * 1e3:.2f}",
                        f"{before * 1e3:.1f}",
                        f"{before / after:,.0f}x",
                    ]
                )
        finally:
            journal.close()
    text = table(["query", "records", "list_page ms", "before ms", "before / list_page"], rows)
    worst = max(float(row[2]) for row in rows)
    title = (
        f"samekey list's page query on PostgreSQL, {count:,} completed + {PENDING} pending "
        "records (median of 5)"
    )
    return report(title, text, [f"slowest page: {worst:.1f} ms"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--dsn", default=None, help="an empty database (default: a throwaway local server)"
    )
    args = parser.parse_args()
    run(args.records, args.dsn)


if __name__ == "__main__":
    main()
