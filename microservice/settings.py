"""The service's settings: read once from the environment into one typed object.

Routes take them with `Depends(get_settings)`; tests replace them through
`app.dependency_overrides[get_settings]` or by passing `Settings` to `create_app`.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: S3 refuses multipart parts under 5 MiB (except the last one).
S3_MIN_PART_BYTES = 5 * 1024 * 1024


class SettingsError(ValueError):
    """A missing or invalid environment variable; the message names it and the fix."""


class ServiceRole(StrEnum):
    LIVE = "live"  # scores-live: the synchronous API for people and other services
    QUEUE = "queue"  # scores-queue: signed task, reduce-part and finalize endpoints for the forwarder


class Settings(BaseSettings):
    """Environment of the microservice (variable names are the upper-case field names).

    Attributes:
        service_role: `live` or `queue` (required).
        companies_table: DynamoDB table of companies (key `company_id`).
        ledger_table: the run ledger (queue role: reduce and finalize read it).
        reports_bucket: S3 bucket that receives the reports (queue role).
        signing_secret: the HMAC secret itself (local stack, tests).
        signing_secret_arn: Secrets Manager ARN of the HMAC secret (AWS); read once, lazily.
        api_key: the live API's key itself (tests, the service run alone); may hold
            `{"current": ..., "previous": ...}` during a rotation.
        api_key_secret_arn: Secrets Manager ARN of the live API's key (the cloud and the local
            stack); read lazily, re-read on a key it does not know (at most every 30 s) and hourly.
        service_docs: serve `/docs`, `/redoc` and `/openapi.json` (off unless asked for; the
            cloud stage sets it from the context key `service_docs`, the local stack turns it on).
        ses_sender: verified SES address the report email comes from; empty: no email.
        score_work_ms: simulated work per score, milliseconds (load tests).
        microprocess_chaos: fault injection, a JSON document or the path of one; empty: off.
        report_part_bytes: multipart part size of the joined report, bytes (>= 5 MiB).
        report_link_expiry_s: lifetime of the presigned report link in the email, seconds.
        signature_max_skew_s: how old (or new) a signed request's timestamp may be, seconds.
    """

    model_config = SettingsConfigDict(frozen=True, case_sensitive=False, extra="ignore")

    service_role: ServiceRole
    companies_table: str = "companies"
    ledger_table: str = ""
    reports_bucket: str = ""
    signing_secret: str = ""
    signing_secret_arn: str = ""
    api_key: str = ""
    api_key_secret_arn: str = ""
    service_docs: bool = False
    ses_sender: str = ""
    score_work_ms: int = Field(default=0, ge=0, le=60_000)
    microprocess_chaos: str = ""
    report_part_bytes: int = Field(default=S3_MIN_PART_BYTES, ge=S3_MIN_PART_BYTES, le=5 * 1024**3)
    # A presigned URL dies with the credentials that signed it: on ECS the task role's
    # temporary credentials last about 6 h, so a longer promise would be false.
    report_link_expiry_s: int = Field(default=6 * 3600, ge=60, le=7 * 24 * 3600)
    signature_max_skew_s: int = Field(default=300, ge=1, le=3600)

    @model_validator(mode="after")
    def _role_needs(self) -> Settings:
        if self.service_role is ServiceRole.LIVE and not (self.api_key or self.api_key_secret_arn):
            raise ValueError(
                "the live role needs API_KEY (the key clients send in the X-Api-Key header) or API_KEY_SECRET_ARN "
                "(the Secrets Manager secret holding it: the stack's ApiKeyArns output)"
            )
        if self.service_role is ServiceRole.QUEUE:
            missing = [name.upper() for name in ("ledger_table", "reports_bucket") if not getattr(self, name)]
            if not (self.signing_secret or self.signing_secret_arn):
                missing.append("SIGNING_SECRET or SIGNING_SECRET_ARN")
            if missing:
                raise ValueError(f"the queue role needs {', '.join(missing)}")
        return self

    @property
    def host_name(self) -> str:
        """The service's name in logs and health answers: scores-live or scores-queue."""
        return f"scores-{self.service_role}"


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (and `overrides`), with one clear error."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]).upper()
            if field == "SERVICE_ROLE":
                problems.append("SERVICE_ROLE must be set to 'live' or 'queue'")
            else:
                label = f"{field}: " if field else ""
                problems.append(label + err["msg"].removeprefix("Value error, "))
        raise SettingsError("invalid microservice environment: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (a FastAPI dependency)."""
    return load_settings()
