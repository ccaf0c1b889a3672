"""The ``samekey`` command: see and finish what a crashed run left in flight.

    samekey list [--all] [--json]         pending operations (--all: completed ones too)
    samekey show OPERATION [--json]       one whole record, with the stored response
    samekey resume (OPERATION | --all)    send pending operations again, with their keys
                 [--max-attempts N] [--deadline 30s] [-H 'Name: value'] [--base-url URL]
    samekey forget OPERATION [--yes]      drop a record (its key is gone for good)
    samekey purge --older-than 7d         drop completed records older than that

Every subcommand takes ``--journal PATH`` (default: ``$SAMEKEY_JOURNAL`` or the
user state directory; a ``postgresql://`` DSN also works) and ``--debug``.
Exit codes: 0 ok, 1 some operations failed (or were not forgotten), 2 usage or
journal error, 130 interrupted (Ctrl-C), 141 the reader of the output went away
(``samekey list | head -1``: 128 + SIGPIPE, quietly, as other commands do).
Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO, cast

import httpx

from ._attempts import NOT_ACTED_ON
from ._client import Client
from ._contract import JournalStore, OperationRecord
from ._errors import SameKeyError
from ._location import environment_dsn, is_dsn
from ._open import open_for_inspection
from ._policy import RetryPolicy, to_seconds
from ._redaction import dsn_secrets, mask_dsn, scrub
from ._resume import UNNAMED_WARNING, RetargetTransport, bulk_resumable
from ._wire import header_text

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_CLOSED_PIPE = 130, 141  # 128 + SIGINT, 128 + SIGPIPE: what a shell reports for them
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CliError(Exception):
    """A usage or journal problem: one line on stderr, exit code 2."""


# -- parsing ----------------------------------------------------------------------------


def parse_duration(text: str, *, example: str = "7d", positive: bool = False) -> float:
    """``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` (also ``"1.5h"``) -> seconds; 0 or more (``positive``: more)."""
    match = re.fullmatch(r"\s*(-?)(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use a number and a unit s/m/h/d, e.g. {example}")
    seconds = float(match.group(2)) * _UNITS[match.group(3)]
    if positive and (match.group(1) or not seconds):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration: it must be more than 0, e.g. {example}")
    if match.group(1) and seconds:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: a duration must be 0 or more, e.g. {example}")
    return seconds


def positive_duration(example: str) -> Callable[[str], float]:
    """The argparse type of a duration that 0 would make useless (``--key-ttl 0s`` refused every key)."""
    return lambda text: parse_duration(text, example=example, positive=True)


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def parse_header(text: str) -> tuple[bytes, bytes]:
    """``'Name: value'`` -> the header's bytes; the value as the terminal typed it (UTF-8, as curl sends it)."""
    name, sep, value = text.partition(":")
    if (
        not sep
        or not name.strip()
        or name != name.strip()
        or " " in name
        or not name.isascii()
        or not name.isprintable()
    ):
        # never echoed: what follows a missing colon is often the credential itself
        raise argparse.ArgumentTypeError("not a header (value not shown, it may be a secret): use 'Name: value'")
    value = value.strip()
    if "\r" in value or "\n" in value:  # it would end the header on the wire; and the value may be a token
        raise argparse.ArgumentTypeError(
            f"the value of header {name} holds a line break (value not shown, it may be a secret): "
            "a header value is one line; remove the line break, and give each header its own -H"
        )
    return name.encode("ascii"), value.encode("utf-8", "surrogateescape")


def header_argument(text: str) -> list[tuple[bytes, bytes]]:
    """``-H 'Name: value'``, or ``-H @FILE``: one header per line of FILE (as curl reads them), so
    that a credential is in no command line (`ps`, shell history, CI logs)."""
    if not text.startswith("@"):
        return [parse_header(text)]
    path = Path(text[1:]).expanduser()
    try:
        lines = path.read_text(encoding="utf-8-sig", errors="surrogateescape").splitlines()  # -sig: a BOM
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read the header file {path} ({exc.strerror})") from exc
    headers = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            headers.append(parse_header(line.strip()))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{path} line {number} is not a header (value not shown, it may be a secret): use 'Name: value'"
            ) from None
    if not headers:  # an empty secret mount: say so now, not with the server's 401 later
        raise argparse.ArgumentTypeError(f"the header file {path} holds no header: use one 'Name: value' per line")
    return headers


def operation_argument(text: str) -> str:
    """An operation name (or prefix) as typed: UTF-8 text, as the journal keeps names. Bytes that are
    not UTF-8 reach Python as lone surrogates, which sqlite cannot encode (a UnicodeEncodeError)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            shown = repr(text.encode("utf-8", "surrogateescape"))  # the bytes the terminal sent
        except UnicodeEncodeError:
            shown = ascii(text)
        raise argparse.ArgumentTypeError(
            f"{shown} is not valid UTF-8, and operation names are UTF-8 text (no journal holds this one): "
            "type the name as `samekey list --all` shows it, from a terminal set to UTF-8"
        ) from None
    return text


def journal_argument(text: str) -> str:
    """``--journal``: a path or DSN; an empty one (an unset variable) is no journal, not the default one."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "the journal path is empty: give the journal file or a postgresql:// DSN, e.g. --journal "
            "./payments.sqlite3, or leave --journal out to use $SAMEKEY_JOURNAL or the default journal"
        )
    return text


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class _Escaped:
    """Text for a terminal: control characters out of the journal (a server's answer or header, an
    error text) are shown as escapes, never run (an ESC sequence could rewrite the screen or the
    clipboard, a bidi override could reverse what an operator reads). Newlines and tabs stay."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(_CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, ...
        return getattr(self.stream, name)


def _common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--journal",
        metavar="PATH",
        type=journal_argument,
        default=default,
        help="journal file or postgresql:// DSN (default: $SAMEKEY_JOURNAL or the user state directory)",
    )
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    # accepted before and after the subcommand; SUPPRESS keeps an absent one from
    # overriding what was given before it (separate parsers: argparse shares parents' actions)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="samekey",
        description="See and finish keyed HTTP operations that a crashed run left in flight.",
        epilog="Exit codes: 0 ok, 1 some operations failed, 2 usage or journal error, 130 interrupted, "
        "141 output pipe closed.",
    )
    _common_options(parser, None)
    parser.set_defaults(debug=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", parents=[common], help="pending operations (with --all: completed ones too)")
    p.add_argument("--all", action="store_true", help="include completed operations")
    p.add_argument("--json", action="store_true", help="a JSON array of records instead of a table")

    p = sub.add_parser("show", parents=[common], help="one operation's whole record")
    p.add_argument("operation", type=operation_argument)
    p.add_argument("--json", action="store_true", help="a JSON object instead of text")

    p = sub.add_parser("resume", parents=[common], help="send pending operations again, with their own keys")
    p.add_argument("operation", nargs="?", type=operation_argument, help="the operation to resume")
    p.add_argument("--all", action="store_true", help="resume every pending operation, oldest first")
    p.add_argument("--prefix", type=operation_argument, help="with --all: only operations whose name starts with this")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="send to this origin (scheme://host:port, no path) instead of the recorded one; path and query are kept",
    )
    p.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="extend",
        type=header_argument,
        default=[],
        metavar="'NAME: VALUE' | @FILE",
        help="add or override a header, e.g. the Authorization the journal never stores (repeatable); "
        "@FILE reads one header per line from FILE, keeping the credential out of the command line",
    )
    p.add_argument(
        "--max-attempts",
        type=positive_int,
        default=None,
        metavar="N",
        help="attempts per operation in this run, the first included (default 8; 1 = send once, no retries)",
    )
    p.add_argument(
        "--deadline",
        type=positive_duration("30s"),
        default=None,
        metavar="DURATION",
        help="stop retrying an operation after this long, e.g. 30s (default 120s)",
    )
    p.add_argument(
        "--key-ttl",
        type=positive_duration("24h"),
        default=86400.0,
        metavar="DURATION",
        help="refuse keys older than this (default 24h: how long the server keeps keys)",
    )

    p = sub.add_parser("forget", parents=[common], help="remove an operation's record and key")
    p.add_argument("operation", type=operation_argument)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p = sub.add_parser("purge", parents=[common], help="remove completed records older than a duration")
    p.add_argument("--older-than", type=parse_duration, required=True, metavar="DURATION", help="e.g. 7d, 12h, 30m")
    return parser


# -- helpers ----------------------------------------------------------------------------


def open_store(location: str | None, *, read_only: bool = False) -> JournalStore:
    """The journal at ``location``; ``read_only`` for the commands that only look."""
    try:
        return open_for_inspection(location, read_only=read_only)
    except FileNotFoundError as exc:
        raise CliError(f"no journal at {exc.filename} (pass --journal PATH or set $SAMEKEY_JOURNAL)") from None


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def human_age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}" if seconds >= 10 * size else f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def body_fields(prefix: str, body: bytes | None) -> dict[str, Any]:
    if body is None:
        return {prefix: None, f"{prefix}_encoding": None}
    try:
        return {prefix: body.decode("utf-8"), f"{prefix}_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {prefix: base64.b64encode(body).decode("ascii"), f"{prefix}_encoding": "base64"}


def summary(record: OperationRecord, now: float) -> dict[str, Any]:
    """The fields of ``samekey list --json`` (documented in the README)."""
    return {
        "operation": record.operation,
        "state": record.state,
        "method": record.method,
        "url": record.url,
        "key": record.key,
        "key_header": record.key_header,
        "created_at": iso(record.created_at),
        "age_seconds": round(now - record.created_at, 3),
        "attempts": record.attempts,
        "last_error": record.last_error,
        "completed_at": iso(record.completed_at),
        "response_status": record.response_status,
        "lease_owner": record.lease_owner,
        "lease_expires_at": iso(record.lease_expires),
    }


def details(record: OperationRecord, now: float) -> dict[str, Any]:
    """``summary`` plus what ``samekey show --json`` adds: headers and bodies."""
    return {
        **summary(record, now),
        "updated_at": iso(record.updated_at),
        "fingerprint": record.fingerprint,
        "request_headers": [[k, header_text(v)] for k, v in record.request_headers],
        **body_fields("request_body", record.request_body),
        "response_headers": [[k, header_text(v)] for k, v in record.response_headers],
        **body_fields("response_body", record.response_body),
    }


def clip(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")


# -- commands ---------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, store: JournalStore, out: TextIO) -> int:
    now = time.time()
    records = store.records(include_completed=args.all, bodies=False)  # list shows no body: 100k stay quick
    if args.json:
        out.write(json.dumps([summary(r, now) for r in records], indent=2) + "\n")
        return EXIT_OK
    if not records:
        out.write(f"no {'' if args.all else 'pending '}operations in {store.location}\n")
        return EXIT_OK
    head = ["OPERATION", "METHOD", "URL", "KEY", "AGE", "ATTEMPTS", "LAST ERROR"]
    rows = [
        [
            r.operation,
            r.method,
            clip(r.url, 60),
            r.key,
            human_age(now - r.created_at),
            str(r.attempts),
            clip(r.last_error, 60),
        ]
        for r in records
    ]
    if args.all:
        head.insert(1, "STATE")
        for row, r in zip(rows, records, strict=True):
            row.insert(1, r.state if r.pending else f"done {r.response_status}")
    table([head, *rows], out)
    return EXIT_OK


def cmd_show(args: argparse.Namespace, store: JournalStore, out: TextIO) -> int:
    record = store.get(args.operation)
    if record is None:
        raise CliError(f"operation {args.operation!r} is not in the journal {store.location}")
    now = time.time()
    data = details(record, now)
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
        return EXIT_OK
    for name in ("operation", "state", "method", "url", "key_header", "key", "created_at", "updated_at",
                 "attempts", "last_error", "lease_owner", "lease_expires_at", "fingerprint"):  # fmt: skip
        value = data[name]
        if name == "created_at":
            value = f"{value} ({human_age(now - record.created_at)} ago)"
        out.write(f"{name + ':':<18}{'-' if value is None else value}\n")
    out.write("request headers:\n")
    for k, v in record.request_headers:
        out.write(f"  {k}: {header_text(v)}\n")
    out.write(f"request body ({data['request_body_encoding']}, {len(record.request_body)} bytes):\n")
    out.write(f"  {data['request_body']}\n")
    if not record.pending:
        out.write(f"completed_at:     {data['completed_at']}\n")
        out.write(f"response status:  {record.response_status}\nresponse headers:\n")
        for k, v in record.response_headers:
            out.write(f"  {k}: {header_text(v)}\n")
        size = len(record.response_body or b"")
        out.write(f"response body ({data['response_body_encoding']}, {size} bytes):\n  {data['response_body']}\n")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace, store: JournalStore, out: TextIO, err: TextIO) -> int:
    if (args.operation is None) == (not args.all):
        raise CliError("resume needs one OPERATION or --all (not both)")
    if args.prefix is not None and not args.all:
        raise CliError("--prefix goes with --all")
    if args.base_url is not None and not args.base_url.strip():  # else taken as absent: the recorded origin
        raise CliError(
            "--base-url is empty: give the origin to send to, e.g. https://api.example.com "
            "(or leave --base-url out to send to the recorded URL); nothing was sent"
        )
    unnamed: list[OperationRecord] = []  # left alone by --all: see bulk_resumable
    if args.operation is not None:
        record = store.get(args.operation)
        if record is None:
            raise CliError(f"operation {args.operation!r} is not in the journal {store.location}: nothing was sent")
        records = [record]
    else:
        records, unnamed = bulk_resumable(store.records(args.prefix, include_completed=False), args.prefix)
        for record in unnamed:
            out.write(f"skipped {record.operation}: {UNNAMED_WARNING}\n")
        if not records:
            if unnamed:
                out.write(f"nothing resumed: only unnamed operations are pending, skipped above ({store.location})\n")
                return EXIT_FAILED
            out.write(f"nothing to resume: no pending operations in {store.location}\n")
            return EXIT_OK
    limits = {"max_attempts": args.max_attempts, "deadline": args.deadline}
    try:
        policy = RetryPolicy(**{name: value for name, value in limits.items() if value is not None})
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.base_url:
        try:
            RetargetTransport.parse_base_url(args.base_url)  # refuse a bad one before anything is sent
        except ValueError as exc:
            raise CliError(f"--base-url: {exc}; nothing was sent") from exc
    clients: dict[str, Client] = {}
    counts = {"done": 0, "replayed": 0, "failed": 0, "refused": 0}
    try:
        for n, record in enumerate(records, 1):
            client = clients.get(record.key_header.lower())
            if client is None:
                transport = RetargetTransport(args.base_url) if args.base_url else None
                client = Client(
                    journal=store,
                    policy=policy,
                    key_header=record.key_header,
                    key_ttl=args.key_ttl,
                    transport=transport,
                )
                clients[record.key_header.lower()] = client
            label = f"[{n}/{len(records)}] {record.operation}"
            held = (record.lease_expires or 0.0) - time.time()
            if record.pending and record.lease_owner and held > 0:  # else the wait below is silent
                err.write(
                    f"{label}: held by {record.lease_owner} for {held:.0f} s more; waiting for its outcome "
                    "(taken over at once if that process is gone; Ctrl-C stops waiting, nothing is sent meanwhile)\n"
                )
                err.flush()
            try:
                response = client.resume(record.operation, headers=args.headers)
            except (SameKeyError, httpx.HTTPError) as exc:
                counts["failed"] += 1
                out.write(f"{label}: FAILED: {exc}\n")
                if args.debug:
                    _print_traceback(args, err)
            else:
                info = response.extensions.get("samekey")
                replayed = getattr(info, "replayed", False)
                if response.status_code >= 400 and response.status_code not in NOT_ACTED_ON:
                    # definitive (a declined card, a 422): completed and never retried, but not a
                    # success, so a script's `samekey resume --all && ...` must not go on as if paid
                    counts["refused"] += 1
                    how = "replayed from the journal, nothing sent" if replayed else f"key {record.key}"
                    out.write(
                        f"{label}: REFUSED: HTTP {response.status_code} ({how}); a definitive answer: the operation "
                        f"is completed and will not be retried. `samekey show {shlex.quote(record.operation)}` "
                        "has the answer\n"
                    )
                elif replayed:
                    counts["replayed"] += 1
                    out.write(f"{label}: already completed, HTTP {response.status_code} (replayed, nothing sent)\n")
                elif response.status_code in NOT_ACTED_ON:  # the key stays pending: not done
                    counts["failed"] += 1
                    header = "Proxy-Authorization" if response.status_code == 407 else "Authorization"
                    out.write(
                        f"{label}: FAILED: HTTP {response.status_code}, credentials refused; the server did not act "
                        f"and the key is kept. The journal never stores credentials: pass them with "
                        f"-H '{header}: ...'\n"
                    )
                else:
                    counts["done"] += 1
                    attempts = getattr(info, "attempts", "?")
                    out.write(f"{label}: HTTP {response.status_code} (key {record.key}, attempt {attempts})\n")
            out.flush()
    finally:
        for client in clients.values():
            client.close()
    refused = f", {counts['refused']} refused by the server" if counts["refused"] else ""
    skipped = f", {len(unnamed)} unnamed skipped" if unnamed else ""
    out.write(
        f"resumed {len(records)} operation(s): {counts['done']} completed now, "
        f"{counts['replayed']} already completed, {counts['failed']} failed{refused}{skipped}\n"
    )
    return EXIT_FAILED if counts["failed"] or counts["refused"] or unnamed else EXIT_OK


def cmd_forget(args: argparse.Namespace, store: JournalStore, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    record = store.get(args.operation)
    if record is None:
        raise CliError(f"operation {args.operation!r} is not in the journal {store.location}")
    if record.pending:
        warning = (
            f"operation {record.operation!r} is PENDING with key {record.key} ({record.attempts} attempt(s)); "
            "the server may already have acted on it. Once forgotten, running it again uses a NEW key "
            "and may act twice: check the server first."
        )
        left = (record.lease_expires or 0.0) - time.time()
        if record.lease_owner and left > 0:
            warning += (
                f" It is being executed right now by {record.lease_owner} (lease for {left:.0f} s more): "
                "forgetting it under a running request loses the answer it is about to record."
            )
    else:
        warning = f"operation {record.operation!r} completed with HTTP {record.response_status}; its answer is dropped."
    if not args.yes:
        if not stdin.isatty():
            raise CliError(
                f"refusing to forget {record.operation!r} without confirmation: stdin is not a terminal; pass --yes"
            )
        err.write(warning + "\nForget it? [y/N] ")
        err.flush()
        answer = stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            out.write(f"kept {record.operation!r}\n")
            return EXIT_FAILED
    elif record.pending:
        err.write("warning: " + warning + "\n")
    if store.forget(record.operation):
        out.write(f"forgot {record.operation!r} (key {record.key})\n")
        return EXIT_OK
    raise CliError(f"operation {record.operation!r} was removed by someone else meanwhile")


def cmd_purge(args: argparse.Namespace, store: JournalStore, out: TextIO) -> int:
    older_than = to_seconds(args.older_than, "--older-than")
    removed = store.purge_completed(older_than, time.time())
    pending = len(store.records(include_completed=False, bodies=False))
    out.write(
        f"purged {removed} completed record(s) older than {human_age(older_than)}; "
        f"{pending} pending record(s) kept (pending records are never purged)\n"
    )
    return EXIT_OK


# -- entry point ------------------------------------------------------------------------


def _stdout_to_devnull(stdout: TextIO | None) -> None:
    """After a broken pipe: Python flushes sys.stdout once more at exit, which would fail again
    ("Exception ignored ... BrokenPipeError", exit 120); what is left goes to /dev/null instead."""
    if stdout is not None:  # a caller's own stream
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a captured stream): nothing flushed at exit
        pass


def _fail(message: str, err: TextIO) -> int:
    err.write(f"samekey: error: {message}\n")
    return EXIT_USAGE


def _without_password(args: argparse.Namespace, text: str) -> str:
    """``text`` with the journal DSN's password masked: a driver's message may quote it."""
    dsn = args.journal or environment_dsn()
    if not dsn or not is_dsn(dsn):
        return text
    return scrub(text.replace(dsn, mask_dsn(dsn)), dsn_secrets(dsn))


def _print_traceback(args: argparse.Namespace, err: TextIO) -> None:
    """--debug: the traceback of the exception being handled, the DSN's password masked in it."""
    err.write(_without_password(args, traceback.format_exc()))


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    out = cast(TextIO, _Escaped(stdout or sys.stdout))
    err = cast(TextIO, _Escaped(stderr or sys.stderr))
    inp = stdin or sys.stdin
    args = build_parser().parse_args(argv)
    store: JournalStore | None = None
    try:
        store = open_store(args.journal, read_only=args.command in ("list", "show"))
        if args.command == "list":
            code = cmd_list(args, store, out)
        elif args.command == "show":
            code = cmd_show(args, store, out)
        elif args.command == "resume":
            code = cmd_resume(args, store, out, err)
        elif args.command == "forget":
            code = cmd_forget(args, store, out, err, inp)
        else:
            code = cmd_purge(args, store, out)
        out.flush()  # here, not at exit: a reader gone away is the BrokenPipeError below
        return code
    except BrokenPipeError:  # `samekey list | head -1`: the rest is not wanted; no traceback, no error line
        _stdout_to_devnull(stdout)
        return EXIT_CLOSED_PIPE
    except (CliError, SameKeyError) as exc:
        if args.debug:
            _print_traceback(args, err)
        return _fail(str(exc), err)
    except KeyboardInterrupt:
        err.write("samekey: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            _print_traceback(args, err)
        message = _without_password(args, f"unexpected {type(exc).__name__}: {exc}")
        return _fail(f"{message} (run with --debug for the traceback)", err)
    finally:
        if store is not None:
            store.close()
