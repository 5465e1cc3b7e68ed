"""The typed side of the push contract: request models, the errors a handler raises, and the
framework-neutral pipeline every adapter runs (verify, parse, check, call, answer).

Order of checks (docs/push-contract.md, "What a service does"): size (413) → signature (401)
→ JSON (400) → kind matches the route (400) → schema (422) → Idempotency-Key matches the
body (400) → the handler. Nothing before the handler reads or writes anything.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from microprocess.service.rotation import SecretUnavailable
from microprocess.service.signing import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_FUTURE_S,
    ReplayGuard,
    SignatureError,
    SignatureMismatch,
    WeakSecret,
    check_headers,
    verify,
)

log = logging.getLogger(__name__)

TaskKindName = Literal["task", "reduce-part", "finalize", "completion"]
#: JSON integers beyond this magnitude are refused (I-JSON, RFC 7493: exact in every language).
MAX_SAFE_INTEGER = 2**53 - 1

ItemT = TypeVar("ItemT")


class TaskRequest(BaseModel, Generic[ItemT]):
    """The body of a push (contract v2). `TaskRequest[MyItem]` validates the item too.

    Attributes:
        run_id, task_id: the task; `Idempotency-Key` is `<run_id>:<task_id>`.
        attempt: 1 on the first delivery, then 2, 3, ... (retries of the same task).
        item: the work item (null for reduce-part and finalize).
        job: the job's name; shard: the task's ledger shard.
        kind: `task`, `reduce-part` or `finalize` (required); must match the route.
        params: the run's parameters, a JSON object (possibly empty).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: str = Field(min_length=1, max_length=128)
    task_id: str = Field(min_length=1, max_length=256)
    attempt: int = Field(default=1, ge=1, le=10_000)
    item: ItemT
    job: str = Field(default="", max_length=64)
    shard: int = Field(default=0, ge=0, lt=4096)
    kind: TaskKindName
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.task_id}"


class CompletionRequest(BaseModel):
    """The optional completion callback (kind `completion`), sent once the run's report exists."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: str = Field(min_length=1, max_length=128)
    task_id: Literal["completion"] = "completion"
    kind: Literal["completion"] = "completion"
    job: str = Field(min_length=1, max_length=64)
    status: Literal["SUCCEEDED", "FAILED"]
    expected: int = Field(ge=0)
    succeeded: int = Field(ge=0)
    failed: int = Field(ge=0)
    report_uri: str = ""

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.task_id}"


class PermanentFailure(Exception):
    """Raised by a handler for what no retry can fix: answered 4xx (default 422), never retried."""

    def __init__(self, message: str, *, code: str = "permanent_failure", status: int = 422) -> None:
        if not 400 <= status < 500 or status in (408, 429):
            raise ValueError(f"a permanent failure is a 4xx other than 408/429, got {status}")
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


class RetryLater(Exception):
    """Raised by a handler to be called again in `seconds`: answered 503 (or 429) with Retry-After."""

    def __init__(self, seconds: int, message: str = "busy: try again later", *, status: int = 503) -> None:
        if status not in (429, 503):
            raise ValueError(f"RetryLater answers 429 or 503, got {status}")
        if not 0 <= seconds <= 43_200:
            raise ValueError(f"Retry-After must be 0..43200 s (the longest SQS backoff), got {seconds}")
        super().__init__(message)
        self.seconds, self.message, self.status = int(seconds), message, status


@dataclass(frozen=True)
class Answer:
    """What to send back: a status, a JSON body and extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":"), default=str).encode()


class Rejected(Exception):
    """A request refused before its handler ran; `answer` is the error response."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.answer = Answer(status, {"error": code, "message": message}, headers or {})


def _checked_int(text: str) -> int:
    if len(text.lstrip("-")) > 16 or abs(value := int(text)) > MAX_SAFE_INTEGER:
        raise ValueError(
            f"integer {text[:20]}{'...' if len(text) > 20 else ''} ({len(text)} characters) is out of range: "
            f"JSON integers must be within ±{MAX_SAFE_INTEGER} (I-JSON); send larger values as strings"
        )
    return value


def _checked_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range (not a finite double)")
    return value


def _no_constants(text: str) -> Any:
    raise ValueError(f"{text} is not JSON (NaN and Infinity are not numbers in JSON)")


def parse_json(raw: bytes) -> Any:
    """The body as JSON under the contract's number rules; `Rejected` (400) otherwise."""
    try:
        return json.loads(raw, parse_int=_checked_int, parse_float=_checked_float, parse_constant=_no_constants)
    except RecursionError:
        raise Rejected(400, "malformed_body", "the body is nested too deeply") from None
    except ValueError as exc:
        raise Rejected(400, "malformed_body", f"the body is not valid JSON: {exc}") from None


