"""Signature v2 of the push contract (docs/push-contract.md): signing and verification.

The forwarder signs every push; a service verifies it before it reads or parses the body.
The HMAC-SHA256 signature covers this base string (lines joined by a single `\\n`, no
trailing newline):

    microprocess-v2
    <METHOD>                  upper case, e.g. POST
    <path>                    the request path as sent, without query string
    <timestamp>               X-Microprocess-Timestamp: Unix seconds, 1 to 12 ASCII digits
    <nonce>                   X-Microprocess-Nonce: 16 to 64 characters of [A-Za-z0-9_-]
    <idempotency key>         Idempotency-Key: `<run_id>:<task_id>`
    <body sha-256>            lower-case hex SHA-256 of the raw body bytes

and travels as `X-Microprocess-Signature: v2=<lower-case hex>`. A service accepts a request
when the signature matches one of its secrets (current or previous: rotation; each at least
`MIN_SECRET_CHARS` long), the timestamp is at most `max_age_s` old and at most `max_future_s`
ahead, and the signature was not seen before in this process (`ReplayGuard`; on by default).

Standard library only: a service in any framework (or none) can import this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets as _random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

SCHEME = "microprocess-v2"
TIMESTAMP_HEADER = "X-Microprocess-Timestamp"
NONCE_HEADER = "X-Microprocess-Nonce"
SIGNATURE_HEADER = "X-Microprocess-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: How old a signed request may be, seconds.
DEFAULT_MAX_AGE_S = 300
#: How far ahead of the service's clock a signed request may be dated, seconds (clock skew).
DEFAULT_MAX_FUTURE_S = 30
#: The contract's largest request body, bytes; larger requests get 413 before they are read.
MAX_BODY_BYTES = 10 * 1024 * 1024

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SIGNATURE = re.compile(r"v2=([0-9a-f]{64})")
_IDEMPOTENCY_KEY_MAX = 512
#: The shortest signing secret a service accepts, characters (the stack generates 64). A short
#: secret can be found offline from one signed request: the signature is an HMAC of known text.
MIN_SECRET_CHARS = 16


class SignatureError(Exception):
    """A request whose signature is missing, malformed, wrong, stale, future-dated or replayed (answer 401)."""


class WeakSecret(ValueError):
    """The service's own signing secret is shorter than `MIN_SECRET_CHARS`: a setup error to fix."""


def require_strong(secrets: Sequence[str]) -> Sequence[str]:
    """`secrets` unchanged, or `WeakSecret` naming the minimum when one is too short."""
    for secret in secrets:
        if len(secret) < MIN_SECRET_CHARS:
            raise WeakSecret(
                f"a signing secret of {len(secret)} characters is too short: use at least {MIN_SECRET_CHARS} "
                "random characters (the stack's generated secrets have 64)"
            )
    return secrets


class SignatureMismatch(SignatureError):
    """A well-formed, fresh request whose signature matches none of the secrets (the secret may have rotated)."""


def parse_secrets(value: str | Sequence[str]) -> tuple[str, ...]:
    """The secrets a service accepts, current first, from a secret's value.

    The value may be the secret itself (any string), a JSON object
    `{"current": "...", "previous": "..."}` (previous optional) or a JSON list of strings
    (current first). A sequence of strings is taken as it is.
    """
    if not isinstance(value, str):
        found = tuple(s for s in value if s)
        if not found or not all(isinstance(s, str) for s in found):
            raise ValueError("secrets must be non-empty strings, current first")
        return found
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        current = doc.get("current")
        if not isinstance(current, str) or not current:
            raise ValueError('a JSON signing secret must be {"current": "<secret>", "previous": "<secret>"}')
        previous = doc.get("previous")
        if previous is not None and not isinstance(previous, str):
            raise ValueError('"previous" of the signing secret must be a string')
        return (current, previous) if previous else (current,)
    if isinstance(doc, list):
        found = tuple(doc)
        if not found or not all(isinstance(s, str) and s for s in found):
            raise ValueError("a JSON list signing secret must hold non-empty strings, current first")
        return found
    if not value:
        raise ValueError("the signing secret is empty")
    return (value,)


def current_secret(value: str) -> str:
    """The secret to sign with: the first of `parse_secrets(value)`."""
    return parse_secrets(value)[0]


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def signature_base(method: str, path: str, timestamp: str, nonce: str, idempotency_key: str, body: bytes) -> str:
    """The exact string that is signed (see the module docstring)."""
    return "\n".join((SCHEME, method.upper(), path, timestamp, nonce, idempotency_key, body_digest(body)))


