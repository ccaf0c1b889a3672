"""Bodies encrypted at rest with the user's key (``body_key=``), and the keyed fingerprint.

The key is a secret the journal never holds, the same for every process that shares a
journal (``$SAMEKEY_BODY_KEY`` on each replica). HKDF-SHA256 derives two sub-keys from it:
one seals bodies with AES-256-GCM, one keys the operation's fingerprint (HMAC-SHA256), so
that a fingerprint exposes nothing of a card number (a plain SHA-256 can be enumerated)
and still tells another card number from the first.

A sealed body is ``ENVELOPE + flags + nonce + ciphertext``; the flags say whether fields
were redacted before sealing, and the envelope, flags and operation name are authenticated
with it, so a body moved to another record does not open. An empty body stays empty.
"""

from __future__ import annotations

import hmac
import os
from hashlib import sha256

from ._errors import SameKeyError

__all__ = ["ENVELOPE", "Sealer", "is_sealed", "sealer_of"]

ENVELOPE = b"samekey-sealed-v1:"
_REDACTED_FLAG = 1
MIN_KEY_LENGTH = 32
KEY_ENV = "SAMEKEY_BODY_KEY"
MAKE_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def is_sealed(body: bytes | None) -> bool:
    return body is not None and body.startswith(ENVELOPE)


def was_redacted(body: bytes | None) -> bool:
    """A sealed body whose redacted fields were never stored (resume cannot send it)."""
    return (
        is_sealed(body) and len(body) > len(ENVELOPE) and bool(body[len(ENVELOPE)] & _REDACTED_FLAG)  # type: ignore[arg-type,index]
    )


class Sealer:
    """Seals and opens bodies, and keys fingerprints, with sub-keys of one user key."""

    def __init__(self, key: str | bytes) -> None:
        try:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        except ImportError as exc:
            raise ImportError(
                "body_key= encrypts stored bodies with the 'cryptography' package: pip "
                "install 'samekey[encryption]'"
            ) from exc
        material = key.encode() if isinstance(key, str) else bytes(key)

        def derive(purpose: bytes) -> bytes:
            return HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"samekey " + purpose
            ).derive(material)

        self._aead = AESGCM(derive(b"body encryption"))
        self.fingerprint_key = derive(b"fingerprint")

    def seal(self, body: bytes, operation: str, *, redacted: bool) -> bytes:
        if not body:
            return body
        head = ENVELOPE + bytes([_REDACTED_FLAG if redacted else 0])
        nonce = os.urandom(12)
        return head + nonce + self._aead.encrypt(nonce, body, head + operation.encode())

    def open(self, body: bytes, operation: str) -> bytes:
        """The plain body of a sealed one (others are returned as they are)."""
        if not is_sealed(body):
            return body
        from cryptography.exceptions import InvalidTag

        split = len(ENVELOPE) + 1
        head, nonce, sealed = body[:split], body[split : split + 12], body[split + 12 :]
        try:
            return self._aead.decrypt(nonce, sealed, head + operation.encode())
        except InvalidTag:
            raise SameKeyError(
                f"the stored body of operation {operation!r} does not open with this "
                "body_key: it was sealed with "
                "another key (or changed on disk). Use the key its client had "
                f"(${KEY_ENV}); nothing was sent."
            ) from None

    def keyed(self) -> hmac.HMAC:
        """A fresh keyed hash for a fingerprint."""
        return hmac.new(self.fingerprint_key, digestmod=sha256)


def sealer_of(key: object) -> Sealer | None:
    """The sealer of a ``body_key=`` value (None: ``$SAMEKEY_BODY_KEY``, if set), checked once."""
    if key is None:
        key = os.environ.get(KEY_ENV) or None
        if key is None:
            return None
    if (
        not isinstance(key, (str, bytes))
        or len(key.encode() if isinstance(key, str) else key) < MIN_KEY_LENGTH
    ):
        shown = (
            f"{len(key)} characters" if isinstance(key, (str, bytes)) else f"a {type(key).__name__}"
        )
        raise ValueError(
            f"body_key must be a secret of at least {MIN_KEY_LENGTH} characters, the "
            "same for every process "
            f"sharing the journal (got {shown}); make one with: {MAKE_KEY}, and pass it "
            f"as body_key= or ${KEY_ENV}"
        )
    return Sealer(key)
