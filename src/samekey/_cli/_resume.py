"""``samekey resume``: send pending operations again, each with its journaled key.

The records are chosen first (one by name, or ``--all``, unnamed ones left alone), then
either described (``--dry-run``: nothing sent, nothing written) or sent by ``--concurrency``
threads, each with its own `Client` per key header, so a dead server costs one deadline per
thread rather than one per operation. Results are printed in the journal's order (a script
reads the same output whatever finished first); `Progress` shows what happens meanwhile.
"""

from __future__ import annotations

import argparse
import json
import queue
import shlex
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import httpx

from .._attempts import NOT_ACTED_ON
from .._client import Client
from .._contract import JournalStore, OperationRecord
from .._errors import SameKeyError
from .._policy import RetryPolicy
from .._resume import UNNAMED_WARNING, RetargetTransport, bulk_resumable
from ._base import EXIT_FAILED, EXIT_OK, CliError
from ._output import human_age, without_password
from ._progress import Progress

__all__ = ["Outcome", "cmd_resume"]


@dataclass
class Outcome:
    """How one operation ended in this run, as printed and as ``--json`` gives it."""

    operation: str
    key: str
    outcome: str  # "completed", "replayed", "failed" or "refused"
    status: int | None = None
    attempts: int | None = None
    error: str | None = None
    line: str = field(default="", repr=False)  # the text after the label
    traceback: str | None = field(default=None, repr=False)  # --debug, for a failure


def cmd_resume(
    args: argparse.Namespace, store: JournalStore, out: TextIO, err: TextIO, raw_err: TextIO
) -> int:
    _check_usage(args)
    records, unnamed = _select(args, store)
    if not args.json:
        for record in unnamed:
            out.write(f"skipped {record.operation}: {UNNAMED_WARNING}\n")
    if not records:
        return _nothing_to_resume(args, store, unnamed, out)
    policy = _policy(args)
    if args.dry_run:
        return _dry_run(args, records, unnamed, out)
    labels = {r.operation: f"[{n}/{len(records)}] {r.operation}" for n, r in enumerate(records, 1)}
    progress = Progress(
        None if args.json else out, err, raw_err, labels, verbose=args.verbose, bar=True
    )
    outcomes = _send_all(args, store, records, policy, progress)
    if args.json:
        _print_json(records, outcomes, unnamed, out)
    else:
        out.write(_summary_line(outcomes, unnamed) + "\n")
    failed = any(o.outcome in ("failed", "refused") for o in outcomes)
    return EXIT_FAILED if failed or unnamed else EXIT_OK


# -- what to resume ---------------------------------------------------------------------


def _check_usage(args: argparse.Namespace) -> None:
    if (args.operation is None) == (not args.all):
        raise CliError("resume needs one OPERATION or --all (not both)")
    if args.prefix is not None and not args.all:
        raise CliError("--prefix goes with --all")
    if (
        args.base_url is not None and not args.base_url.strip()
    ):  # else taken as absent: the recorded origin
        raise CliError(
            "--base-url is empty: give the origin to send to, e.g. https://api.example.com "
            "(or leave --base-url out to send to the recorded URL); nothing was sent"
        )
    if args.base_url:
        try:
            RetargetTransport.parse_base_url(
                args.base_url
            )  # refuse a bad one before anything is sent
        except ValueError as exc:
            raise CliError(f"--base-url: {exc}; nothing was sent") from exc


def _select(
    args: argparse.Namespace, store: JournalStore
) -> tuple[list[OperationRecord], list[OperationRecord]]:
    """(the records to send, the unnamed ones ``--all`` leaves alone: see bulk_resumable)."""
    if args.operation is None:
        return bulk_resumable(store.records(args.prefix, include_completed=False), args.prefix)
    record = store.get(args.operation)
    if record is None:
        raise CliError(
            f"operation {args.operation!r} is not in the journal {store.location}: nothing was sent"
        )
    return [record], []


def _nothing_to_resume(
    args: argparse.Namespace, store: JournalStore, unnamed: list[OperationRecord], out: TextIO
) -> int:
    if args.json:
        _print_json([], [], unnamed, out, dry_run=args.dry_run)
    elif unnamed:
        out.write(
            "nothing resumed: only unnamed operations are pending, skipped above "
            f"({store.location})\n"
        )
    else:
        out.write(f"nothing to resume: no pending operations in {store.location}\n")
    return EXIT_FAILED if unnamed else EXIT_OK


def _policy(args: argparse.Namespace) -> RetryPolicy:
    limits = {"max_attempts": args.max_attempts, "deadline": args.deadline}
    try:
        return RetryPolicy(**{name: value for name, value in limits.items() if value is not None})
    except ValueError as exc:
        raise CliError(str(exc)) from exc


# -- --dry-run --------------------------------------------------------------------------


