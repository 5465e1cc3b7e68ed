"""Job declarations: the one source of truth for every job's settings.

A job is declared once here; the CDK stack, the Lambda functions, the CLI, the
microservice and the local stack all read the same `JobDeclaration`. An invalid
declaration fails at import time with a message naming the job, the field and
the fix.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_JOB_NAME = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")
_RATE = re.compile(r"^rate\((1 (minute|hour|day)|([2-9]|[1-9][0-9]+) (minutes|hours|days))\)$")
_CRON = re.compile(r"^cron\((\S+ ){5}\S+\)$")
_PATH = re.compile(r"^/[A-Za-z0-9/_.{}-]*$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class JobDeclarationError(ValueError):
    """A job or service declaration is invalid; the message names the file, the job or
    service, the field and the fix."""


class ReduceMode(StrEnum):
    """Who builds a run's report."""

    PLATFORM = "platform"  # the platform's built-in reduce: the service implements only the task endpoint
    SERVICE = "service"  # the service's own reduce-part and finalize endpoints (see docs/push-contract.md)


class SourceKind(StrEnum):
    """Where a job's items come from."""

    DYNAMODB = "dynamodb"  # a DynamoDB table, read with a parallel scan
    S3_MANIFEST = "s3"  # a JSONL or CSV object in S3
    INLINE = "inline"  # a list given in the start event
    CALLABLE = "callable"  # a Python `module:function` that yields items


