"""The splitter's start event: what starts (or continues) a run, parsed and checked, and run ids.

A schedule, `microprocess run`, a retry, the sweeper's restart and the splitter's own
continuation all invoke the splitter with a start event; `parse_start_event` names the field
and the fix of any it cannot act on (`StartEventError`).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from microprocess.declarations import JobDeclaration, s3_scope
from microprocess.stacks import MANIFESTS_PREFIX


class StartEventError(ValueError):
    """A start event the splitter cannot act on; the message names the field and the fix."""


@dataclass(frozen=True)
class StartRequest:
    job: str
    run_id: str
    items: list[Any] | None = None
    retry_of: str | None = None
    continuation: int = 0
    segment: int | None = None  # one parallel-scan segment to split; None: all of them
    items_uri: str | None = None  # an s3:// JSONL or CSV manifest of this run's items
    items_format: str | None = None
    source_uri: str | None = None  # an s3:// manifest that replaces the declared source
    params: dict[str, Any] | None = None  # passed into every task by the forwarder
    time: str | None = None  # a scheduled start's event time (ISO 8601): the run's date
    include_not_attempted: bool = False  # with retry_of: also the tasks that run never attempted
    priority: str | None = None  # "high": a larger share of its job's queue and service (priority_weight)


#: A run's priority in the start event (`microprocess run --priority`).
PRIORITIES = ("normal", "high")
_RUN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _compact(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def scheduled_run_id(job: str, event_time: str) -> str:
    """The run id of a scheduled start: the job and the event's time, so a doubled
    delivery of the same schedule tick starts the same run."""
    try:
        ts = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
    except ValueError:
        raise StartEventError(f"scheduled event 'time' {event_time!r} is not an ISO 8601 timestamp") from None
    return f"{job}-{_compact(ts)}"


def new_run_id(job: str, now: datetime | None = None) -> str:
    """A fresh run id for a manual start: `<job>-<UTC time>-<4 hex>`."""
    return f"{job}-{_compact(now or datetime.now(UTC))}-{secrets.token_hex(2)}"


def parse_start_event(event: Any) -> StartRequest:
    """A scheduled EventBridge event (the rule's input names the job and carries the
    event time), or a manual start `{"job", "run_id"?, "params"?}` with at most one of
    `items` (inline), `items_uri` (+ `items_format`), `source_uri` or `retry_of`."""
    if not isinstance(event, dict):
        raise StartEventError(f"start event must be a JSON object, got {type(event).__name__}")
    raw_detail = event.get("detail")
    detail: dict[str, Any] = raw_detail if isinstance(raw_detail, dict) else {}
    job = event.get("job") or detail.get("job")
    if not isinstance(job, str) or not job:
        raise StartEventError('start event has no \'job\': pass {"job": "<declared job name>"}')
    items = event.get("items")
    if items is not None and not isinstance(items, list):
        raise StartEventError("start event 'items' must be a list of items")
    run_id = event.get("run_id")
    if run_id is None:
        if event.get("source") in ("schedule", "aws.events") or "time" in event:
            if not isinstance(event.get("time"), str):
                raise StartEventError("scheduled start event has no 'time' to derive the run id from")
            run_id = scheduled_run_id(job, event["time"])
        else:
            run_id = new_run_id(job)
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise StartEventError(f"run_id {run_id!r} must be 1-128 chars of letters, digits and . _ : -")
    retry_of = event.get("retry_of")
    if retry_of is not None and not isinstance(retry_of, str):
        raise StartEventError("start event 'retry_of' must be a run id")
    segment = event.get("segment")
    if segment is not None and (not isinstance(segment, int) or segment < 0):
        raise StartEventError(f"start event 'segment' must be a segment number, got {segment!r}")
    items_uri, source_uri = event.get("items_uri"), event.get("source_uri")
    for name, uri in (("items_uri", items_uri), ("source_uri", source_uri)):
        if uri is not None and not (isinstance(uri, str) and _S3_URI.match(uri)):
            raise StartEventError(f"start event '{name}' must be an s3://bucket/key URI, got {uri!r}")
    given = [
        n
        for n, v in (("items", items), ("items_uri", items_uri), ("source_uri", source_uri), ("retry_of", retry_of))
        if v is not None
    ]
    if len(given) > 1:
        raise StartEventError(f"start event gives {given}: give at most one of items, items_uri, source_uri, retry_of")
    items_format = event.get("items_format")
    if items_format is not None and items_format not in ("jsonl", "csv"):
        raise StartEventError(f"start event 'items_format' must be 'jsonl' or 'csv', got {items_format!r}")
    include_not_attempted = event.get("include_not_attempted", False)
    if not isinstance(include_not_attempted, bool) or (include_not_attempted and retry_of is None):
        raise StartEventError("start event 'include_not_attempted' must be true or false, and only with 'retry_of'")
    priority = event.get("priority")
    if priority is not None and priority not in PRIORITIES:
        raise StartEventError(f"start event 'priority' must be one of {list(PRIORITIES)}, got {priority!r}")
    params = event.get("params")
    if params is not None and not isinstance(params, dict):
        raise StartEventError("start event 'params' must be a JSON object {\"<key>\": <value>}")
    return StartRequest(
        job,
        run_id,
        items,
        retry_of,
        int(event.get("continuation", 0)),
        segment,
        items_uri,
        items_format,
        source_uri,
        params,
        event.get("time") if isinstance(event.get("time"), str) else None,
        include_not_attempted,
        priority,
    )


_S3_URI = re.compile(r"^s3://[^/]+/.+$")


def run_date(req: StartRequest) -> str:
    """The run's UTC date (YYYY-MM-DD) for a source's `{date}`: its schedule tick, else now."""
    if req.time:
        try:
            return datetime.fromisoformat(req.time.replace("Z", "+00:00")).astimezone(UTC).strftime("%Y-%m-%d")
        except ValueError:
            raise StartEventError(f"scheduled event 'time' {req.time!r} is not an ISO 8601 timestamp") from None
    return datetime.now(UTC).strftime("%Y-%m-%d")


def source_uri_refusal(job: JobDeclaration, uri: str, reports_bucket: str) -> str | None:
    """Why a run of `job` may not read the manifest `uri` (None when it may): the splitter's role
    reads the job's declared S3 scope and the platform's `manifests/` prefix, nothing else."""
    scope = s3_scope(job.source)
    if scope is not None and scope.allows(uri):
        return None
    if reports_bucket and uri.startswith(f"s3://{reports_bucket}/{MANIFESTS_PREFIX}"):
        return None
    allowed = [str(scope)] if scope else []
    if reports_bucket:
        allowed.append(f"s3://{reports_bucket}/{MANIFESTS_PREFIX}*")
    return (
        f"{uri} is outside what the job '{job.name}' may read ({', '.join(allowed)}): the splitter's role reads "
        f"only those. Fix: put the manifest there, declare source.prefix = 's3://<bucket>/<folder>/' for the job "
        f"and redeploy, or upload the file with `microprocess run {job.name} --items FILE`"
    )


def manifest_format(uri: str, given: str | None, declared: str | None = None) -> str:
    """The format of a manifest: given, else its file extension, else the declared one."""
    if given:
        return given
    for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv")):
        if uri.lower().endswith(ext):
            return fmt
    if declared:
        return declared
    raise StartEventError(f"cannot tell the format of {uri}: pass 'items_format' ('jsonl' or 'csv')")
