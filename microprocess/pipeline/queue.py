"""Sending envelopes to the push queue: SendMessageBatch, 10 per call, from a thread pool.

Per-entry failures in a batch response are retried with backoff, never dropped; if
they keep failing, `QueueSendError` is raised and the caller (a splitter, which has
not accounted the page yet) is retried as a whole.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from microprocess.pipeline.tenants import group_field

SQS_BATCH = 10
#: SendMessageBatch calls a sender keeps in flight (the splitter's per-invocation send rate;
#: the planner's split model reads it).
SEND_THREADS = 8


class QueueSendError(RuntimeError):
    """Messages that SQS refused after every retry; the message lists why."""


class QueueSender:
    """Sends message bodies to one queue.

    Args:
        client: a boto3 SQS client.
        queue_url: the target queue.
        threads: concurrent SendMessageBatch calls.
        attempts: tries per entry before giving up.
    """

    def __init__(self, *, client: Any, queue_url: str, threads: int = SEND_THREADS, attempts: int = 8) -> None:
        if not queue_url:
            raise ValueError("QueueSender needs a queue URL (is TASK_QUEUE_URL set?)")
        self.client = client
        self.queue_url = queue_url
        self.attempts = attempts
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sqs-send")

    def send(self, bodies: Sequence[str], *, delay_s: int = 0, groups: Sequence[str | None] | None = None) -> int:
        """Send every body (with `groups[i]` as its `MessageGroupId`, its run's tenant:
        `microprocess.pipeline.tenants`; none when not given); return the SendMessageBatch calls made."""
        if groups is not None and len(groups) != len(bodies):
            raise ValueError(f"{len(groups)} group ids for {len(bodies)} messages: give one per message")
        paired = list(zip(bodies, groups if groups is not None else [None] * len(bodies), strict=True))
        chunks = [paired[i : i + SQS_BATCH] for i in range(0, len(paired), SQS_BATCH)]
        return sum(self._pool.map(lambda c: self._send_chunk(c, delay_s), chunks))

    def _send_chunk(self, messages: list[tuple[str, str | None]], delay_s: int) -> int:
        pending = {str(i): message for i, message in enumerate(messages)}
        calls = 0
        errors: list[str] = []
        for attempt in range(self.attempts):
            entries = [
                {"Id": i, "MessageBody": b, **group_field(g), **({"DelaySeconds": delay_s} if delay_s else {})}
                for i, (b, g) in pending.items()
            ]
            try:
                resp = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
                calls += 1
            except Exception as exc:  # throttling or a network fault: retry the whole chunk
                errors = [f"{type(exc).__name__}: {exc}"]
                time.sleep(min(0.05 * 2**attempt, 2.0))
                continue
            for ok in resp.get("Successful", []):
                pending.pop(ok["Id"], None)
            failed = resp.get("Failed", [])
            errors = [f"{f.get('Code')}: {f.get('Message')}" for f in failed]
            if not pending:
                return calls
            if any(f.get("SenderFault") for f in failed):
                break  # the message itself is wrong: retrying cannot help
            time.sleep(min(0.05 * 2**attempt, 2.0))
        raise QueueSendError(f"{len(pending)} of {len(messages)} messages not sent to {self.queue_url}: {errors[:3]}")
