"""Signed HTTP pushes to the queue service (ARCHITECTURE §6, docs/push-contract.md), stdlib only.

Keep-alive connections, one per thread. A push returns a `PushResult` whatever
happens; classification into success / permanent / retry follows the contract:
2xx success; 4xx other than 408 and 429 permanent; 408, 429, 5xx, timeouts and
connection errors retried (honouring `Retry-After`); a push no byte of which left on any
of its connections (none could be opened) is marked `reached=False` (the forwarder does not
count it as an attempt during the job's grace). A request cut after it was sent is reached,
even when the resend on a fresh connection is refused: the service may have died handling it. Every send is signed anew
(signature v2: method, path, timestamp, nonce, Idempotency-Key, body digest); a 401
re-reads the secret once (`SecretCache.refresh`, rotation) and sends again, then tries the
previous secret the value holds during a rotation (the service may not have taken up the
new one yet), before it reports the 401 (the forwarder then retries it later, within
`SIGNATURE_REFUSED_GRACE_S`). A body over the contract's limit is never sent (permanent).
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from microprocess.service.rotation import CachedSecret
from microprocess.service.signing import MAX_BODY_BYTES, current_secret, parse_secrets, sign_request


class PushOutcome(StrEnum):
    SUCCESS = "success"
    PERMANENT = "permanent"
    RETRY = "retry"


@dataclass(frozen=True)
class PushResult:
    status: int | None  # None when no response arrived (timeout, connection error)
    body: bytes = b""
    retry_after_s: float | None = None
    error: str | None = None
    #: Refused before sending (e.g. a body over the contract's limit): never retried.
    not_sendable: bool = False
    #: False when the request surely never reached the service (no connection could be opened,
    #: or the push could not be signed): retrying it cannot repeat any work.
    reached: bool = True
    #: A 401 while this process's secret was too recently read to read again (a rotation may
    #: have just happened): retried after the re-read interval, not failed.
    secret_may_be_stale: bool = False
    #: The service's declared shedding header asked every job to wait this long, s (`shedding`).
    shed_after_s: float | None = None

    @property
    def outcome(self) -> PushOutcome:
        if self.not_sendable:
            return PushOutcome.PERMANENT
        if self.status is None or self.secret_may_be_stale:
            return PushOutcome.RETRY
        if 200 <= self.status < 300:
            return PushOutcome.PERMANENT if self.unusable_answer else PushOutcome.SUCCESS
        if 400 <= self.status < 500 and self.status not in (408, 429):
            return PushOutcome.PERMANENT
        return PushOutcome.RETRY

    @cached_property
    def unusable_answer(self) -> str | None:
        """Why this body cannot be a task's result, or None (read for 2xx answers)."""
        return _unusable_answer(self.body)

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def describe(self) -> str:
        """A one-line error for the ledger and the report."""
        if self.status is None:
            return self.error or "no response"
        if 200 <= self.status < 300:
            return f"HTTP {self.status} with {self.unusable_answer or 'a body that is not JSON'}"
        text = self.body[:300].decode("utf-8", errors="replace").strip()
        return f"HTTP {self.status}: {text}" if text else f"HTTP {self.status}"


#: The deepest nesting of arrays and objects a task's answer may have (DynamoDB's own limit for
#: a document; a result becomes report columns). Deeper answers fail their task, not the batch.
MAX_ANSWER_DEPTH = 32


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, without parsing it (a parser
    recurses once per level: thousands of levels would exhaust the stack)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _unusable_answer(body: bytes) -> str | None:
    """Why a 2xx body cannot be a task's result (None: it is JSON the platform can keep)."""
    # (fewer brackets than the limit cannot nest deeper than it: most answers skip the scan)
    brackets = body.count(b"[") + body.count(b"{") if body else 0
    depth = json_depth(body) if brackets > MAX_ANSWER_DEPTH else 0
    if depth > MAX_ANSWER_DEPTH:
        return (
            f"a JSON body nested deeper than {MAX_ANSWER_DEPTH} levels ({depth}): return a flatter result "
            "(or store it in S3 and return its URI)"
        )
    try:
        json.loads(body or b"null")
    except (ValueError, RecursionError):
        return "a body that is not JSON"
    return None