class ItemSource(BaseModel):
    """The declaration of a job's item source.

    `table` names a table *role* (for example `customers`); the deployed table name
    is passed to the functions in their environment, never hard-coded.

    Attributes:
        kind: `dynamodb` (a table, read with a parallel scan), `s3` (a JSONL or CSV manifest),
            `inline` (the items given in the start event) or `callable` (a Python function).
        table: the table role of a `dynamodb` source (the stack creates it, or names yours).
        segments: parallel scan segments of a `dynamodb` source, each read by its own splitter
            invocation (`microprocess plan` says how many keep up with the job's concurrency).
        page_size: items read, sent and accounted per page. A `dynamodb` source reads up to 4 pages
            per Scan call (each page keeps its own cursor, the key of its last item).
        uri: the `s3` manifest: one object (`s3://bucket/key`) or a key template whose placeholders
            each run fills in (`s3://bucket/manifests/{date}.jsonl`): `{date}` (the run's UTC date,
            YYYY-MM-DD, from its schedule tick or its start), `{job}` and `{run_id}`.
        prefix: what `microprocess run --source-uri` may name for this job, `s3://bucket/prefix/`
            (default: a template's fixed part, e.g. `s3://bucket/manifests/`, or the one object). The
            splitter may read exactly that (IAM); a URI outside it is refused before the run starts.
        format: `jsonl` or `csv`, for an `s3` manifest.
        function: `module:function` of a `callable` source; it yields the items.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SourceKind
    table: str | None = None
    segments: Annotated[int, Field(ge=1, le=64)] = 4
    page_size: Annotated[int, Field(ge=1, le=1000)] = 250
    uri: str | None = None
    prefix: str | None = None
    format: str | None = None
    function: str | None = None

    @model_validator(mode="after")
    def _fields_for_kind(self) -> ItemSource:
        if self.kind is SourceKind.DYNAMODB and not self.table:
            raise ValueError("source.table is required for a dynamodb source: name the table role, e.g. 'customers'")
        if self.kind is SourceKind.S3_MANIFEST:
            if not (self.uri and self.uri.startswith("s3://")):
                raise ValueError("source.uri must be an s3://bucket/key URI for an s3 source")
            if self.format not in ("jsonl", "csv"):
                raise ValueError("source.format must be 'jsonl' or 'csv' for an s3 source")
            unknown = sorted(set(_PLACEHOLDER.findall(self.uri)) - set(URI_PLACEHOLDERS))
            if unknown:
                raise ValueError(
                    f"source.uri {self.uri!r} has the placeholder(s) {unknown}; a key template may use "
                    f"{['{' + p + '}' for p in URI_PLACEHOLDERS]}"
                )
            if "{" in self.uri.partition("://")[2].partition("/")[0]:
                raise ValueError(f"source.uri {self.uri!r}: the bucket cannot be a template, only the key")
            bucket = _bucket_of(self.uri)
            if self.prefix is not None:
                if not (self.prefix.startswith("s3://") and self.prefix.endswith("/") and "{" not in self.prefix):
                    raise ValueError(
                        f"source.prefix {self.prefix!r} must be s3://bucket/folder/ (ending in '/', no placeholder)"
                    )
                if _bucket_of(self.prefix) != bucket:
                    raise ValueError(f"source.prefix {self.prefix!r} must be in the bucket of source.uri ({bucket})")
                if "{" not in self.uri and not self.uri.startswith(self.prefix):
                    raise ValueError(f"source.uri {self.uri!r} must be under source.prefix {self.prefix!r}")
        elif self.prefix is not None:
            raise ValueError("source.prefix is for an s3 source only")
        if self.kind is SourceKind.CALLABLE and not (self.function and _CALLABLE.match(self.function)):
            raise ValueError("source.function must be 'module:function' for a callable source")
        return self


#: The placeholders of an `s3` source's key template (`source.uri`).
URI_PLACEHOLDERS = ("date", "job", "run_id")
_PLACEHOLDER = re.compile(r"{([^{}]*)}")


def _bucket_of(uri: str) -> str:
    return uri.removeprefix("s3://").partition("/")[0]


class S3Scope(BaseModel):
    """The S3 objects a job's splitter may read: one object (`key`), or every key under `prefix`.

    Attributes:
        bucket: the bucket.
        key: the one object's key, or the prefix the keys start with.
        is_prefix: True when `key` is a prefix.
    """

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    is_prefix: bool

    def allows(self, uri: str) -> bool:
        """Whether `uri` (s3://bucket/key) is inside this scope."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or bucket != self.bucket or not key:
            return False
        return key.startswith(self.key) if self.is_prefix else key == self.key

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" + ("*" if self.is_prefix else "")


def s3_scope(source: ItemSource) -> S3Scope | None:
    """What an `s3` source may read (its `prefix`, its template's fixed part, or its one object);
    None for other kinds."""
    if source.kind is not SourceKind.S3_MANIFEST or not source.uri:
        return None
    if source.prefix:
        return S3Scope(
            bucket=_bucket_of(source.prefix), key=source.prefix.partition("://")[2].partition("/")[2], is_prefix=True
        )
    bucket, _, key = source.uri.removeprefix("s3://").partition("/")
    if "{" in key:
        return S3Scope(bucket=bucket, key=key.partition("{")[0], is_prefix=True)
    return S3Scope(bucket=bucket, key=key, is_prefix=False)


def resolve_source_uri(template: str, *, job: str, run_id: str, date: str) -> str:
    """`source.uri` with its placeholders filled in for one run."""
    values = {"date": date, "job": job, "run_id": run_id}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class JobDeclaration(BaseModel):
    """One background job.

    Attributes:
        name: kebab-case job name, also its EventBridge rule and metric dimension (the key of
            its `[jobs.<name>]` table).
        description: what the job does (shown by the CLI).
        schedule: EventBridge expression, `cron(...)` (6 fields) or `rate(...)`.
        source: where the items come from.
        service: the declared service the job's tasks are pushed to.
        item_id_field: the item field that names the item in the report (e.g. `invoice_id`).
        task_path: service path that handles one task (POST).
        reduce: `platform` (default: the built-in report) or `service` (the service's own
            reduce-part and finalize endpoints).
        reduce_part_path: service path that reduces one ledger shard into a part file
            (`reduce = "service"` only).
        reduce_finalize_path: service path that joins the parts into the report and mails it
            (`reduce = "service"` only).
        completion_path: service path that receives a signed completion callback once the
            run's report exists (optional).
        result_fields: result fields that become report columns (default: every field).
        histogram_field: a numeric result field summarised as a histogram in the report.
        sample_item: an item the service accepts, for `microprocess check-service`.
        max_queue_depth: the splitter pauses while the job's queue holds this many messages
            (0: never); the local stage caps it further to what the emulator handles.
        max_attempts: pushes per task before it is recorded FAILED. A push that never reached
            the service (no byte of it sent: connection refused, host not found, connect
            timeout, a restart or a deploy) does not count while the outage has lasted less than
            `unreachable_grace_s`; a 429 or 503 with `Retry-After` does not count while the task
            has been throttled for less than `throttle_budget_s`.
        unreachable_grace_s: how long a task keeps retrying, attempts untouched, while its
            service cannot be reached, per outage (a push that reaches the service ends it;
            0: every push counts); past it, each push counts again.
        throttle_budget_s: how long a task keeps retrying, attempts untouched, while its service
            answers 429 or 503 with `Retry-After` (it asks to slow down: the task has not
            failed), from the task's first such answer (0: every answer counts); past it, each
            counts again, so a service that never stops throttling still ends the run. A
            `Retry-After` above 900 s (SQS's longest delay) counts.
        tolerated_failure_pct: above this percentage of failed tasks the run ends FAILED.
        max_concurrency: the event source's maximum concurrent forwarder batches (2..1000).
        shard_count: ledger task partitions, and so the number of reduce parts.
        counter_count: ledger counter items per run (spreads the per-batch counter write).
        batch_size: SQS records per forwarder invocation (1..10).
        task_timeout_s: per-request timeout of a push, seconds.
        recipients: who gets the report email.
        stop_early: end the run FAILED as soon as its failures exceed the tolerance of its
            expected total (it cannot succeed any more); its remaining tasks are not pushed.
        item_index: write one item-id record per item at split time, so that one item is found
            by its id without reading the run (`microprocess tasks RUN --item ID`); one write
            unit per item.
        adaptive: let the platform move the job's concurrency cap by itself, every minute,
            between 2 and `max_concurrency`: a run starts at a quarter of `max_concurrency` (or
            at the capacity learned in an earlier run) and doubles it each healthy minute; when
            the service answers 429/503 to 2 % of the pushes, set it to the batches the service
            took (estimated from the pushes it accepted, the push time and the cap's accepted
            share; halve it when 90 % of a first throttled minute's pushes were 429s or when its
            push time climbs), add back a twentieth of `max_concurrency` after each healthy
            minute up to it, then probe one batch above it after 2 healthy minutes at a cap: a
            throttled probe goes back to the last cap taken without a 429 and doubles the
            healthy minutes before the next probe (up to 16), a probe that goes through probes
            again after 2 healthy minutes
            (`microprocess.control.adaptive`). Off by default: with it
            the controller owns the cap (a `microprocess scale JOB --concurrency N` is moved from
            again within a minute), and the deployed stack gains one scheduled function that
            reads the job's CloudWatch metrics every minute (about $1.30 a month per job in
            GetMetricData); a job whose service scales with its load needs neither. When its
            service declares a `capacity`, the service's controller learns one capacity for all
            its jobs instead (docs/capacity.md).
        weight: the job's share of its service's capacity against the other jobs using it while
            they all have work (2 takes twice what 1 takes); an idle job's share goes to the others.
        priority_weight: what a run started with `microprocess run JOB --priority high` weighs:
            beside the job's other runs, it takes about `priority_weight` shares of the job's queue
            to a normal run's one (its tasks are spread over that many SQS fair-queue tenants,
            rounded, at most 64: docs/capacity.md); on a shared service, the job's weight is
            multiplied by it while the run has work.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    schedule: str
    source: ItemSource
    service: str = Field(min_length=1)
    item_id_field: str = "id"
    task_path: str
    reduce: ReduceMode = ReduceMode.PLATFORM
    reduce_part_path: str | None = None
    reduce_finalize_path: str | None = None
    completion_path: str | None = None
    result_fields: tuple[str, ...] | None = None
    histogram_field: str | None = None
    max_queue_depth: Annotated[int, Field(ge=0, le=100_000_000)] = 1_000_000
    sample_item: dict[str, Any] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    unreachable_grace_s: Annotated[int, Field(ge=0, le=86_400)] = 900
    throttle_budget_s: Annotated[int, Field(ge=0, le=86_400)] = 1800
    tolerated_failure_pct: Annotated[float, Field(ge=0, le=100)] = 1.0
    max_concurrency: Annotated[int, Field(ge=2, le=1000)] = 50
    shard_count: Annotated[int, Field(ge=1, le=256)] = 16
    counter_count: Annotated[int, Field(ge=1, le=64)] = 16
    batch_size: Annotated[int, Field(ge=1, le=10)] = 10
    task_timeout_s: Annotated[float, Field(gt=0, le=120)] = 30.0
    recipients: tuple[str, ...] = ()
    stop_early: bool = True
    item_index: bool = True
    adaptive: bool = False
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0
    priority_weight: Annotated[float, Field(ge=1, le=1000)] = 4.0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _JOB_NAME.match(v):
            raise ValueError("name must be 3-40 chars of lowercase letters, digits and '-', e.g. 'invoice-reminders'")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        if not (_RATE.match(v) or _CRON.match(v)):
            raise ValueError(
                "schedule must be an EventBridge expression: 'cron(min hour day month weekday year)' "
                "with 6 fields, e.g. 'cron(0 2 1 * ? *)', or 'rate(5 minutes)'"
            )
        return v

    @field_validator("task_path", "reduce_part_path", "reduce_finalize_path", "completion_path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not _PATH.match(v):
            raise ValueError("must be an absolute URL path such as '/tasks/remind'")
        return v

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [r for r in v if not _EMAIL.match(r)]
        if bad:
            raise ValueError(f"recipients must be email addresses; not valid: {bad}")
        return v

    @model_validator(mode="after")
    def _cross(self) -> JobDeclaration:
        if self.counter_count * 2 > 100:
            # The counter repair moves every counter in one transaction (≤ 100 actions).
            raise ValueError("counter_count must be at most 50")
        service_paths = (self.reduce_part_path, self.reduce_finalize_path)
        if self.reduce is ReduceMode.SERVICE and not all(service_paths):
            raise ValueError(
                "reduce = 'service' needs reduce_part_path and reduce_finalize_path (the service's reduce "
                "endpoints); or drop them and use reduce = 'platform' (the built-in report)"
            )
        if self.reduce is ReduceMode.PLATFORM and any(service_paths):
            raise ValueError(
                "reduce_part_path and reduce_finalize_path are only used with reduce = 'service'; "
                "remove them, or set reduce = 'service'"
            )
        return self


def explain(exc: ValidationError, what: str, model: type[BaseModel] | None = None) -> str:
    """One line naming every invalid field of `what` (e.g. "job 'x'") and its fix; an unknown field
    of `model` gets "did you mean" the closest declared one."""
    from microprocess.declarations.suggest import did_you_mean

    def problem(err: Any) -> str:
        where = ".".join(str(p) for p in err["loc"]) or "(whole)"
        text = f"field '{where}': {err['msg'].removeprefix('Value error, ')}"
        hint = did_you_mean(model, err["loc"]) if model is not None and err["type"] == "extra_forbidden" else ""
        return f"{text} ({hint})" if hint else text

    return f"{what} is invalid: {'; '.join(problem(err) for err in exc.errors())}"


def declare(**fields: object) -> JobDeclaration:
    """Build a `JobDeclaration`, turning validation errors into one clear message."""
    name = fields.get("name", "<unnamed>")
    try:
        return JobDeclaration.model_validate(fields)
    except ValidationError as exc:
        raise JobDeclarationError(explain(exc, f"job '{name}'", JobDeclaration)) from None


class UnknownJobError(KeyError):
    """A job name that is not declared."""

    def __str__(self) -> str:
        return str(self.args[0])


class JobRegistry:
    """The declared jobs, by name."""

    def __init__(self, jobs: list[JobDeclaration]) -> None:
        names = [j.name for j in jobs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise JobDeclarationError(f"job names must be unique; declared twice: {dupes}")
        self._jobs = {j.name: j for j in jobs}

    def get(self, name: str) -> JobDeclaration:
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownJobError(f"unknown job '{name}'; declared jobs: {sorted(self._jobs)}") from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def names(self) -> list[str]:
        return sorted(self._jobs)
