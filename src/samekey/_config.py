"""The options every samekey client and transport takes, validated once into a `Config`.

`Client`, `AsyncClient`, both transports and the `samekey` command build the same frozen
value, as httpx builds its `Timeout` and `Limits`: a bad option fails at construction,
with the problem and the fix, before any journal is opened.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Literal, TypedDict

from ._bodies import BodyRedactor, RedactBody, body_redactor
from ._hooks import EndHook, RetryHook, hooks_from
from ._open import JournalArg
from ._policy import RetryPolicy, to_seconds
from ._sealing import KEY_ENV, MAKE_KEY, Sealer, sealer_of

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Config", "KeyFormat", "OnBusy", "Options"]

KeyFormat = Literal["uuid", "structured"]
OnBusy = Literal["wait", "raise"]

# An HTTP field name (RFC 9110 token): the key header
# is sent on every request of an operation for life
FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Options(TypedDict, total=False):
    """samekey's keywords, as the transports take them (``**options``)."""

    journal: JournalArg
    policy: RetryPolicy | None
    key_header: str
    key_format: KeyFormat
    key_ttl: float | timedelta
    lease: float | timedelta
    on_busy: OnBusy
    redact_headers: tuple[str, ...]
    retention: float | timedelta
    on_retry: RetryHook | Sequence[RetryHook] | None
    redact_body: RedactBody
    body_key: str | bytes | None
    on_end: EndHook | Sequence[EndHook] | None


@dataclass(frozen=True)
class Config:
    """samekey's options, validated: durations in seconds, hooks and header names as tuples."""

    journal: JournalArg = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    key_header: str = "Idempotency-Key"
    key_format: KeyFormat = "uuid"
    key_ttl: float = timedelta(hours=24).total_seconds()
    lease: float = 60.0
    on_busy: OnBusy = "wait"
    redact_headers: frozenset[str] = frozenset()
    retention: float = timedelta(days=7).total_seconds()
    on_retry: tuple[RetryHook, ...] = ()
    bodies: BodyRedactor | None = None  # redact_body=: fields never stored
    # body_key= (or $SAMEKEY_BODY_KEY): bodies sealed, fingerprints keyed
    sealer: Sealer | None = None
    on_end: tuple[EndHook, ...] = ()

    @classmethod
    def of(cls, **options: Unpack[Options]) -> Config:
        """The config of these keywords, each checked, with a clear error naming the fix."""
        policy = options.get("policy")
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise TypeError(f"policy must be a samekey.RetryPolicy, got {policy!r}")
        bodies, sealer = _body_protection(options.get("redact_body"), options.get("body_key"))
        return cls(
            journal=options.get("journal"),
            policy=policy or RetryPolicy(),
            key_header=_key_header(options.get("key_header", "Idempotency-Key")),
            key_format=_choice("key_format", options.get("key_format", "uuid")),  # type: ignore[arg-type]
            key_ttl=to_seconds(options.get("key_ttl", cls.key_ttl), "key_ttl", allow_zero=False),
            lease=_lease(options.get("lease", cls.lease)),
            on_busy=_choice("on_busy", options.get("on_busy", "wait")),  # type: ignore[arg-type]
            redact_headers=_header_names(options.get("redact_headers", ())),
            retention=to_seconds(
                options.get("retention", cls.retention), "retention", allow_zero=False
            ),
            on_retry=hooks_from(options.get("on_retry")),
            bodies=bodies,
            sealer=sealer,
            on_end=hooks_from(options.get("on_end"), "on_end"),
        )


_CHOICES = {
    "key_format": (("uuid", "structured"), "'uuid' (bare, as Stripe) or 'structured' (IETF draft)"),
    "on_busy": (("wait", "raise"), "'wait' or 'raise'"),
}


def _choice(name: str, value: object) -> str:
    allowed, said = _CHOICES[name]
    if value not in allowed:
        raise ValueError(f"{name} must be {said}, got {value!r}")
    return str(value)


def _key_header(name: object) -> str:
    if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
        raise ValueError(
            "key_header must be an HTTP header name (letters, digits and "
            "!#$%&'*+-.^_`|~, no space or "
            f"colon), e.g. 'Idempotency-Key', got {name!r}"
        )
    return name


def _lease(value: float | timedelta) -> float:
    seconds = to_seconds(value, "lease", allow_zero=False)
    if not math.isfinite(seconds):  # an owner that vanished on another host would hold it forever
        raise ValueError(
            "lease must be a finite duration, e.g. lease=60 (seconds, renewed at every "
            f"retry), got {value!r}"
        )
    return seconds


def _header_names(names: object) -> frozenset[str]:
    # a bare string would be read letter by letter, and the header it names written to disk
    listed = (
        None if isinstance(names, (str, bytes)) or not isinstance(names, Iterable) else tuple(names)
    )
    if listed is None or not all(isinstance(name, str) for name in listed):
        raise TypeError(
            "redact_headers must be a tuple of names, e.g. redact_headers=('X-Merchant-Pin',) "
            f"(note the comma for one name), got {names!r}"
        )
    return frozenset(name.lower() for name in listed)


def _body_protection(
    redact_body: object, body_key: object
) -> tuple[BodyRedactor | None, Sealer | None]:
    # without a key, a fingerprint of the real body could be enumerated back to a card number,
    # and one of the redacted body could not tell another card number: refuse, naming the fix
    bodies, sealer = body_redactor(redact_body), sealer_of(body_key)
    if bodies is not None and sealer is None:
        raise ValueError(
            "redact_body needs a body_key: the key keys the fingerprint that tells "
            "another card number from the "
            "first without exposing it, and seals the rest of the body. Make one with: "
            f"{MAKE_KEY}, then pass "
            f"body_key=... or set ${KEY_ENV} (the same key on every process sharing the journal)"
        )
    return bodies, sealer
