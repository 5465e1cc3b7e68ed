"""A job's concurrency cap in force: its SQS event source mapping's maximum concurrency.

Each job has its own task queue and its own event source mapping on the one shared task
forwarder. The mapping is found by the forwarder function and the job's queue ARN (from the
`JobQueueUrls` stack output), so no mapping id is stored anywhere. Changing the cap takes
effect for new batches within about a minute; batches in flight finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from microprocess.declarations import JobDeclaration

#: The range AWS accepts for an SQS event source's maximum concurrency.
MIN_CONCURRENCY = 2
MAX_CONCURRENCY = 1000


class ScaleError(ValueError):
    """A scale that cannot be done; the message names the limit and the fix."""


def check_concurrency(job: JobDeclaration, concurrency: int) -> None:
    """Refuse a cap outside 2..1000 or above the job's declared `max_concurrency`."""
    if not MIN_CONCURRENCY <= concurrency <= MAX_CONCURRENCY:
        raise ScaleError(
            f"--concurrency {concurrency} is outside {MIN_CONCURRENCY}..{MAX_CONCURRENCY}, the range of an SQS "
            f"event source's maximum concurrency; choose a value in it (job '{job.name}' declares "
            f"max_concurrency = {job.max_concurrency})"
        )
    if concurrency > job.max_concurrency:
        raise ScaleError(
            f"--concurrency {concurrency} is above job '{job.name}''s declared max_concurrency "
            f"({job.max_concurrency}); choose at most {job.max_concurrency}, or raise max_concurrency for "
            f"[jobs.{job.name}] in microprocess.toml and deploy again"
        )


@dataclass(frozen=True)
class EventSourceCap:
    """One job's event source mapping and the cap in force.

    Attributes:
        job: the job name.
        uuid: the mapping's id.
        queue_arn: the job's task queue.
        function: the forwarder function (ARN as the mapping names it).
        concurrency: the maximum concurrency in force (None: no cap set, AWS's default of 1,000).
        state: the mapping's state (`Enabled`, `Updating`, ...).
        declared: the job's declared `max_concurrency`.
    """

    job: str
    uuid: str
    queue_arn: str
    function: str
    concurrency: int | None
    state: str
    declared: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "concurrency": self.concurrency,
            "declared_max_concurrency": self.declared,
            "state": self.state,
            "mapping_uuid": self.uuid,
            "queue_arn": self.queue_arn,
            "function": self.function,
        }


class JobScaler:
    """Reads and sets the concurrency cap of a job's event source mapping.

    Args:
        lambda_client: a boto3 Lambda client.
        sqs: a boto3 SQS client (to turn the job's queue URL into its ARN).
        forwarder_function: the shared task forwarder's name (`ForwarderFunctionName`).
        job_queue_urls: each job's task queue URL (`JobQueueUrls`).
    """

    def __init__(self, *, lambda_client: Any, sqs: Any, forwarder_function: str, job_queue_urls: dict[str, str]):
        self.lambda_client, self.sqs = lambda_client, sqs
        self.forwarder_function = forwarder_function
        self.job_queue_urls = job_queue_urls

    def queue_arn(self, job: JobDeclaration) -> str:
        url = self.job_queue_urls.get(job.name)
        if not url:
            raise ScaleError(
                f"the stack has no task queue for job '{job.name}' (JobQueueUrls names {sorted(self.job_queue_urls)}); "
                "deploy the stack again so that it creates the job's queue"
            )
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        return str(attrs["QueueArn"])

    def cap(self, job: JobDeclaration) -> EventSourceCap:
        """The job's mapping and the cap in force."""
        arn = self.queue_arn(job)
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"FunctionName": self.forwarder_function, "EventSourceArn": arn}
        while True:
            resp = self.lambda_client.list_event_source_mappings(**kwargs)
            found.extend(resp.get("EventSourceMappings", []))
            if not resp.get("NextMarker"):
                break
            kwargs["Marker"] = resp["NextMarker"]
        if len(found) != 1:
            raise ScaleError(
                f"expected one event source mapping from {arn} to {self.forwarder_function}, found {len(found)}; "
                "deploy the stack again (each job's queue has one mapping on the task forwarder)"
            )
        return self._cap(job, found[0])

    def set(self, job: JobDeclaration, concurrency: int) -> tuple[EventSourceCap, EventSourceCap]:
        """Set the cap to `concurrency` (checked first); returns (before, after)."""
        check_concurrency(job, concurrency)
        before = self.cap(job)
        resp = self.lambda_client.update_event_source_mapping(
            UUID=before.uuid, ScalingConfig={"MaximumConcurrency": concurrency}
        )
        return before, self._cap(job, resp)

    @staticmethod
    def _cap(job: JobDeclaration, mapping: dict[str, Any]) -> EventSourceCap:
        scaling = mapping.get("ScalingConfig") or {}
        value = scaling.get("MaximumConcurrency")
        return EventSourceCap(
            job=job.name,
            uuid=str(mapping["UUID"]),
            queue_arn=str(mapping.get("EventSourceArn", "")),
            function=str(mapping.get("FunctionArn", "")),
            concurrency=int(value) if value is not None else None,
            state=str(mapping.get("State", "")),
            declared=job.max_concurrency,
        )
