"""Signed HTTP pushes to the queue service (ARCHITECTURE §6), with the stdlib only.

Keep-alive connections, one per thread. A push returns a `PushResult` whatever
happens; classification into success / permanent / retry follows the contract:
2xx success; 4xx other than 408 and 429 permanent; 408, 429, 5xx, timeouts and
connection errors retried (honouring `Retry-After`).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from microprocess.service.signing import IDEMPOTENCY_HEADER, sign


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

    @property
    def outcome(self) -> PushOutcome:
        if self.status is None:
            return PushOutcome.RETRY
        if 200 <= self.status < 300:
            try:
                json.loads(self.body or b"null")
            except ValueError:
                return PushOutcome.PERMANENT
            return PushOutcome.SUCCESS
        if 400 <= self.status < 500 and self.status not in (408, 429):
            return PushOutcome.PERMANENT
        return PushOutcome.RETRY

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def describe(self) -> str:
        """A one-line error for the ledger and the report."""
        if self.status is None:
            return self.error or "no response"
        if 200 <= self.status < 300:
            return f"HTTP {self.status} with a body that is not JSON"
        text = self.body[:300].decode("utf-8", errors="replace").strip()
        return f"HTTP {self.status}: {text}" if text else f"HTTP {self.status}"


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


class HttpPusher:
    """POSTs signed JSON bodies to one base URL.

    Args:
        base_url: the queue service, e.g. `http://127.0.0.1:8081` or the internal ALB URL.
        secret: returns the signing secret (fetched lazily, cached by the caller).
    """

    def __init__(self, base_url: str, secret: Callable[[], str]) -> None:
        if not base_url:
            raise ValueError("HttpPusher needs the queue service URL (is QUEUE_SERVICE_URL set?)")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"queue service URL {base_url!r} must be http(s)://host[:port]")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.secret = secret
        self._local = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
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
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: idempotency_key,
            **sign(self.secret(), body),
        }
        for attempt in range(2):
            conn = self._connection(timeout)
            try:
                conn.request("POST", self.prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self._drop()
                return PushResult(resp.status, data, parse_retry_after(resp.getheader("Retry-After")))
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                if attempt == 0:
                    continue  # a keep-alive connection the server had closed: once more on a fresh one
                return PushResult(None, error=f"connection error: {type(exc).__name__}: {exc}")
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
