"""Runtime settings of the Lambda functions, read once from the environment.

Plain pydantic (no pydantic-settings) so the functions need nothing beyond what the
Lambda runtime and the Powertools layer provide. The CDK stack sets these names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from microprocess.pipeline.envelope import DEFAULT_CLAIM_CHECK_BYTES, SQS_MAX_MESSAGE_BYTES


class SettingsError(ValueError):
    """A missing or invalid environment variable; the message names it."""


class RuntimeSettings(BaseModel):
    """What the functions read from their environment (names are the upper-case field names)."""

    model_config = ConfigDict(frozen=True)

    ledger_table: str = Field(min_length=1)
    task_queue_url: str = ""
    #: Where reduce parts and finalizes go (their own queue and forwarder); empty: the task queue.
    reduce_queue_url: str = ""
    dead_letter_queue_url: str = ""
    #: The DynamoDB source tables by role, as JSON (`{"<role>": "<table name>"}`).
    source_tables: str = "{}"
    reports_bucket: str = ""
    queue_service_url: str = ""
    signing_secret_arn: str = ""
    splitter_function_name: str = ""
    #: The secret's value itself (tests and tools only; deployed functions use the ARN).
    signing_secret: str = ""
    #: Envelopes above this many bytes carry an S3 reference instead of the item.
    claim_check_bytes: int = Field(default=DEFAULT_CLAIM_CHECK_BYTES, gt=0, lt=SQS_MAX_MESSAGE_BYTES)
    #: Margin of remaining Lambda time under which the splitter continues itself, ms.
    splitter_margin_ms: int = Field(default=60_000, ge=1_000)
    #: A run with no progress for this long is repaired and reported stuck by the sweeper, s.
    stuck_after_s: int = Field(default=900, ge=1)
    #: A claimed reduce not finished after this long is re-enqueued by the sweeper, s.
    reduce_timeout_s: int = Field(default=1800, ge=1)
    #: Fault injection for the chaos suite: a JSON document or a path to one. Empty in production.
    microprocess_chaos: str = ""

    @property
    def source_table_names(self) -> dict[str, str]:
        """`source_tables` parsed: table role -> deployed table name."""
        try:
            value = json.loads(self.source_tables or "{}")
        except json.JSONDecodeError as exc:
            raise SettingsError(f'SOURCE_TABLES is not JSON ({exc.msg}): expected {{"<role>": "<table>"}}') from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise SettingsError('SOURCE_TABLES must be a JSON object {"<role>": "<table name>"}')
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeSettings:
        env = os.environ if environ is None else environ
        values = {name: env[name.upper()] for name in cls.model_fields if name.upper() in env}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{str(e['loc'][0]).upper() if e['loc'] else 'settings'}: {e['msg']}" for e in exc.errors()
            )
            raise SettingsError(f"invalid function environment: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> RuntimeSettings:
    return RuntimeSettings.from_env()