def signature(secret: str, base: str) -> str:
    """`v2=<hex HMAC-SHA256(secret, base)>`."""
    return "v2=" + hmac.new(secret.encode(), base.encode(), hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return _random.token_urlsafe(18)  # 24 characters of [A-Za-z0-9_-]


def sign_request(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    idempotency_key: str,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign one request: timestamp, nonce, Idempotency-Key and signature.

    `secret` is the secret itself (sign with `current_secret(value)` when it may hold two).
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nc = nonce or new_nonce()
    return {
        TIMESTAMP_HEADER: ts,
        NONCE_HEADER: nc,
        IDEMPOTENCY_HEADER: idempotency_key,
        SIGNATURE_HEADER: signature(secret, signature_base(method, path, ts, nc, idempotency_key, body)),
    }


class ReplayGuard:
    """Signatures seen by this process in the last `ttl_s` seconds; a second sight is a replay.

    In memory and per process: a replay sent to another instance of the service is not
    caught here (the contract's idempotency makes it harmless). At most `max_entries` are
    kept; beyond that the oldest are forgotten early.
    """

    def __init__(self, ttl_s: float = DEFAULT_MAX_AGE_S + DEFAULT_MAX_FUTURE_S, max_entries: int = 200_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_sight(self, sig: str, now: float | None = None, *, ttl_s: float | None = None) -> bool:
        """Record `sig` for `ttl_s` (default: the guard's); False when it was already seen within the window."""
        current = time.monotonic() if now is None else now
        with self._lock:
            while self._seen:
                oldest, expires = next(iter(self._seen.items()))
                if expires > current and len(self._seen) < self.max_entries:
                    break
                del self._seen[oldest]
            if sig in self._seen:
                return False
            self._seen[sig] = current + max(self.ttl_s, ttl_s or 0.0)
            return True


#: The replay record `verify()` uses unless given another: one per process, shared by every caller.
PROCESS_REPLAY_GUARD = ReplayGuard()
_PROCESS_GUARD: Final = object()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), None)
    return value


@dataclass(frozen=True)
class SignedHeaders:
    """The signature headers of a request, well-formed and inside the time window."""

    timestamp: str
    nonce: str
    idempotency_key: str
    signature_hex: str


def check_headers(
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    max_age_s: int = DEFAULT_MAX_AGE_S,
    max_future_s: int = DEFAULT_MAX_FUTURE_S,
) -> SignedHeaders:
    """The checks that need neither the body nor a secret: every signature header present and
    well-formed, the timestamp inside the window; `SignatureError` otherwise. A service runs it
    before it reads the body, so an unsigned client holds no body buffer."""
    ts = _header(headers, TIMESTAMP_HEADER)
    nonce = _header(headers, NONCE_HEADER)
    key = _header(headers, IDEMPOTENCY_HEADER)
    sig = _header(headers, SIGNATURE_HEADER)
    missing = [
        n
        for n, v in ((TIMESTAMP_HEADER, ts), (NONCE_HEADER, nonce), (IDEMPOTENCY_HEADER, key), (SIGNATURE_HEADER, sig))
        if not v
    ]
    if missing:
        raise SignatureError(f"missing header(s) {', '.join(missing)}: the request must be signed (signature v2)")
    assert ts is not None and nonce is not None and key is not None and sig is not None
    # Shapes first, before any arithmetic: a 400-digit timestamp is refused, never parsed.
    if not _TIMESTAMP.fullmatch(ts):
        raise SignatureError(f"{TIMESTAMP_HEADER} must be Unix seconds (1 to 12 digits), got {ts[:24]!r}")
    if not _NONCE.fullmatch(nonce):
        raise SignatureError(f"{NONCE_HEADER} must be 16 to 64 characters of [A-Za-z0-9_-]")
    if len(key) > _IDEMPOTENCY_KEY_MAX:
        raise SignatureError(f"{IDEMPOTENCY_HEADER} is longer than {_IDEMPOTENCY_KEY_MAX} characters")
    match = _SIGNATURE.fullmatch(sig.strip())
    if match is None:
        raise SignatureError(f"{SIGNATURE_HEADER} must be 'v2=<64 lower-case hex digits>'")
    current = time.time() if now is None else now
    age = current - int(ts)
    if age > max_age_s:
        raise SignatureError(f"timestamp is {int(age)} s old; at most {max_age_s} s allowed")
    if -age > max_future_s:
        raise SignatureError(f"timestamp is {int(-age)} s in the future; at most {max_future_s} s allowed")
    return SignedHeaders(ts, nonce, key, match.group(1))


def verify(
    headers: Mapping[str, str],
    raw_body: bytes,
    method: str,
    path: str,
    secrets: str | Sequence[str],
    *,
    now: float | None = None,
    max_age_s: int = DEFAULT_MAX_AGE_S,
    max_future_s: int = DEFAULT_MAX_FUTURE_S,
    replay_guard: ReplayGuard | object | None = _PROCESS_GUARD,
) -> str:
    """Check a request's signature v2; return its Idempotency-Key, or raise `SignatureError`.

    Args:
        headers: the request headers (any mapping; names are matched case-insensitively).
        raw_body: the body bytes exactly as received, before any parsing.
        method, path: the request's method and path (no query string).
        secrets: the accepted secrets, current first, or a secret value for `parse_secrets`.
        now: the service's clock, Unix seconds (tests).
        max_age_s, max_future_s: the time window around `now`, seconds.
        replay_guard: refuses a signature seen before; by default the process's own
            (`PROCESS_REPLAY_GUARD`), so a replay is refused even by a caller who gave none.
            None turns the check off (tests and tools only: the contract requires it).

    Raises `WeakSecret` when a secret of the service is shorter than `MIN_SECRET_CHARS`.
    """
    signed = check_headers(headers, now=now, max_age_s=max_age_s, max_future_s=max_future_s)
    ts, nonce, key, sig_hex = signed.timestamp, signed.nonce, signed.idempotency_key, signed.signature_hex
    base = signature_base(method, path, ts, nonce, key, raw_body)
    accepted = require_strong(parse_secrets(secrets))
    if not any(hmac.compare_digest(signature(s, base), "v2=" + sig_hex) for s in accepted):
        raise SignatureMismatch("signature does not match this method, path, timestamp, nonce, key and body")
    guard = PROCESS_REPLAY_GUARD if replay_guard is _PROCESS_GUARD else replay_guard
    # Kept as long as the window lets the signature through (a wider window than the guard's).
    if isinstance(guard, ReplayGuard) and not guard.first_sight(sig_hex, ttl_s=max_age_s + max_future_s):
        raise SignatureError("replayed request: this signature was already used; sign every request anew")
    return key
