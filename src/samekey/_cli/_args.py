"""The command line: argument types that check what was typed, and the parser.

Every type raises ``argparse.ArgumentTypeError`` with the problem and an example, so
argparse prints it as ``argument --x: ...`` and exits 2 before anything is opened.
A header's value is never echoed: it is often the credential itself.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._version import __version__

__all__ = [
    "build_parser",
    "header_argument",
    "operation_argument",
    "parse_duration",
    "parse_header",
    "positive_duration",
    "positive_int",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = r"(\d+(?:\.\d+)?)\s*([smhdw])"
_DURATION = re.compile(rf"\s*(-?)\s*((?:{_PART}\s*)+)")


def parse_duration(text: str, *, example: str = "7d", positive: bool = False) -> float:
    """``"90s"``, ``"15m"``, ``"1.5h"``, ``"7d"``, ``"1w"``, ``"1h30m"`` -> seconds; 0 or more
    (``positive``: more than 0)."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use numbers with units s/m/h/d/w, e.g. {example} or 1h30m"
        )
    seconds = sum(float(n) * _UNITS[unit] for n, unit in re.findall(_PART, match.group(2)))
    if positive and (match.group(1) or not seconds):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive duration: it must be more than 0, e.g. {example}"
        )
    if match.group(1) and seconds:
        raise argparse.ArgumentTypeError(
            f"{text!r} is negative: a duration must be 0 or more, e.g. {example}"
        )
    return seconds


def positive_duration(example: str) -> Callable[[str], float]:
    """The argparse type of a duration 0 would make useless (``--key-ttl 0s`` refused every key)."""
    return lambda text: parse_duration(text, example=example, positive=True)


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def parse_header(text: str) -> tuple[bytes, bytes]:
    """``'Name: value'`` -> the header's bytes; the value as the terminal typed it (UTF-8, as
    curl sends it)."""
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
        raise argparse.ArgumentTypeError(
            "not a header (value not shown, it may be a secret): use 'Name: value'"
        )
    value = value.strip()
    if (
        "\r" in value or "\n" in value
    ):  # it would end the header on the wire; and the value may be a token
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
        lines = path.read_text(
            encoding="utf-8-sig", errors="surrogateescape"
        ).splitlines()  # -sig: a BOM
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"cannot read the header file {path} ({exc.strerror})"
        ) from exc
    headers = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            headers.append(parse_header(line.strip()))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{path} line {number} is not a header (value not shown, it may be a secret): use "
                "'Name: value'"
            ) from None
    if not headers:  # an empty secret mount: say so now, not with the server's 401 later
        raise argparse.ArgumentTypeError(
            f"the header file {path} holds no header: use one 'Name: value' per line"
        )
    return headers


def operation_argument(text: str) -> str:
    """An operation name (or prefix) as typed: UTF-8 text, as the journal keeps names. Bytes
    that are not UTF-8 reach Python as lone surrogates, which sqlite cannot encode
    (a UnicodeEncodeError)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            shown = repr(text.encode("utf-8", "surrogateescape"))  # the bytes the terminal sent
        except UnicodeEncodeError:
            shown = ascii(text)
        raise argparse.ArgumentTypeError(
            f"{shown} is not valid UTF-8, and operation names are UTF-8 text (no journal holds "
            "this one): "
            "type the name as `samekey list --all` shows it, from a terminal set to UTF-8"
        ) from None
    return text


def journal_argument(text: str) -> str:
    """``--journal``: a path or DSN; an empty one (an unset variable) is no journal, not the
    default one."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "the journal path is empty: give the journal file or a postgresql:// DSN, e.g. "
            "--journal "
            "./payments.sqlite3, or leave --journal out to use $SAMEKEY_JOURNAL or the default "
            "journal"
        )
    return text


# -- the parser -------------------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--journal",
        metavar="PATH",
        type=journal_argument,
        default=default,
        help="journal file or postgresql:// DSN "
        "(default: $SAMEKEY_JOURNAL or the user state directory)",
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
        epilog="Exit codes: 0 ok, 1 some operations failed, 2 usage or journal error, "
        "130 interrupted, "
        "141 output pipe closed.",
    )
    parser.add_argument("--version", action="version", version=f"samekey {__version__}")
    _common_options(parser, None)
    parser.set_defaults(debug=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _list_parser(
        sub.add_parser("list", parents=[common], help="pending operations (--all: completed too)")
    )
    p = sub.add_parser("show", parents=[common], help="one operation's whole record")
    p.add_argument("operation", type=operation_argument)
    p.add_argument("--json", action="store_true", help="a JSON object instead of text")
    _resume_parser(
        sub.add_parser("resume", parents=[common], help="send pending operations again, same keys")
    )
    p = sub.add_parser("forget", parents=[common], help="remove an operation's record and key")
    p.add_argument("operation", type=operation_argument)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p = sub.add_parser(
        "purge", parents=[common], help="remove completed records older than a duration"
    )
    p.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="e.g. 7d, 1w, 12h",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="count and list what would be deleted; delete nothing",
    )
    return parser


def _list_parser(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="include completed operations")
    which.add_argument(
        "--state", choices=("pending", "completed"), help="only operations in this state"
    )
    p.add_argument(
        "--prefix", type=operation_argument, help="only operations whose name starts with this"
    )
    p.add_argument(
        "--older-than",
        type=parse_duration,
        metavar="DURATION",
        help="only operations created longer ago, e.g. 1h",
    )
    p.add_argument(
        "--limit", type=positive_int, metavar="N", help="at most N operations (the oldest first)"
    )
    p.add_argument("--json", action="store_true", help="a JSON array of records instead of a table")


def _resume_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("operation", nargs="?", type=operation_argument, help="the operation to resume")
    p.add_argument(
        "--all", action="store_true", help="resume every pending operation, oldest first"
    )
    p.add_argument(
        "--prefix",
        type=operation_argument,
        help="with --all: only operations whose name starts with this",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="send to this origin (scheme://host:port, no path) instead of the recorded one; "
        "path and query are kept",
    )
    p.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="extend",
        type=header_argument,
        default=[],
        metavar="'NAME: VALUE' | @FILE",
        help="add or override a header, e.g. the Authorization the journal never stores "
        "(repeatable); @FILE reads one header per line from FILE, keeping the credential out "
        "of the command line",
    )
    _resume_limits(p)
    _resume_output(p)


def _resume_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-attempts",
        type=positive_int,
        default=None,
        metavar="N",
        help="attempts per operation in this run, the first included "
        "(default 8; 1 = send once, no retries)",
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
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="operations sent at once, each thread with its own client "
        "(default 4; 1 = one at a time)",
    )


def _resume_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be sent, to where, with which key; send nothing",
    )
    p.add_argument(
        "--json", action="store_true", help="the outcome (or the --dry-run plan) as one JSON object"
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="one line on stderr per failed attempt, as it happens",
    )