#: The longest backoff a `Retry-After` can ask for: SQS's maximum visibility timeout, seconds.
MAX_RETRY_AFTER_S = 43_200.0
_DELTA_SECONDS = re.compile(r"[0-9]{1,12}")


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds in [0, 43200]: delta-seconds (ASCII digits) or an HTTP date.

    Anything else (`1e400`, `nan`, `-5`, text) is None: the exponential backoff applies.
    """
    if not value:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return min(float(int(text)), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


class SecretCache(CachedSecret):
    """A service's signing secret for the pusher: given directly, or read from Secrets Manager
    once (lazily) and re-read by `refresh()` after a 401 (at most every `min_refresh_interval_s`).

    Args:
        secret: the secret value itself (tests, tools); wins over `secret_arn`.
        secret_arn: the Secrets Manager secret holding the value.
        client: a Secrets Manager client, or a function returning one (created on first read).
    """

    def __init__(
        self,
        *,
        secret: str = "",
        secret_arn: str = "",
        client: Any = None,
        min_refresh_interval_s: float = 5.0,
    ) -> None:
        if not secret and not secret_arn:
            raise ValueError("SecretCache needs the secret or its ARN (SERVICE_ENDPOINTS[<service>].secret_arn)")
        self.secret_arn = secret_arn
        self._client = client

        def load() -> str:
            if secret:
                return secret
            sm = self._client() if callable(self._client) else self._client
            if sm is None:
                raise RuntimeError("SecretCache has no Secrets Manager client to read " + secret_arn)
            return str(sm.get_secret_value(SecretId=secret_arn)["SecretString"])

        super().__init__(load, min_refresh_interval_s=min_refresh_interval_s)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read (its end of file, or bytes nobody asked
    for): it cannot carry a new request."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class HttpPusher:
    """POSTs signed JSON bodies to one base URL.

    Args:
        base_url: the queue service, e.g. `http://127.0.0.1:8081` or the internal ALB URL.
        secret: returns the signing secret value (fetched lazily, cached by the caller); when
            it has a `refresh()` (a `SecretCache`), a 401 re-reads it once and sends again;
            then each older secret of the value (`previous`) is tried.
        max_body_bytes: bodies above this are not sent (the contract's limit).
        shed_header: the service's declared shedding header (`ServiceDeclaration.shed_header`):
            its value, seconds or an HTTP date, becomes `PushResult.shed_after_s`.
    """

    def __init__(
        self,
        base_url: str,
        secret: Callable[[], str],
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        shed_header: str | None = None,
    ) -> None:
        if not base_url:
            raise ValueError("HttpPusher needs the service's URL (SERVICE_ENDPOINTS[<service>].url)")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"queue service URL {base_url!r} must be http(s)://host[:port]")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.secret = secret
        self.max_body_bytes = max_body_bytes
        self.shed_header = shed_header
        self._local = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            # An idle keep-alive connection the service closed (a restart, its idle timeout): a
            # request written to it would be cut without reaching anyone, and then count as sent.
            self._drop()
            conn = None
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def push(self, path: str, payload: dict[str, Any], *, idempotency_key: str, timeout: float) -> PushResult:
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        if len(body) > self.max_body_bytes:
            return PushResult(
                None,
                error=f"body of {len(body)} bytes is over the push contract's limit of {self.max_body_bytes} bytes; "
                "keep items small (large data by reference)",
                not_sendable=True,
            )
        target = self.prefix + path
        reads_before = getattr(self.secret, "reads", None)
        used = self.secret()
        result = self._send(target, body, idempotency_key, timeout, current_secret(used))
        if result.status != 401:
            return result
        # The service may already know a rotated secret this process has not read yet: re-read it
        # (at most every few seconds: a concurrent push may just have done so) and send again
        # when the secret now differs from the one that was refused.
        refresh = getattr(self.secret, "refresh", None)
        reread = refresh() if refresh is not None else None
        fresh = self.secret()
        if fresh != used:
            result = self._send(target, body, idempotency_key, timeout, current_secret(fresh))
            if result.status != 401:
                return result
        # Or the service has not taken up the current secret yet (it re-reads within a minute):
        # the previous one, still in the value during a rotation, is one it accepts meanwhile.
        for older in parse_secrets(fresh)[1:]:
            result = self._send(target, body, idempotency_key, timeout, older)
            if result.status != 401:
                return result
        if reread is False and fresh == used and getattr(self.secret, "reads", None) == reads_before:
            # Not re-read during this push: this process read it moments ago, perhaps just before
            # a rotation the service has already taken. Try again once a re-read is allowed.
            wait = float(getattr(self.secret, "min_refresh_interval_s", 5.0))
            result = replace(result, secret_may_be_stale=True, retry_after_s=max(wait, 1.0))
        return result

    def _send(self, target: str, body: bytes, idempotency_key: str, timeout: float, secret: str) -> PushResult:
        #: Why the request that left on a first connection got no answer (None: none left yet).
        cut: str | None = None
        for attempt in range(2):
            # Signed anew for every send: a fresh nonce, so a resend is never taken for a replay.
            headers = {
                "Content-Type": "application/json",
                **sign_request(secret, "POST", target, body, idempotency_key),
            }
            conn = self._connection(timeout)
            if conn.sock is None:
                try:
                    conn.connect()
                except OSError as exc:  # refused, name not resolved, connect timeout, TLS handshake
                    self._drop()
                    refused = f"could not connect to {self.host}:{self.port}: {type(exc).__name__}: {exc}"
                    if cut is not None:
                        # The request left on the first connection: the service may have read it
                        # and died handling it (a poison item, an OOM, a deploy). It was reached.
                        return PushResult(
                            None, error=f"connection error after the request was sent ({cut}); then {refused}"
                        )
                    return PushResult(None, error=f"service unreachable: {refused}", reached=False)
            try:
                # From here bytes of the request may leave: whatever follows, the push reached it.
                conn.request("POST", target, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self._drop()
                shed = parse_retry_after(resp.getheader(self.shed_header)) if self.shed_header else None
                return PushResult(
                    resp.status, data, parse_retry_after(resp.getheader("Retry-After")), shed_after_s=shed
                )
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                cut = f"{type(exc).__name__}: {exc}"
                if attempt == 0:
                    continue  # a keep-alive connection the server had closed: once more on a fresh one
                return PushResult(None, error=f"connection error after the request was sent: {cut}")
            except TimeoutError:
                self._drop()
                return PushResult(None, error=f"timeout after {timeout:g} s")
            except OSError as exc:
                self._drop()
                return PushResult(None, error=f"connection error: {type(exc).__name__}: {exc}")
            except http.client.HTTPException as exc:
                self._drop()
                return PushResult(None, error=f"protocol error: {type(exc).__name__}: {exc}")
        return PushResult(None, error="unreachable")  # pragma: no cover
