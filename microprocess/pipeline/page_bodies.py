"""The task envelopes of one page of items, as the splitter sends them.

An item that cannot be sent becomes a FAILED task with its reason (the run goes on, and the
item is counted and reported like any outcome): a `null` item, an item without the job's
`item_id_field` (the report, `microprocess tasks --item` and a retry find an item by it), an
item the envelope refuses. An item over the claim-check size goes by S3 reference.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from microprocess.declarations import JobDeclaration
from microprocess.ledger import RunRecord, TaskOutcome, TaskState
from microprocess.pipeline.envelope import CLAIMS_PREFIX, EnvelopeTooLarge, TaskEnvelope, canonical_json, shard_of
from microprocess.pipeline.settings import RuntimeSettings

log = logging.getLogger(__name__)

#: The key of an item that stands for a claim-checked item of an earlier run (a retry's source).
ITEM_REF_KEY = "__item_ref"


def is_item_ref(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {ITEM_REF_KEY} and bool(item[ITEM_REF_KEY])


def missing_item_id(job: JobDeclaration, item: Any) -> str | None:
    """Why `item` has no id (None when it has one): the job's `item_id_field` must be a field of
    the item with a value other than null or an empty string."""
    field = job.item_id_field
    if is_item_ref(item):
        return None  # the item itself (claim-checked) had its id when it was first split
    if not isinstance(item, dict):
        return (
            f"the item is a {type(item).__name__}, not an object with the job's item_id_field '{field}'. "
            f"Fix: give every item a '{field}' field (or set item_id_field in [jobs.{job.name}])"
        )
    value = item.get(field)
    if value is None or value == "":
        present = ", ".join(sorted(map(str, item))[:8]) or "none"
        return (
            f"the item has no '{field}' (the job's item_id_field; its fields: {present}). "
            f"Fix: give every item a '{field}', or set item_id_field in [jobs.{job.name}] to the field that names it"
        )
    return None


class PageBodies:
    """Builds a page's envelopes; `s3` is used for claim checks only."""

    def __init__(self, *, settings: RuntimeSettings, s3: Any) -> None:
        self.settings = settings
        self.s3 = s3

    def bodies(
        self, job: JobDeclaration, run: RunRecord, seg: str, seq: int, items: list[Any]
    ) -> tuple[list[str], list[str], list[TaskOutcome]]:
        """The envelopes of a page, their task ids, and a FAILED outcome for each item that cannot be sent."""
        bodies: list[str] = []
        task_ids: list[str] = []
        unsendable: list[TaskOutcome] = []
        for i, item in enumerate(items):
            task_id = f"{seg}-{seq + i:09d}"
            shard = shard_of(task_id, run.shard_count)
            try:
                if item is None:
                    raise ValueError("the item is null; a task needs an item (a JSON value other than null)")
                no_id = missing_item_id(job, item)
                if no_id:
                    raise ValueError(no_id)
                bodies.append(self._body(job, run.run_id, task_id, shard, item))
                task_ids.append(task_id)
            except (ValidationError, EnvelopeTooLarge, ValueError, TypeError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                error = f"item {seq + i} of segment {seg} cannot be sent: {reason}"
                log.warning("run %s: %s", run.run_id, error)
                item_id = str(item[job.item_id_field]) if isinstance(item, dict) and job.item_id_field in item else None
                unsendable.append(
                    TaskOutcome(task_id, shard, TaskState.FAILED, 0, item_id, error=error, item=keepable(item))
                )
        return bodies, task_ids, unsendable

    def _body(self, job: JobDeclaration, run_id: str, task_id: str, shard: int, item: Any) -> str:
        if is_item_ref(item):
            return TaskEnvelope(
                job=job.name, run_id=run_id, task_id=task_id, shard=shard, item_ref=item[ITEM_REF_KEY]
            ).to_json()
        env = TaskEnvelope(job=job.name, run_id=run_id, task_id=task_id, shard=shard, item=item)
        try:
            return env.to_json(limit=self.settings.claim_check_bytes)
        except EnvelopeTooLarge:
            return self._claim_check(env, item)

    def _claim_check(self, env: TaskEnvelope, item: Any) -> str:
        """Put an oversized item in S3 (deterministic key) and send a reference to it."""
        if not self.settings.reports_bucket:
            raise EnvelopeTooLarge(
                f"task {env.task_id}: item is over {self.settings.claim_check_bytes} bytes and no "
                "REPORTS_BUCKET is set for the claim check"
            )
        key = f"{CLAIMS_PREFIX}{env.job}/{env.run_id}/{env.task_id}.json"
        self.s3.put_object(Bucket=self.settings.reports_bucket, Key=key, Body=canonical_json(item).encode())
        ref = f"s3://{self.settings.reports_bucket}/{key}"
        return TaskEnvelope(
            job=env.job, run_id=env.run_id, task_id=env.task_id, shard=env.shard, item_ref=ref
        ).to_json()


def keepable(item: Any) -> Any:
    """An unsendable item as kept on its FAILED task (small enough, JSON-able), or None."""
    try:
        text = json.dumps(item, default=str)
    except (TypeError, ValueError):
        return None
    return None if item is None or len(text) > 100_000 else item