def _dry_run(
    args: argparse.Namespace,
    records: list[OperationRecord],
    unnamed: list[OperationRecord],
    out: TextIO,
) -> int:
    now = time.time()
    plans = [_plan(args, record, now) for record in records]
    if args.json:
        skipped = [r.operation for r in unnamed]
        out.write(
            json.dumps({"dry_run": True, "operations": plans, "skipped": skipped}, indent=2) + "\n"
        )
        return EXIT_OK
    for n, plan in enumerate(plans, 1):
        out.write(f"[{n}/{len(plans)}] {plan['operation']}: {plan['action']}: {plan['detail']}\n")
    out.write(
        f"dry run: {len(plans)} operation(s) looked at; nothing was sent and nothing written\n"
    )
    return EXIT_OK


def _plan(args: argparse.Namespace, record: OperationRecord, now: float) -> dict[str, Any]:
    """What resuming ``record`` would do, without doing it."""
    url = httpx.URL(record.url)
    if args.base_url:
        base = RetargetTransport.parse_base_url(args.base_url)
        url = url.copy_with(scheme=base.scheme, host=base.host, port=base.port)
    added = sorted({name.decode("ascii") for name, _ in args.headers})
    body = f"{len(record.request_body or b'')}-byte body"
    extra = f"; headers from -H: {', '.join(added)}" if added else ""
    action, detail = (
        "send",
        f"{record.method} {url} with {record.key_header}: {record.key} ({body}{extra})",
    )
    age, held = now - record.created_at, (record.lease_expires or 0.0) - now
    if not record.pending:
        action, detail = (
            "replay",
            f"already {_done(record)} with HTTP {record.response_status}: nothing would be sent",
        )
    elif age > args.key_ttl:
        action = "refuse"
        ttl = human_age(args.key_ttl)
        detail = f"its key is {human_age(age)} old, past --key-ttl {ttl}: nothing would be sent"
    elif record.lease_owner and held > 0:
        detail += f"; after waiting up to {held:.0f} s for {record.lease_owner}, which holds it now"
    return {
        "operation": record.operation,
        "action": action,
        "method": record.method,
        "url": str(url),
        "recorded_url": record.url,
        "key_header": record.key_header,
        "key": record.key,
        "body_bytes": len(record.request_body or b""),
        "added_headers": added,  # names only: a value may be a credential
        "detail": detail,
    }


# -- sending ----------------------------------------------------------------------------


def _send_all(
    args: argparse.Namespace,
    store: JournalStore,
    records: list[OperationRecord],
    policy: RetryPolicy,
    progress: Progress,
) -> list[Outcome]:
    """Resume ``records`` on ``--concurrency`` threads; their outcomes in ``records``' order."""
    jobs: queue.SimpleQueue[OperationRecord] = queue.SimpleQueue()
    for record in records:
        jobs.put(record)
    done: queue.SimpleQueue[tuple[int, Outcome | BaseException]] = queue.SimpleQueue()
    index = {r.operation: n for n, r in enumerate(records)}
    stop = threading.Event()  # Ctrl-C: the threads start no other operation

    def work() -> None:
        clients: dict[str, Client] = {}  # this thread's own, one per key header
        try:
            while not stop.is_set():
                try:
                    record = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    outcome: Outcome | BaseException = _resume_one(
                        args, store, record, policy, progress, clients
                    )
                except BaseException as exc:  # handed to the main thread, which raises it
                    outcome = exc
                done.put((index[record.operation], outcome))
        finally:
            for client in clients.values():
                client.close()

    # daemon threads: after Ctrl-C the process ends without waiting for a request in flight
    # (it stays pending with its key, as a single interrupted request always did)
    threads = [threading.Thread(target=work, name=f"samekey-resume-{i}", daemon=True)
               for i in range(min(args.concurrency, len(records)))]  # fmt: skip
    for thread in threads:
        thread.start()
    try:
        return _collect(records, done, progress)
    finally:
        stop.set()
        progress.close()


def _collect(
    records: list[OperationRecord],
    done: queue.SimpleQueue[tuple[int, Outcome | BaseException]],
    progress: Progress,
) -> list[Outcome]:
    """Outcomes as they come, each printed once every earlier one has been."""
    progress.start()
    ready: dict[int, Outcome] = {}
    outcomes: list[Outcome] = []
    while len(outcomes) < len(records):
        n, outcome = done.get()
        if isinstance(outcome, BaseException):
            raise outcome
        ready[n] = outcome
        while len(outcomes) in ready:
            next_one = ready.pop(len(outcomes))
            outcomes.append(next_one)
            label = progress.labels[next_one.operation]
            progress.result(
                f"{label}: {next_one.line}", failed=next_one.outcome in ("failed", "refused")
            )
            if next_one.traceback:
                progress.note(next_one.traceback.rstrip("\n"))
    return outcomes


