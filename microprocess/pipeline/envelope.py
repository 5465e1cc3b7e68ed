"""The task envelope: the versioned JSON message that travels on the push queue.

Validated where it is made (splitter, reduce claim) and where it is read
(forwarder, dead-letter handler). A task carries its item inline, or an S3
reference to it when the item is too big for a message (claim check).
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from microprocess.ledger import RunRecord

ENVELOPE_VERSION: Literal[1] = 1
#: SQS accepts bodies up to 1 MiB; we refuse anything larger before sending.
SQS_MAX_MESSAGE_BYTES = 1_048_576
#: Key prefix, in the platform bucket, of claim-checked items (the splitter writes them, the
#: forwarder reads nothing else by reference).
CLAIMS_PREFIX = "claims/"
#: Default claim-check threshold: envelopes above this many bytes carry an S3 reference instead.
DEFAULT_CLAIM_CHECK_BYTES = 200_000


class TaskKind(StrEnum):
    """What a message asks the service to do."""

    TASK = "task"  # one item
    REDUCE_PART = "reduce-part"  # reduce one ledger shard into a part file
    FINALIZE = "finalize"  # join the parts into the report, send the email
    COMPLETION = "completion"  # the signed completion callback of an ended run (its body travels as `item`)


class MalformedEnvelope(ValueError):
    """A queue message that is not a valid task envelope; the message says why."""


class EnvelopeTooLarge(ValueError):
    """An envelope over the size limit; the message names the size, the limit and the fix."""


class TaskEnvelope(BaseModel):
    """One message on the push queue.

    Attributes:
        v: envelope schema version.
        kind: task, reduce-part, finalize or completion.
        job: the job name (see `microprocess.declarations`).
        run_id: the run this task belongs to.
        task_id: deterministic id, unique within the run.
        shard: ledger shard of the task (for a reduce part: the shard it reduces).
        item: the item itself, for tasks small enough to travel inline (for a completion: the
            callback body).
        item_ref: `s3://bucket/key` of the item, for tasks that travel by reference.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = ENVELOPE_VERSION
    kind: TaskKind = TaskKind.TASK
    job: str = Field(min_length=1, max_length=64)
    run_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    task_id: str = Field(min_length=1, max_length=256)
    shard: int = Field(ge=0, lt=256)
    item: Any = None
    item_ref: str | None = Field(default=None, pattern=r"^s3://[^/]+/.+$")

    @model_validator(mode="after")
    def _payload(self) -> TaskEnvelope:
        if self.kind is TaskKind.TASK and (self.item is None) == (self.item_ref is None):
            raise ValueError("a task carries exactly one of 'item' and 'item_ref'")
        if self.kind is TaskKind.COMPLETION:
            if not isinstance(self.item, dict) or self.item_ref is not None:
                raise ValueError("a completion message carries its callback body as 'item' (an object), no 'item_ref'")
        elif self.kind is not TaskKind.TASK and (self.item is not None or self.item_ref is not None):
            raise ValueError(f"a {self.kind} message carries no item")
        return self

    def to_json(self, *, limit: int = SQS_MAX_MESSAGE_BYTES) -> str:
        """Serialize; raise `EnvelopeTooLarge` if the body exceeds `limit` bytes."""
        body = self.model_dump_json(exclude_none=True)
        size = len(body.encode())
        if size > limit:
            raise EnvelopeTooLarge(
                f"task {self.task_id} of run {self.run_id}: envelope is {size} bytes, limit is {limit} bytes; "
                "send the item by reference (claim check: item_ref=s3://...) or make the item smaller"
            )
        return body

    @classmethod
    def parse(cls, body: str | bytes) -> TaskEnvelope:
        """Parse and validate a message body; raise `MalformedEnvelope` saying what is wrong."""
        if isinstance(body, bytes):
            body = body.decode("utf-8", errors="replace")
        if len(body.encode()) > SQS_MAX_MESSAGE_BYTES:
            raise MalformedEnvelope(f"body is over {SQS_MAX_MESSAGE_BYTES} bytes")
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise MalformedEnvelope(f"body is not JSON: {exc.msg} at char {exc.pos}") from None
        if not isinstance(data, dict):
            raise MalformedEnvelope(f"body is JSON {type(data).__name__}, expected an object")
        if data.get("v") not in (None, ENVELOPE_VERSION):
            raise MalformedEnvelope(
                f"envelope version {data.get('v')!r} is not supported (expected {ENVELOPE_VERSION})"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'envelope'}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise MalformedEnvelope(f"wrong schema: {problems}") from None

    @property
    def idempotency_key(self) -> str:
        """The key the service uses to deduplicate pushes: `<run>:<task>`."""
        return f"{self.run_id}:{self.task_id}"


def shard_of(task_id: str, shard_count: int) -> int:
    """The ledger shard of a task: a stable hash of its id modulo the shard count."""
    digest = hashlib.blake2b(task_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count


def outside_run(env: TaskEnvelope, run: RunRecord) -> str | None:
    """Why a message naming `run` is not one of its messages, or None when it may be: a shard
    the run does not have, a task on another shard than its id's, or a task id beyond the run
    (`RunRecord.owns_task` False; not yet accounted is not outside). The same check with or
    without a pause: what fails it is dead-lettered and quarantined, never parked."""
    if not 0 <= env.shard < run.shard_count:
        return (
            f"{env.kind} '{env.task_id}' names shard {env.shard}; run '{run.run_id}' has shards "
            f"0..{run.shard_count - 1}"
        )
    if env.kind is TaskKind.TASK and (
        env.shard != shard_of(env.task_id, run.shard_count) or run.owns_task(env.task_id) is False
    ):
        return f"task '{env.task_id}' (shard {env.shard}) is not part of run '{run.run_id}'"
    return None


def reduce_part_id(shard: int) -> str:
    """Task id of the reduce part for `shard`."""
    return f"reduce-part-{shard:03d}"


FINALIZE_TASK_ID = "finalize"
#: Task id of a run's completion callback (its idempotency key is `<run>:completion`).
COMPLETION_TASK_ID = "completion"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
