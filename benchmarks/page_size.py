"""The journal's page size against the size of the answers it keeps.

samekey's journal uses 1 KiB pages. A payment API's answer is often a few KiB, and a row larger
than a page spills into overflow pages, so larger pages could suit larger answers. This writes
samekey's two statements the way a sequential client's requests do, in one transaction per
request: the previous request's answer, then the next claim. It compares page sizes and answer
sizes side by side, in blocks in random order, with and without a sync of the WAL per commit.
The schema and the two statements are samekey's own (`FloorJournal`).

    python -m benchmarks.page_size [--blocks 200] [--dir FOLDER]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid

from ._common import FloorJournal, table

PAGES = (1024, 4096)
ANSWERS = (60, 2000, 8000)  # bytes
PER_BLOCK = 5
URL = "http://127.0.0.1/v1/charges"
BODY = b'{"amount":1000,"currency":"eur","source":"tok_visa"}'


class Writer:
    """One journal file: each request commits the previous answer and its own claim together."""

    def __init__(self, path: str, page: int, sync: bool) -> None:
        self.path, self.sync = path, sync
        self.journal = FloorJournal(path, page_size=page)
        self.previous: str | None = None

    def request(self, answer: bytes) -> None:
        now, operation = time.time(), str(uuid.uuid4())
        conn = self.journal.conn
        conn.execute("BEGIN IMMEDIATE")
        if self.previous is not None:
            self.journal.complete(self.previous, answer, now)
        self.journal.claim(operation, str(uuid.uuid4()), URL, BODY, now)
        conn.execute("COMMIT")
        if self.sync:  # what durability "fsync" adds: the WAL on the disk before the send
            fd = os.open(self.path + "-wal", os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        self.previous = operation

    def close(self) -> None:
        self.journal.close()


def run(blocks: int = 200, folder: str | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="samekey-pages-", dir=folder) as tmp:
        writers = {
            (page, size, sync): Writer(
                os.path.join(tmp, f"{page}-{size}-{sync}.sqlite3"), page, sync
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
        for writer in writers.values():
            writer.close()
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
