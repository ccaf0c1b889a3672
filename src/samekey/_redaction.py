"""What never reaches the disk or a log: credentials in headers, URLs, errors and DSNs.

Headers whose name marks a credential (Authorization, Cookie, X-Api-Key, ...) are never
journaled; secret query values are journaled as ``REDACTED``; an error that quotes a
credential is scrubbed before it is journaled or raised; a PostgreSQL DSN is shown with
every password masked, read as libpq reads it. A header wrongly taken for a credential is
merely not stored, so the rules lean that way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Set as AbstractSet
from urllib.parse import unquote

import httpx

from ._errors import error_text

__all__ = [
    "REDACTED",
    "Redactor",
    "dsn_secrets",
    "redact_dsn",
    "is_secret_header",
    "is_secret_param",
    "mask_dsn",
    "scrub",
]

REDACTED = "REDACTED"  # what a secret query value is journaled as

# Header names never written to disk, compared case-insensitively; any name containing
# one of SECRET_PARTS is treated as a credential too (X-Api-Key, Ocp-Apim-Subscription-Key,
# X-Auth-Token, X-Amz-Credential, ...).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
SECRET_PARTS = (
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "auth",
    "session",
    "signature",
    "credential",
)
NOT_SECRET_HEADERS = (
    "idempotency-key",
)  # the key itself (also as X-Idempotency-Key) is no credential
# Query parameters whose name contains one of these. Frozen: the stored URL is part of an
# operation's identity, so a change here would turn pending records into mismatches.
SECRET_PARAM_PARTS = (
    "api-key",
    "apikey",
    "api_key",
    "token",
    "secret",
    "password",
    "auth",
    "session",
    "signature",
)
# Headers never journaled because they are rebuilt on every send
NOT_STORED_HEADERS = frozenset({"content-length", "host", "transfer-encoding", "connection"})


@functools.lru_cache(maxsize=1024)  # a client sees the same few header names on every request
def is_secret_header(name: str, extra: frozenset[str] = frozenset()) -> bool:
    lowered = name.lower()
    if lowered in SECRET_HEADERS or lowered in extra:
        return True
    return any(p in lowered for p in SECRET_PARTS) and not lowered.endswith(NOT_SECRET_HEADERS)


@functools.lru_cache(maxsize=1024)
def is_secret_param(name: str, extra: frozenset[str] = frozenset()) -> bool:
    lowered = name.lower()
    return (
        lowered in SECRET_HEADERS
        or lowered in extra
        or any(p in lowered for p in SECRET_PARAM_PARTS)
    )


class Redactor:
    """One client's rules: its key header (journaled apart) and its extra secret names."""

    def __init__(self, key_header: str, redact: frozenset[str]) -> None:
        self.redact = frozenset(h.lower() for h in redact)
        self._key_name = key_header.lower()
        self._not_stored = NOT_STORED_HEADERS | {self._key_name}
        # raw header name -> (its name, never journaled): a request's, an answer's
        self._request_names: dict[bytes, tuple[str, bool]] = {}
        self._answer_names: dict[bytes, tuple[str, bool]] = {}

    def scan_headers(
        self, headers: httpx.Headers
    ) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        """(the caller's key header, the headers to journal), in one pass over the raw headers."""
        keys: list[str] = []
        stored: list[tuple[str, str]] = []
        known = self._request_names
        for raw_name, raw_value in headers.raw:
            found = known.get(raw_name)  # looked up here: a call per header costs more
            name, hidden = found or self._learned(known, raw_name, self._not_stored)
            if name == self._key_name:
                # as httpx reads it: the flow sets it back with request.headers[...] = key
                keys.append(raw_value.decode(headers.encoding))
            if not hidden:
                stored.append((name, raw_value.decode("latin-1")))  # lossless: see header_bytes
        return (", ".join(keys) if keys else None), tuple(stored)

    def response_headers(self, headers: httpx.Headers) -> list[tuple[str, str]]:
        """The answer's headers as journaled: credentials (Set-Cookie, ...) removed."""
        kept = []
        known = self._answer_names
        for raw_name, raw_value in headers.raw:
            found = known.get(raw_name)
            name, hidden = found or self._learned(known, raw_name, frozenset())
            if not hidden:
                kept.append((name, raw_value.decode("latin-1")))  # lossless: see header_bytes
        return kept

    def _learned(
        self, cache: dict[bytes, tuple[str, bool]], raw_name: bytes, not_stored: AbstractSet[str]
    ) -> tuple[str, bool]:
        """A raw header name's text, and whether it is kept out of the journal (``not_stored``
        or a secret), kept in ``cache``: a client sees the same few names again and again."""
        if len(cache) > 1024:  # names made up per message: do not grow without bound
            cache.clear()
        name = raw_name.lower().decode("latin-1")
        hidden = name in not_stored or is_secret_header(name, self.redact)
        found = cache[raw_name] = (name, hidden)
        return found

    def url(self, url: httpx.URL) -> str:
        """The URL as journaled and fingerprinted: no user:password, secret query values hidden,
        so a request with a rotated API key is still the same operation."""
        if url.userinfo:  # httpx sends it as an Authorization header: it is a credential
            url = url.copy_with(username=None, password=None)
        if url.query:
            params = url.params.multi_items()
            if any(is_secret_param(name, self.redact) for name, _ in params):
                hidden = [
                    (name, REDACTED if is_secret_param(name, self.redact) else value)
                    for name, value in params
                ]
                url = url.copy_with(params=hidden)
        return str(url)

    def describe(
        self, exc: BaseException | None, response: httpx.Response | None, request: httpx.Request
    ) -> str | None:
        """An attempt's outcome as journaled (last_error) and logged, the request's credentials
        hidden.

        An error may quote them: h11 refuses a token read with its newline as
        ``Illegal header value b'Bearer sk_live_...\\n'``, and `samekey list` shows last_error.
        """
        if exc is None:
            return None if response is None else f"HTTP {response.status_code}"
        text = error_text(exc)
        for secret in sorted(self._credentials(request), key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text[:500]  # cut after hiding: a cut could leave part of a credential unmatched

    def _credentials(self, request: httpx.Request) -> set[str]:
        """The values kept off the disk, in every form an error may print them."""
        values = [
            value
            for name, value in request.headers.raw
            if self._is_credential(name.lower().decode("latin-1"))
        ]
        url = request.url
        if url.userinfo:
            values += [url.userinfo, *url.userinfo.split(b":", 1)]
        for name, param in url.params.multi_items():
            if is_secret_param(name, self.redact):
                values.append(param.encode())
        found = set()
        for value in values:
            # as the bytes read as text, and as Python
            # prints bytes (an error's {!r}: newlines escaped)
            for form in (value.decode("latin-1"), repr(bytes(value))[2:-1]):
                if form.strip():
                    found.add(form)
        return found

    def _is_credential(self, name: str) -> bool:
        return name not in self._not_stored and is_secret_header(name, self.redact)


# -- PostgreSQL DSNs ----------------------------------------------------------------------

MASK = "***"
# the connection parameters that hold a secret: the user's password, the SSL client key's
_SECRET_KEYS = frozenset({"password", "sslpassword"})
_URL_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")


def mask_dsn(dsn: str) -> str:
    """The DSN with every password replaced by ``***``: URL (``postgresql://user:PASSWORD@host``,
    ``?password=``) and key=value (``password=...``, quoted or not) forms, read as libpq reads them,
    so a ``#``, ``?``, ``/``, ``@`` or space in a password (percent-encoded or quoted) is masked
    whole."""
    return redact_dsn(dsn)[0]


def dsn_secrets(dsn: str) -> list[str]:
    """Every password of the DSN, as written and as decoded, the longest first: to wipe them out of
    any text that may quote them (a driver's error message, a traceback)."""
    return redact_dsn(dsn)[1]


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret (of at least 3 characters: a shorter one would mask unrelated
    text) replaced by ``***``."""
    for secret in secrets:
        if len(secret) >= 3:
            text = text.replace(secret, MASK)
    return text


def redact_dsn(dsn: str) -> tuple[str, list[str]]:
    """(the DSN masked, every password in it as written and decoded, the longest first)."""
    masked, found = _mask_url(dsn) if _URL_SCHEME.match(dsn) else _mask_key_values(dsn)
    secrets = {piece for secret in found if secret for piece in (secret, secret.strip())}
    try:  # libpq's own reading, where psycopg is installed, has the last word
        from psycopg.conninfo import conninfo_to_dict

        parsed = conninfo_to_dict(dsn)
    except Exception:  # no psycopg, or a DSN it cannot parse: the reading above is all there is
        parsed = {}
    for key in _SECRET_KEYS:
        value = parsed.get(key)
        if isinstance(value, str) and value and value not in secrets:
            secrets.add(value)
            masked = scrub(masked, [value])
    return masked, sorted(secrets, key=len, reverse=True)


def _mask_url(dsn: str) -> tuple[str, list[str]]:
    head, _, rest = dsn.partition("://")
    found: list[str] = []
    at = rest.find("@")
    slash = rest.find("/")
    # libpq reads user[:password] up to the first '@' before any '/'. A password written with a raw
    # '/' (not %2F) ends that early, so the '@' after it counts too, unless a query came first.
    if at >= 0 and (slash < 0 or at < slash or "?" not in rest[:at]):
        # a raw '@' in the password (not %40): libpq would take what follows it for the host
        authority_end = min(
            (i for i in (rest.find("/", at), rest.find("?", at)) if i >= 0), default=len(rest)
        )
        end = rest.rfind("@", 0, authority_end)
        user, colon, password = rest[:end].partition(":")
        if colon:
            found += [password, unquote(password), *re.split(r"[@/]", password)]
            rest = f"{user}:{MASK}{rest[end:]}"
        start = rest.find("@") + 1
    else:
        start = 0
    query = rest.find("?", start)
    if query >= 0:
        params = rest[query + 1 :].split("&")
        for i, param in enumerate(params):
            key, equals, value = param.partition("=")
            if equals and unquote(key).strip().lower() in _SECRET_KEYS:
                found += [value, unquote(value)]
                params[i] = f"{key}={MASK}"
        rest = rest[: query + 1] + "&".join(params)
    return f"{head}://{rest}", found


def _mask_key_values(dsn: str) -> tuple[str, list[str]]:
    """key=value pairs as libpq's conninfo_parse reads them: values quoted with '...' or bare up to
    a space, a backslash escaping the next character in both."""
    out: list[str] = []
    found: list[str] = []
    i, n = 0, len(dsn)
    while i < n:
        start = i
        while i < n and dsn[i].isspace():
            i += 1
        key_start = i
        while i < n and dsn[i] != "=" and not dsn[i].isspace():
            i += 1
        secret = dsn[key_start:i].lower() in _SECRET_KEYS
        while i < n and dsn[i].isspace():
            i += 1
        if (
            i >= n or dsn[i] != "="
        ):  # malformed: after a secret's name, all the rest may be the secret
            out.append(dsn[start:i] + MASK if secret else dsn[start:])
            if secret:
                found.append(dsn[i:])
            break
        i += 1
        while i < n and dsn[i].isspace():
            i += 1
        value_start = i
        value: list[str] = []
        quoted = i < n and dsn[i] == "'"
        i += quoted
        while i < n:
            if dsn[i] == "\\" and i + 1 < n:
                value.append(dsn[i + 1])
                i += 2
            elif (dsn[i] == "'") if quoted else dsn[i].isspace():
                i += quoted
                break
            else:
                value.append(dsn[i])
                i += 1
        else:
            if quoted:  # unterminated: the secret may run to the end
                value = [dsn[value_start + 1 :]]
        if secret:
            found += [dsn[value_start:i], "".join(value)]
            out.append(dsn[start:value_start] + MASK)
        else:
            out.append(dsn[start:i])
    return "".join(out), found
