"""Body fields the journal never holds (``redact_body=``): card numbers, CVCs.

A client names them by path. In a JSON body a path is keys joined by dots (``card.number``);
a segment ``*`` takes every element of a list (``cards.*.cvc``). In a form body
(``application/x-www-form-urlencoded``) a path is a field name as sent (``card[number]``).
A named field's value becomes the string ``REDACTED`` in what is stored; the rest is kept
so that an operator can still tell the operation. Other bodies (multipart, binary) are
stored as sent, unless the client gives a callable: it gets the body and its Content-Type
and returns the bytes to store.

Whatever was redacted cannot be sent again from the journal: `_sealing` marks such a body,
and `samekey resume` refuses it (the code that made the operation sends the real body).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from ._redaction import REDACTED

__all__ = ["BodyRedactor", "RedactBody", "body_redactor"]

RedactBody = tuple[str, ...] | Callable[[bytes, str], bytes] | None


class BodyRedactor:
    """What one client keeps of a body: ``redact(body,
    content_type)`` -> (stored bytes, changed)."""

    def __init__(
        self,
        paths: tuple[tuple[str, ...], ...],
        forms: frozenset[str],
        fn: Callable[[bytes, str], bytes] | None,
    ):
        self._paths, self._forms, self._fn = paths, forms, fn

    def redact(self, body: bytes, content_type: str) -> tuple[bytes, bool]:
        if not body:
            return body, False
        if self._fn is not None:
            kept = self._fn(body, content_type)
            if not isinstance(kept, bytes):
                raise TypeError(
                    f"redact_body's function must return bytes (the body to store), got {kept!r}"
                )
            return kept, kept != body
        kind = content_type.partition(";")[0].strip().lower()
        if kind == "application/x-www-form-urlencoded":
            return self._form(body)
        if kind == "application/json" or kind.endswith("+json"):
            return self._json(body)
        return body, False

    def _json(self, body: bytes) -> tuple[bytes, bool]:
        try:
            document = json.loads(body)
        except ValueError:
            return (
                body,
                False,
            )  # not JSON after all: kept as sent (sealed, since redaction needs a key)
        changed = False
        for path in self._paths:
            changed = _mask(document, path) or changed
        if not changed:
            return body, False
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode(), True

    def _form(self, body: bytes) -> tuple[bytes, bool]:
        try:
            fields = urllib.parse.parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=True
            )
        except (UnicodeDecodeError, ValueError):
            return body, False
        if not any(name in self._forms for name, _ in fields):
            return body, False
        kept = [(name, REDACTED if name in self._forms else value) for name, value in fields]
        return urllib.parse.urlencode(kept).encode(), True


def _mask(node: Any, path: tuple[str, ...]) -> bool:
    """Replace the value at ``path`` under ``node`` by REDACTED; True if there was one."""
    head, rest = path[0], path[1:]
    if head == "*" and isinstance(node, list):
        children: Iterable[tuple[Any, Any]] = enumerate(node)
    elif isinstance(node, dict) and head in node:
        children = [(head, node[head])]
    elif isinstance(node, list) and head.isdigit() and int(head) < len(node):
        children = [(int(head), node[int(head)])]
    else:
        return False
    changed = False
    for name, child in children:
        if rest:
            changed = _mask(child, rest) or changed
        elif child is not None:
            node[name] = REDACTED
            changed = True
    return changed


def body_redactor(spec: object) -> BodyRedactor | None:
    """The redactor of a ``redact_body=`` value
    (paths or a callable), checked once; None for none."""
    if spec is None or spec == ():
        return None
    if callable(spec):
        return BodyRedactor((), frozenset(), spec)
    listed = (
        None if isinstance(spec, (str, bytes)) or not isinstance(spec, Iterable) else tuple(spec)
    )
    if not listed or not all(
        isinstance(path, str) and path.strip(".") == path and path for path in listed
    ):
        raise TypeError(
            "redact_body must be a tuple of field paths, e.g. "
            "redact_body=('card.number', 'card.cvc') for JSON "
            "or ('card[number]',) for a form (note the comma for one path), or a "
            f"function, got {spec!r}"
        )
    return BodyRedactor(tuple(tuple(path.split(".")) for path in listed), frozenset(listed), None)
