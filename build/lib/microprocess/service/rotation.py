"""The signing secret as a process reads it: loaded lazily, cached, re-read when it may have rotated.

Both sides use it: a service re-reads its secret when a signature does not match (the
forwarder may already sign with a newer secret), the forwarder re-reads it after a 401.
Re-reads are rate-limited (`min_refresh_interval_s`), so a flood of badly signed requests
costs at most one Secrets Manager call per interval.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class CachedSecret:
    """A secret value from `load()`, read on first use and kept until `refresh()`.

    Args:
        load: returns the secret value (the secret itself, `{"current","previous"}` JSON or a
            JSON list; see `microprocess.service.signing.parse_secrets`). May block (network).
        min_refresh_interval_s: `refresh()` re-reads at most this often, seconds.
        max_age_s: a value older than this is re-read on use (a finished rotation takes
            effect); if that read fails, the old value is kept and the read tried again later.
        clock: monotonic seconds (tests).
    """

    def __init__(
        self,
        load: Callable[[], str],
        *,
        min_refresh_interval_s: float = 30.0,
        max_age_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.min_refresh_interval_s = min_refresh_interval_s
        self.max_age_s = max_age_s
        self._clock = clock
        self._value: str | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> str:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._read()
        elif self._clock() - self._read_at > self.max_age_s:
            with self._lock:
                if self._clock() - self._read_at > self.max_age_s:
                    try:
                        self._value = self._read()
                    except Exception:
                        log.warning("could not re-read the signing secret; keeping the cached one", exc_info=True)
                        self._read_at = self._clock() - self.max_age_s + self.min_refresh_interval_s
        return self._value

    def _read(self) -> str:
        value = self._load()
        if not value:
            raise RuntimeError("the signing secret is empty: set it (see docs/push-contract.md, 'Secrets')")
        self._read_at = self._clock()
        return value

    def refresh(self) -> bool:
        """Re-read the secret unless it was read less than `min_refresh_interval_s` ago.

        Returns True when it was re-read (the caller may try again), False when skipped.
        """
        with self._lock:
            if self._value is not None and self._clock() - self._read_at < self.min_refresh_interval_s:
                return False
            self._value = self._read()
            return True


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
