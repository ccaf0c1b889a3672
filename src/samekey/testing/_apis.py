"""How the loopback `PaymentServer` speaks like the APIs payment SDKs call.

``PaymentServer(api=STRIPE)`` answers stripe-python, ``api=SQUARE`` Square's SDK, ``api=INCREASE``
Increase's (and the other httpx-based SDKs'); the default, ``PLAIN``, is samekey's own JSON
``/charges``. An `Api` says three things: where the key is (a header, or a JSON body field as
Square's ``idempotency_key``), how the body reads (JSON, or form-encoded as Stripe's), and what
a charge and an error look like in the answer. Every POST charges, whatever its path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["INCREASE", "PLAIN", "SQUARE", "STRIPE", "Api"]


@dataclass(frozen=True)
class Api:
    name: str
    answer: Callable[[int, dict[str, Any]], dict[str, Any]]  # (charge number, payload) -> body
    error: Callable[[str], dict[str, Any]] = lambda message: {"error": message}
    key_field: str | None = None  # the JSON body field of the key; None: the Idempotency-Key header
    form: bool = False  # application/x-www-form-urlencoded bodies

    def key(self, headers: dict[str, str], raw: bytes) -> str | None:
        if self.key_field is None:
            return headers.get("idempotency-key")
        try:
            value = json.loads(raw or b"{}").get(self.key_field)
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) and value else None

    def payload(self, raw: bytes) -> dict[str, Any]:
        """The request's fields; ValueError when the body does not read."""
        if self.form:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
            return dict(pairs)
        value = json.loads(raw or b"{}")
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value

    def error_body(self, body: bytes) -> bytes:
        """One of the server's own error bodies (``{"error": "..."}``) as this API writes errors."""
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return body
        return json.dumps(self.error(str(message))).encode() if isinstance(message, str) else body


PLAIN = Api("plain", answer=lambda n, payload: {"id": f"ch_{n}", **payload})

STRIPE = Api(
    "stripe",
    form=True,
    answer=lambda n, p: {
        "id": f"pi_{n}",
        "object": "payment_intent",
        "amount": int(p.get("amount", 0)),
        "currency": p.get("currency", "usd"),
        "status": "succeeded",
    },
    error=lambda message: {"error": {"type": "api_error", "message": message}},
)


def _square_error(message: str) -> dict[str, Any]:
    error = {"category": "API_ERROR", "code": "INTERNAL_SERVER_ERROR", "detail": message}
    return {"errors": [error]}


SQUARE = Api(
    "square",
    key_field="idempotency_key",
    answer=lambda n, p: {
        "payment": {
            "id": f"sq_{n}",
            "status": "COMPLETED",
            "amount_money": p.get("amount_money"),
            "source_type": "CARD",
        },
    },
    error=_square_error,
)

INCREASE = Api(
    "increase",
    answer=lambda n, p: {
        "id": f"account_transfer_{n}",
        "type": "account_transfer",
        "status": "complete",
        **p,
    },
    error=lambda message: {
        "type": "internal_server_error",
        "title": message,
        "status": 500,
        "detail": message,
    },
)
