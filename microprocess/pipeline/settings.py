"""Runtime settings of the Lambda functions, read once from the environment.

Plain pydantic (no pydantic-settings) so the functions need nothing beyond what the
Lambda runtime and the Powertools layer provide. The CDK stack sets these names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from microprocess.pipeline.envelope import DEFAULT_CLAIM_CHECK_BYTES, SQS_MAX_MESSAGE_BYTES

#: A run with no progress for this long is restarted, repaired or reported stuck by the sweeper
#: (cloud; the local stage acts sooner), s.
DEFAULT_STUCK_AFTER_S = 900
#: How often the sweeper runs (cloud: its schedule's rate; the local stage sweeps every minute), s.
DEFAULT_SWEEP_PERIOD_S = 300


def split_restart_bound_s(stuck_after_s: int, sweep_period_s: int) -> int:
    """The latest, after a dead splitter's last accounted page, that the sweeper restarts its
    split, s: the run must be quiet for `stuck_after_s`, and the sweep that sees it comes up to
    one period later."""
    return stuck_after_s + sweep_period_s


def defer_grace_s(stuck_after_s: int, sweep_period_s: int) -> int:
    """How long the forwarder defers a task whose page is not accounted yet without counting its
    receives, s. A task is first deferred after its splitter's last accounted page, so the grace
    must outlast the sweeper's restart of that splitter should it die (`split_restart_bound_s`),
    and one more period: the restarted splitter accounts the page within seconds, and a restart
    that was lost is made again by the next sweep. Past the grace, deferrals count towards the
    queue's redrive (a page that is never accounted ends in the DLQ, FAILED: runs finish)."""
    return split_restart_bound_s(stuck_after_s, sweep_period_s) + sweep_period_s


class SettingsError(ValueError):
    """A missing or invalid environment variable; the message names it."""


@dataclass(frozen=True)
class ServiceEndpoint:
    """A service's queue endpoint: its base URL and the ARN of its signing secret."""

    service: str
    url: str
    secret_arn: str


def _json_map(variable: str, raw: str, shape: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{variable} is not JSON ({exc.msg}): expected {shape}") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{variable} must be a JSON object {shape}")
    return value


class RuntimeSettings(BaseModel):
    """What the functions read from their environment (names are the upper-case field names)."""

    model_config = ConfigDict(frozen=True)

    ledger_table: str = Field(min_length=1)
    #: Each job's task queue, as JSON (`{"<job>": "<queue url>"}`).
    job_queues: str = "{}"
    #: The task queue of a job missing from `job_queues` (tests and single-queue tools); empty: none.
    task_queue_url: str = ""
    #: Where reduce parts and finalizes go (their own queue and forwarder); empty: the task queue.
    reduce_queue_url: str = ""
    dead_letter_queue_url: str = ""
    #: The DynamoDB source tables by role, as JSON (`{"<role>": "<table name>"}`).
    source_tables: str = "{}"
    reports_bucket: str = ""
    #: Each service's queue endpoint and signing secret, as JSON
    #: (`{"<service>": {"url": "<base url>", "secret_arn": "<arn>"}}`).
    service_endpoints: str = "{}"
    #: The endpoint and secret of a service missing from `service_endpoints` (tests and tools).
    queue_service_url: str = ""
    signing_secret_arn: str = ""
    #: The address the built-in reduce mails reports from (SES identity).
    ses_sender: str = ""
    splitter_function_name: str = ""
    #: The task forwarder, whose event source mappings carry the jobs' caps (the adaptive function).
    forwarder_function_name: str = ""
    #: The secret's value itself (tests and tools only; deployed functions use the ARN).
    signing_secret: str = ""
    #: Envelopes above this many bytes carry an S3 reference instead of the item.
    claim_check_bytes: int = Field(default=DEFAULT_CLAIM_CHECK_BYTES, gt=0, lt=SQS_MAX_MESSAGE_BYTES)
    #: Margin of remaining Lambda time under which the splitter continues itself, ms.
    splitter_margin_ms: int = Field(default=60_000, ge=1_000)
    #: A run with no progress for this long is repaired and reported stuck by the sweeper, s
    #: (set on the sweeper and on the task forwarder, whose deferral grace derives from it).
    stuck_after_s: int = Field(default=DEFAULT_STUCK_AFTER_S, ge=1)
    #: How often the sweeper runs, s (its schedule's rate; set where `stuck_after_s` is).
    sweep_period_s: int = Field(default=DEFAULT_SWEEP_PERIOD_S, ge=1)
    #: Seconds of counter recounting per run per sweep (the sweeper function's timeout is 240 s).
    repair_budget_s: float = Field(default=120.0, gt=0, le=600)
    #: A claimed reduce not finished after this long is re-enqueued by the sweeper, s.
    reduce_timeout_s: int = Field(default=1800, ge=1)
    #: A cap on every job's `max_queue_depth` (the local stage: what the emulator handles); 0: none.
    max_queue_depth_cap: int = Field(default=0, ge=0)
    #: Fault injection for the chaos suite: a JSON document or a path to one. Empty in production.
    microprocess_chaos: str = ""

    @property
    def defer_grace_s(self) -> int:
        """The forwarder's deferral grace, derived from the sweeper's timing (`defer_grace_s`)."""
        return defer_grace_s(self.stuck_after_s, self.sweep_period_s)

    @property
    def job_queue_urls(self) -> dict[str, str]:
        """`job_queues` parsed: job name -> task queue URL."""
        return _json_map("JOB_QUEUES", self.job_queues, '{"<job>": "<queue url>"}')

    def queue_url_for(self, job: str) -> str:
        """The task queue of `job`; raises `SettingsError` naming the fix when there is none."""
        url = self.job_queue_urls.get(job) or self.task_queue_url
        if not url:
            raise SettingsError(
                f"no task queue for job '{job}': JOB_QUEUES has {sorted(self.job_queue_urls)}; "
                "declare the job in the declaration file and redeploy (cdk deploy / microprocess local up)"
            )
        return url

    def endpoint_for(self, service: str) -> ServiceEndpoint:
        """Where `service`'s tasks are pushed and which secret signs them."""
        raw = _json_map("SERVICE_ENDPOINTS", self.service_endpoints, '{"<service>": {"url": ..., "secret_arn": ...}}')
        entry = raw.get(service)
        if entry is None:
            if not self.queue_service_url:
                raise SettingsError(
                    f"no endpoint for service '{service}': SERVICE_ENDPOINTS has {sorted(raw)}; declare the "
                    "service and redeploy (cdk deploy / microprocess local up)"
                )
            return ServiceEndpoint(service, self.queue_service_url, self.signing_secret_arn)
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or not entry["url"]:
            raise SettingsError(
                f'SERVICE_ENDPOINTS["{service}"] must be {{"url": "<base url>", "secret_arn": "<arn>"}}'
            )
        return ServiceEndpoint(service, entry["url"], str(entry.get("secret_arn") or ""))

    def queue_depth_limit(self, declared: int) -> int:
        """The depth at which the splitter pauses for a job declaring `declared` (0: never)."""
        caps = [v for v in (declared, self.max_queue_depth_cap) if v > 0]
        return min(caps) if caps else 0

    @property
    def source_table_names(self) -> dict[str, str]:
        """`source_tables` parsed: table role -> deployed table name."""
        value = _json_map("SOURCE_TABLES", self.source_tables, '{"<role>": "<table name>"}')
        if not all(isinstance(v, str) for v in value.values()):
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
