"""`samekey resume` as an operator runs it during an incident: --concurrency, --dry-run, --json,
-v and the progress bar (samekey._cli._resume, _progress)."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import samekey
from samekey.testing import Fault, FaultPlan, PaymentServer
from test_cli import SRC, FakeTty, completed_op, pending_op, run, run_process


@pytest.fixture(autouse=True)
def _no_waiting() -> Iterator[None]:
    with samekey.set_testing(True):
        yield


class Rendezvous(ThreadingHTTPServer):
    """Answers 201 only once ``size`` requests are in flight together (else 503 after 10 s):
    operations sent one after another can never all succeed."""

    daemon_threads = True

    def __init__(self, size: int) -> None:
        self.barrier = threading.Barrier(size, timeout=10)
        self.keys: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Rendezvous

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.keys.append(self.headers["Idempotency-Key"])
        try:
            self.server.barrier.wait()
            status = 201
        except threading.BrokenBarrierError:
            status = 503
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def rendezvous() -> Iterator[Rendezvous]:
    server = Rendezvous(4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_resume_sends_concurrency_operations_at_once(
    journal_path: Path, rendezvous: Rendezvous
) -> None:
    keys = [
        pending_op(journal_path, f"inv-{n}", f"{rendezvous.url}/charges", {"n": n})
        for n in range(4)
    ]
    result = run_process("resume", "--all", "--concurrency", "4", "--max-attempts", "1",
                         "--journal", str(journal_path))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == [f"[{n + 1}/4] inv-{n}" for n in range(4)]
    assert lines[-1] == "resumed 4 operation(s): 4 completed now, 0 already completed, 0 failed"
    assert sorted(rendezvous.keys) == sorted(keys)  # each sent once, with its own key
    assert result.stderr == ""  # not a terminal: no progress bar


def test_dry_run_says_what_would_be_sent_and_sends_and_writes_nothing(
    journal_path: Path, server: PaymentServer
) -> None:
    key = pending_op(journal_path, "inv-1", "http://payments.invalid/charges?v=2", {"amount": 1})
    completed_op(journal_path, "inv-2")
    before = journal_path.read_bytes(), samekey.Journal(journal_path).get("inv-1")
    argv = [
        "--base-url",
        server.url,
        "-H",
        "Authorization: Bearer sk_live_secret",
        "--journal",
        str(journal_path),
    ]
    text = run_process("resume", "--all", "--dry-run", *argv)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        f"[1/1] inv-1: send: POST {server.url}/charges?v=2 with Idempotency-Key: {key} "
        "(12-byte body; headers from -H: Authorization)",
        "dry run: 1 operation(s) looked at; nothing was sent and nothing written",
    ]
    assert "sk_live_secret" not in text.stdout + text.stderr
    plan = json.loads(run_process("resume", "inv-2", "--dry-run", "--json", *argv).stdout)
    assert plan["dry_run"] is True and plan["operations"][0]["action"] == "replay"
    assert server.requests() == []
    assert (journal_path.read_bytes(), samekey.Journal(journal_path).get("inv-1")) == before


def test_json_gives_each_outcome_and_the_counts(journal_path: Path, server: PaymentServer) -> None:
    ok = pending_op(journal_path, "ok", f"{server.url}/charges", {"amount": 1})
    pending_op(
        journal_path, "down", "http://127.0.0.1:9/charges", {"amount": 2}
    )  # nothing listens there
    result = run("resume", "--all", "--json", "--max-attempts", "1", "--journal", str(journal_path))
    assert result.code == 1
    document = json.loads(result.out)
    first, second = document["operations"]
    assert first == {"operation": "ok", "key": ok, "outcome": "completed", "status": 201,
        "attempts": 2,
                     "error": None}  # fmt: skip
    assert (
        second["outcome"] == "failed" and second["status"] is None and "gave up" in second["error"]
    )
    assert document["summary"] == {"operations": 2, "completed": 1, "replayed": 0, "failed": 1,
        "refused": 0,
                                   "skipped": 0}  # fmt: skip


def test_verbose_prints_each_failed_attempt_as_it_happens(
    journal_path: Path, server: PaymentServer
) -> None:
    key = pending_op(journal_path, "flaky", f"{server.url}/charges", {"amount": 3})
    server.faults = FaultPlan([Fault.http(503), Fault.http(503)])
    result = run("resume", "flaky", "-v", "--journal", str(journal_path))
    assert result.code == 0, result.out + result.err
    assert result.err.splitlines() == [
        "[1/1] flaky: attempt 2 failed (HTTP 503); attempt 3 in 0.0 s",
        "[1/1] flaky: attempt 3 failed (HTTP 503); attempt 4 in 0.0 s",
    ]  # attempts count the first run's too, as the journal does
    assert result.out.startswith(f"[1/1] flaky: HTTP 201 (key {key}, attempt 4)")
    quiet = run("resume", "flaky", "--journal", str(journal_path))
    assert quiet.err == ""


def test_a_progress_bar_on_a_terminal_only(journal_path: Path, server: PaymentServer) -> None:
    for n in range(3):
        pending_op(journal_path, f"bar-{n}", f"{server.url}/charges", {"amount": n})
    out, err = io.StringIO(), FakeTty()
    code = samekey.cli.main(
        ["resume", "--all", "--journal", str(journal_path)], stdout=out, stderr=err
    )
    assert code == 0
    assert "\r[------------------------] 0/3 done, 0 failed" in err.getvalue()
    assert "\r[########################] 3/3 done, 0 failed" in err.getvalue()
    assert err.getvalue().endswith("\r\x1b[K")  # erased at the end: the summary is the last word
    assert "\r" not in out.getvalue() and out.getvalue().count("\n") == 4


def test_the_progress_bar_draws_on_a_real_terminal_and_leaves_stdout_clean(
    journal_path: Path, server: PaymentServer
) -> None:
    for n in range(3):
        pending_op(journal_path, f"tty-{n}", f"{server.url}/charges", {"amount": n})
    main, child = pty.openpty()
    command = [sys.executable, "-m", "samekey", "resume", "--all", "--journal", str(journal_path)]
    environ = {**os.environ, "PYTHONPATH": str(SRC)}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=child, stdin=subprocess.DEVNULL, env=environ
    ) as proc:
        os.close(child)
        out, _ = proc.communicate(timeout=60)
    screen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the terminal's other side is closed and everything was read
            break
        if not chunk:
            break
        screen += chunk
    os.close(main)
    assert proc.returncode == 0
    assert b"] 3/3 done, 0 failed" in screen and screen.endswith(b"\r\x1b[K")
    assert (
        out.decode().splitlines()[-1]
        == "resumed 3 operation(s): 3 completed now, 0 already completed, 0 failed"
    )
