"""The signing secret as a process reads it: loaded lazily, cached, re-read when it may have rotated.

Both sides use it: a service re-reads its secret when a signature does not match (the
forwarder may already sign with a newer secret), the forwarder re-reads it after a 401.

Two ways to re-read, two budgets (docs/push-contract.md, "Secrets and rotation"):

* on a schedule: a value older than `max_age_s` (60 s) is re-read on its next use. Nothing a
  caller sends moves this schedule, so a rotation is taken up (and a revoked secret dropped)
  within `max_age_s` whatever the traffic, a flood of bad signatures included;
* on demand (`refresh()`, after a mismatch): at most once per `min_refresh_interval_s`. Anyone
  can spend this budget (a bad signature looks like a newer one), so it only speeds a
  rotation up; nothing depends on it.

A failed read is rate-limited like a successful one (`min_refresh_interval_s`): while the
store fails, a flood costs one read per interval, the cached value stays in use, and without
any value `SecretUnavailable` is raised (a service answers 503 with Retry-After, never 500).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: How old a cached secret may get before it is re-read on use, seconds: a rotation is taken up,
#: and a dropped secret refused, within this (the emergency revocation bound).
DEFAULT_MAX_AGE_S = 60.0
#: The on-demand re-read's budget: at most one read per this many seconds, per process.
DEFAULT_MIN_REFRESH_INTERVAL_S = 30.0


class SecretUnavailable(RuntimeError):
    """The secret has never been read and cannot be read now (the store fails or is not set):
    nothing can be authenticated yet; answer 503 and retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CachedSecret:
    """A secret value from `load()`, read on first use and kept until it is re-read.

    Args:
        load: returns the secret value (the secret itself, `{"current","previous"}` JSON or a
            JSON list; see `microprocess.service.signing.parse_secrets`). May block (network).
        min_refresh_interval_s: `refresh()` re-reads at most this often, and a failed read is
            not tried again sooner, seconds.
        max_age_s: a value older than this is re-read on use (a finished rotation or a
            revocation takes effect); if that read fails, the old value is kept and the read
            tried again after `min_refresh_interval_s`.
        clock: monotonic seconds (tests).
    """

    def __init__(
        self,
        load: Callable[[], str],
        *,
        min_refresh_interval_s: float = DEFAULT_MIN_REFRESH_INTERVAL_S,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.min_refresh_interval_s = min_refresh_interval_s
        self.max_age_s = max_age_s
        self._clock = clock
        self._value: str | None = None
        self._read_at = float("-inf")  # the last successful read
        self._tried_at = float("-inf")  # the last read, successful or not
        #: Successful reads so far (a caller can tell whether a read happened meanwhile).
        self.reads = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._first_read()
        elif self._clock() - self._read_at > self.max_age_s:
            with self._lock:
                now = self._clock()
                if now - self._read_at > self.max_age_s and now - self._tried_at >= self.min_refresh_interval_s:
                    self._try_read("scheduled")
        assert self._value is not None
        return self._value

    def _first_read(self) -> None:
        wait = max(1, round(self.min_refresh_interval_s))
        if self._clock() - self._tried_at < self.min_refresh_interval_s:
            raise SecretUnavailable("the signing secret could not be read a moment ago; try again later", wait)
        self._tried_at = self._clock()
        try:
            self._value = self._read()
        except Exception as exc:
            log.warning("could not read the signing secret: %s", exc)
            raise SecretUnavailable(f"the signing secret could not be read: {exc}", wait) from exc

    def _try_read(self, why: str) -> bool:
        self._tried_at = self._clock()
        try:
            self._value = self._read()
        except Exception:
            log.warning("could not re-read the signing secret (%s); keeping the cached one", why, exc_info=True)
            return False
        return True

    def _read(self) -> str:
        value = self._load()
        if not value:
            raise RuntimeError("the signing secret is empty: set it (see docs/push-contract.md, 'Secrets')")
        self._read_at = self._clock()
        self.reads += 1
        return value

    def refresh(self) -> bool:
        """Re-read the secret unless a read was tried less than `min_refresh_interval_s` ago.

        Returns True when it was re-read (the caller may try again), False when skipped or
        when the read failed (the cached value stays)."""
        with self._lock:
            if self._clock() - self._tried_at < self.min_refresh_interval_s:
                return False
            return self._try_read("on demand")


#: Where a service finds its signing secret: the value itself, or the Secrets Manager secret holding it.
SECRET_ENV = "SIGNING_SECRET"
SECRET_ARN_ENV = "SIGNING_SECRET_ARN"


def secret_from_environment(environ: Mapping[str, str] | None = None) -> CachedSecret:
    """The service's signing secret as the platform hands it over: `SIGNING_SECRET` (the value),
    else `SIGNING_SECRET_ARN` (read from Secrets Manager with boto3, imported only then; the local
    stack and the cloud stage set this one). Read on the first request, re-read on rotation.

    Raises `RuntimeError` at the first request when neither is set, naming both."""
    env = os.environ if environ is None else environ

    def load() -> str:
        if value := env.get(SECRET_ENV):
            return value
        if arn := env.get(SECRET_ARN_ENV):
            import boto3  # only services whose secret lives in Secrets Manager need it

            return str(boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])
        raise RuntimeError(f"set {SECRET_ENV} (the secret) or {SECRET_ARN_ENV} (its Secrets Manager ARN)")

    return CachedSecret(load)