@dataclass
class Verifier:
    """The signature check of one service: its secrets (a getter, read lazily), window and replay guard.

    Args:
        secrets: returns the secret value (a string, `{"current","previous"}` JSON, or a list);
            a `CachedSecret` is re-read once when a signature does not match (rotation).
        max_age_s, max_future_s: the time window, seconds.
        replay_guard: refuses a signature seen before in this process (None: off).
    """

    secrets: Callable[[], str | Sequence[str]]
    max_age_s: int = DEFAULT_MAX_AGE_S
    max_future_s: int = DEFAULT_MAX_FUTURE_S
    replay_guard: ReplayGuard | None = field(default_factory=ReplayGuard)

    def _verify(self, headers: Any, raw: bytes, method: str, path: str) -> str:
        return verify(
            headers,
            raw,
            method,
            path,
            self.secrets(),
            max_age_s=self.max_age_s,
            max_future_s=self.max_future_s,
            replay_guard=self.replay_guard,
        )

    def precheck(self, headers: Any, method: str, path: str) -> None:
        """`Rejected` (401) when the headers alone fail (a signature header missing or malformed,
        the timestamp outside the window): run before the body is read, so an unsigned client
        holds no body buffer. Needs no secret."""
        try:
            check_headers(headers, max_age_s=self.max_age_s, max_future_s=self.max_future_s)
        except SignatureError as exc:
            log.warning("refused %s %s: %s", method, path, exc)
            raise Rejected(401, "bad_signature", f"request refused: {exc}") from None

    def check(self, headers: Any, raw: bytes, method: str, path: str) -> str:
        """The request's Idempotency-Key, or `Rejected`: 401 naming what is wrong, 503 (with
        Retry-After) when the secret was never read and cannot be read now."""
        try:
            try:
                return self._verify(headers, raw, method, path)
            except SignatureMismatch:
                # Perhaps signed with a newer secret: re-read once (a budget anyone can spend, so
                # only a speed-up; the scheduled re-read of `CachedSecret` is the guarantee).
                refresh = getattr(self.secrets, "refresh", None)
                if refresh is None or not refresh():
                    raise
                return self._verify(headers, raw, method, path)
        except SignatureError as exc:
            log.warning("refused %s %s: %s", method, path, exc)
            raise Rejected(401, "bad_signature", f"request refused: {exc}") from None
        except WeakSecret as exc:
            log.error("cannot authenticate %s %s: %s", method, path, exc)
            raise Rejected(503, "weak_secret", f"the service's signing secret is unusable: {exc}") from None
        except SecretUnavailable as exc:
            log.warning("cannot authenticate %s %s: %s", method, path, exc)
            raise Rejected(
                503,
                "secret_unavailable",
                f"the service cannot check signatures yet ({exc}); retry later",
                {"Retry-After": str(exc.retry_after_s)},
            ) from None


M = TypeVar("M", bound=BaseModel)


def parse_task(raw: bytes, model: type[M], *, kind: str, key: str) -> M:
    """The verified body as `model`, checked against the route's kind and the Idempotency-Key."""
    doc = parse_json(raw)
    sent_kind = doc.get("kind") if isinstance(doc, dict) else None
    if sent_kind is not None and sent_kind != kind:  # before the schema: the item of another kind differs
        raise Rejected(400, "wrong_kind", f"this route takes kind {kind!r} but the body is kind {sent_kind!r}")
    try:
        task = model.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise Rejected(422, "invalid_request", f"body does not match {model.__name__}: {problems}") from None
    expected = f"{getattr(task, 'run_id', '')}:{getattr(task, 'task_id', '')}"
    if key != expected:
        raise Rejected(
            400,
            "idempotency_key_mismatch",
            f"Idempotency-Key is {key!r} but the body is task {expected!r}; send '<run_id>:<task_id>'",
        )
    return task


def error_answer(exc: Exception) -> Answer | None:
    """The answer for a contract exception (`PermanentFailure`, `RetryLater`, `Rejected`); None otherwise."""
    if isinstance(exc, Rejected):
        return exc.answer
    if isinstance(exc, PermanentFailure):
        return Answer(exc.status, {"error": exc.code, "message": exc.message})
    if isinstance(exc, RetryLater):
        return Answer(exc.status, {"error": "retry_later", "message": exc.message}, {"Retry-After": str(exc.seconds)})
    return None


def result_body(result: Any) -> Any:
    """A handler's return value as JSON-ready data (pydantic models are dumped)."""
    return result.model_dump(mode="json") if isinstance(result, BaseModel) else result
