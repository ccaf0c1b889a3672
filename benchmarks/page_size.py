"""The journal's page size against the size of the answers it keeps.

samekey's journal uses 1 KiB pages. A payment API's answer is often a few KiB, and a row larger
than a page spills into overflow pages, so larger pages could suit larger answers. This writes
samekey's two statements the way a sequential client's requests do, in one transaction per
request: the previous request's answer, then the next claim. It compares page sizes and answer
sizes side by side, in blocks in random order, with and without a sync of the WAL per commit.
The schema is samekey's own, read from a journal samekey created.

    python -m benchmarks.page_size [--blocks 200] [--dir FOLDER]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
import uuid

from ._common import FloorJournal, table

PAGES = (1024, 4096)
ANSWERS = (60, 2000, 8000)  # bytes
PER_BLOCK = 5
HEADERS = '[["content-type","application/json"]]'
BODY = b'{"amount":1000,"currency":"eur","source":"tok_visa"}'


def _schema(folder: str) -> list[str]:
    journal = FloorJournal(os.path.join(folder, "samekey.sqlite3"))  # made by samekey itself
    rows = journal.conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    journal.close()
    return [sql for (sql,) in rows]


class Writer:
    """One journal file: each request commits the previous answer and its own claim together."""

    def __init__(self, path: str, page: int, schema: list[str], sync: bool) -> None:
        self.path, self.sync = path, sync
        self.previous: str | None = None
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute(f"PRAGMA page_size={page}")
        self.conn.execute("PRAGMA journal_mode=WAL").fetchall()
        self.conn.execute("PRAGMA synchronous=NORMAL")
        for sql in schema:
            self.conn.execute(sql)
        self.columns = [row[1] for row in self.conn.execute("PRAGMA table_info(operations)")]

    def request(self, answer: bytes) -> None:
        now, operation = time.time(), str(uuid.uuid4())
        self.conn.execute("BEGIN IMMEDIATE")
        if self.previous is not None:
            self.conn.execute(
                "UPDATE operations SET state = 'completed', completed_at = ?, "
                "response_status = 201, response_headers = ?, response_body = ? "
                "WHERE operation = ?",
                (now, HEADERS, answer, self.previous),
            )
        values: dict[str, object] = dict.fromkeys(self.columns)
        values.update(
            operation=operation, key=str(uuid.uuid4()), key_header="Idempotency-Key",
            method="POST", url="http://127.0.0.1/v1/charges", fingerprint="0" * 64,
            request_headers=HEADERS, request_body=BODY, state="pending", created_at=now,
            updated_at=now, attempts=0, lease_owner="owner", lease_expires=now + 60,
        )  # fmt: skip
        marks = ", ".join("?" for _ in self.columns)
        self.conn.execute(f"INSERT INTO operations VALUES ({marks})", tuple(values.values()))
        self.conn.execute("COMMIT")
        if self.sync:  # what durability "fsync" adds: the WAL on the disk before the send
            fd = os.open(self.path + "-wal", os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        self.previous = operation


def run(blocks: int = 200, folder: str | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="samekey-pages-", dir=folder) as tmp:
        schema = _schema(tmp)
        writers = {
            (page, size, sync): Writer(
                os.path.join(tmp, f"{page}-{size}-{sync}.sqlite3"), page, schema, sync
            )
            for page in PAGES
            for size in ANSWERS
            for sync in (False, True)
        }
        spent = dict.fromkeys(writers, 0.0)
        order = list(writers)
        for _ in range(blocks):
            random.shuffle(order)
            for key in order:
                answer = os.urandom(key[1] // 2).hex().encode()  # JSON-like text, not compressible
                started = time.perf_counter()
                for _ in range(PER_BLOCK):
                    writers[key].request(answer)
                spent[key] += time.perf_counter() - started
    per = {key: seconds / (blocks * PER_BLOCK) * 1e6 for key, seconds in spent.items()}
    rows = [
        [f"{size:,} B", "fsync" if sync else "process"]
        + [f"{per[page, size, sync]:.1f}" for page in PAGES]
        + [f"{per[PAGES[1], size, sync] / per[PAGES[0], size, sync]:.2f}x"]
        for size in ANSWERS
        for sync in (False, True)
    ]
    headers = ["answer", "durability"] + [f"µs, {page} B pages" for page in PAGES]
    print(f"\n{blocks} blocks of {PER_BLOCK} requests per variant, in random order\n")
    print(table([*headers, f"{PAGES[1]} / {PAGES[0]}"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--dir", default=None, help="folder for the journals (its disk is synced)")
    args = parser.parse_args()
    run(args.blocks, args.dir)


if __name__ == "__main__":
    main()
