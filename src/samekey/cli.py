"""The ``samekey`` command: see and finish what a crashed run left in flight.

    samekey list [--all | --state S] [--prefix P] [--older-than 1h] [--limit N]
                 [--after CURSOR] [--json]
    samekey show OPERATION [--json]       one whole record, with the stored response
    samekey resume (OPERATION | --all)    send pending operations again, with their keys
                 [--concurrency N] [--dry-run] [--json] [-v] [--max-attempts N] [--deadline 30s]
                 [-H 'Name: value'] [--base-url URL]
    samekey settle OPERATION --status CODE [--note TEXT] [--yes]
                                          complete a pending operation by hand
    samekey forget OPERATION [--yes]      drop a record (its key is gone for good)
    samekey purge --older-than 7d [--dry-run]   drop completed records older than that
    samekey --version

Every subcommand takes ``--journal PATH`` (default: ``$SAMEKEY_JOURNAL`` or the
user state directory; a ``postgresql://`` DSN also works) and ``--debug``.
Exit codes: 0 ok, 1 some operations failed (or were not forgotten or settled), 2 usage or
journal error, 130 interrupted (Ctrl-C), 141 the reader of the output went away
(``samekey list | head -1``: 128 + SIGPIPE, quietly, as other commands do).
Errors are one line on stderr; ``--debug`` adds the traceback. The commands
themselves live in `samekey._cli`, one module per concern.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TextIO, cast

from ._cli._args import build_parser, parse_duration
from ._cli._base import EXIT_CLOSED_PIPE, EXIT_INTERRUPTED, EXIT_USAGE, CliError
from ._cli._inspect import cmd_list, cmd_show
from ._cli._maintain import cmd_forget, cmd_purge
from ._cli._output import Escaped, without_password
from ._cli._resume import cmd_resume
from ._cli._settle import cmd_settle
from ._contract import JournalStore
from ._errors import SameKeyError
from ._open import open_for_inspection

__all__ = ["build_parser", "main", "parse_duration"]


def open_store(location: str | None, *, read_only: bool = False) -> JournalStore:
    """The journal at ``location``; ``read_only`` for the commands that only look (a read-only
    mount, or a folder the operator may not write, must not stop `list` and `show`)."""
    try:
        return open_for_inspection(location, read_only=read_only)
    except FileNotFoundError as exc:  # never create a journal just to list it
        raise CliError(
            f"no journal at {exc.filename} (pass --journal PATH or set $SAMEKEY_JOURNAL)"
        ) from None


def _only_looks(args: argparse.Namespace) -> bool:
    return args.command in ("list", "show") or getattr(args, "dry_run", False)


def _run(
    args: argparse.Namespace,
    store: JournalStore,
    out: TextIO,
    err: TextIO,
    raw: TextIO,
    inp: TextIO,
) -> int:
    if args.command == "list":
        return cmd_list(args, store, out, err)
    if args.command == "show":
        return cmd_show(args, store, out)
    if args.command == "resume":
        return cmd_resume(args, store, out, err, raw)
    if args.command == "forget":
        return cmd_forget(args, store, out, err, inp)
    if args.command == "settle":
        return cmd_settle(args, store, out, err, inp)
    return cmd_purge(args, store, out)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    out = cast(TextIO, Escaped(stdout or sys.stdout))
    err = cast(TextIO, Escaped(stderr or sys.stderr))
    args = build_parser().parse_args(argv)
    store: JournalStore | None = None
    try:
        store = open_store(args.journal, read_only=_only_looks(args))
        code = _run(args, store, out, err, stderr or sys.stderr, stdin or sys.stdin)
        out.flush()  # here, not at exit: a reader gone away is the BrokenPipeError below
        return code
    except BrokenPipeError:  # `samekey list | head -1`: the rest is not wanted, quietly
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
        message = without_password(args.journal, f"unexpected {type(exc).__name__}: {exc}")
        return _fail(f"{message} (run with --debug for the traceback)", err)
    finally:
        if store is not None:
            store.close()


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


def _print_traceback(args: argparse.Namespace, err: TextIO) -> None:
    """--debug: the traceback of the exception being handled, the DSN's password masked in it."""
    err.write(without_password(args.journal, traceback.format_exc()))