def _client(
    args: argparse.Namespace, store: JournalStore, record: OperationRecord, policy: RetryPolicy,
    progress: Progress, clients: dict[str, Client],
) -> Client:  # fmt: skip
    client = clients.get(record.key_header.lower())
    if client is None:
        client = Client(
            journal=store,
            policy=policy,
            key_header=record.key_header,
            key_ttl=args.key_ttl,
            transport=RetargetTransport(args.base_url) if args.base_url else None,
            on_retry=progress.retried,
        )
        clients[record.key_header.lower()] = client
    return client


def _resume_one(
    args: argparse.Namespace, store: JournalStore, record: OperationRecord, policy: RetryPolicy,
    progress: Progress, clients: dict[str, Client],
) -> Outcome:  # fmt: skip
    client = _client(args, store, record, policy, progress, clients)
    held = (record.lease_expires or 0.0) - time.time()
    if record.pending and record.lease_owner and held > 0:  # else the wait below is silent
        progress.note(
            f"{progress.labels[record.operation]}: held by {record.lease_owner} for {held:.0f} s "
            "more; "
            "waiting for its outcome (taken over at once if that process is gone; Ctrl-C stops "
            "waiting, "
            "nothing is sent meanwhile)"
        )
    try:
        response = client.resume(record.operation, headers=args.headers)
    except (SameKeyError, httpx.HTTPError) as exc:
        shown = without_password(args.journal, traceback.format_exc()) if args.debug else None
        return Outcome(
            record.operation,
            record.key,
            "failed",
            error=str(exc),
            line=f"FAILED: {exc}",
            traceback=shown,
        )
    return _answered(record, response)


def _done(record: OperationRecord) -> str:
    return "settled by hand" if record.settled_by_hand else "completed"


def _answered(record: OperationRecord, response: httpx.Response) -> Outcome:
    info = response.extensions.get("samekey")
    replayed = bool(getattr(info, "replayed", False))
    status, attempts = response.status_code, getattr(info, "attempts", None)
    outcome = Outcome(record.operation, record.key, "completed", status, attempts)
    if status >= 400 and status not in NOT_ACTED_ON:
        # definitive (a declined card, a 422): completed and never retried, but not a
        # success, so a script's `samekey resume --all && ...` must not go on as if paid
        outcome.outcome = "refused"
        how = "replayed from the journal, nothing sent" if replayed else f"key {record.key}"
        outcome.line = (
            f"REFUSED: HTTP {status} ({how}); a definitive answer: the operation is completed and "
            "will not "
            f"be retried. `samekey show {shlex.quote(record.operation)}` has the answer"
        )
    elif replayed:
        outcome.outcome = "replayed"
        outcome.line = f"already {_done(record)}, HTTP {status} (replayed, nothing sent)"
    elif status in NOT_ACTED_ON:  # the key stays pending: not done
        outcome.outcome = "failed"
        header = "Proxy-Authorization" if status == 407 else "Authorization"
        outcome.error = f"HTTP {status}, credentials refused"
        outcome.line = (
            f"FAILED: HTTP {status}, credentials refused; the server did not act and the key is "
            "kept. "
            f"The journal never stores credentials: pass them with -H '{header}: ...'"
        )
    else:
        outcome.line = (
            f"HTTP {status} (key {record.key}, attempt {attempts if attempts is not None else '?'})"
        )
    return outcome


# -- the end ----------------------------------------------------------------------------


def _counts(outcomes: list[Outcome]) -> dict[str, int]:
    counts = dict.fromkeys(("completed", "replayed", "failed", "refused"), 0)
    for outcome in outcomes:
        counts[outcome.outcome] += 1
    return counts


def _summary_line(outcomes: list[Outcome], unnamed: list[OperationRecord]) -> str:
    counts = _counts(outcomes)
    refused = f", {counts['refused']} refused by the server" if counts["refused"] else ""
    skipped = f", {len(unnamed)} unnamed skipped" if unnamed else ""
    return (
        f"resumed {len(outcomes)} operation(s): {counts['completed']} completed now, "
        f"{counts['replayed']} already completed, {counts['failed']} failed{refused}{skipped}"
    )


def _print_json(
    records: list[OperationRecord],
    outcomes: list[Outcome],
    unnamed: list[OperationRecord],
    out: TextIO,
    *,
    dry_run: bool = False,
) -> None:
    fields = ("operation", "key", "outcome", "status", "attempts", "error")
    document: dict[str, Any] = {"dry_run": True, "operations": []} if dry_run else {
        "operations": [{name: asdict(o)[name] for name in fields} for o in outcomes],
        "summary": {"operations": len(records), **_counts(outcomes), "skipped": len(unnamed)},
    }  # fmt: skip
    document["skipped"] = [r.operation for r in unnamed]
    out.write(json.dumps(document, indent=2) + "\n")
