"""HMAC-SHA256 request signing between the forwarder and the queue service.

The signature covers `<timestamp>.<body>`; the timestamp (Unix seconds) travels
in `X-Microprocess-Timestamp`, the hex signature in `X-Microprocess-Signature`
as `v1=<hex>`. The service accepts a request only when the signature matches
and the timestamp is within `max_skew_s` of its own clock.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Microprocess-Timestamp"
SIGNATURE_HEADER = "X-Microprocess-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_MAX_SKEW_S = 300


class SignatureError(Exception):
    """A request whose signature is missing, malformed, wrong or stale."""


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers that sign `body` with `secret` at `timestamp` (now by default)."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: f"v1={mac}"}


def verify(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    now: float | None = None,
    max_skew_s: int = DEFAULT_MAX_SKEW_S,
) -> None:
    """Raise `SignatureError` unless `signature` is valid for `body` at a fresh `timestamp`."""
    if not timestamp or not signature:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - ts) > max_skew_s:
        raise SignatureError(f"timestamp is {int(current - ts)} s away from now; at most {max_skew_s} s allowed")
    if not signature.startswith("v1="):
        raise SignatureError("signature must be 'v1=<hex sha256>'")
    expected = sign(secret, body, ts)[SIGNATURE_HEADER]
    if not hmac.compare_digest(expected, signature):
        raise SignatureError("signature does not match the body")
