"""The event-source stand-in the function tests drive: it must fail, not hang, when messages stay in flight."""

from __future__ import annotations

from typing import Any

import pytest

from tests.functions_harness import Stack


def test_drive_fails_instead_of_waiting_on_messages_kept_in_flight(stack: Stack) -> None:
    # GIVEN a queue whose only message a crashed consumer took with a 10-minute visibility timeout
    stack.sqs.send_message(QueueUrl=stack.task_queue, MessageBody="{}")
    taken = stack.sqs.receive_message(QueueUrl=stack.task_queue, VisibilityTimeout=600)
    assert len(taken["Messages"]) == 1
    handled: list[dict[str, Any]] = []

    def handler(event: dict[str, Any]) -> dict[str, Any]:
        handled.append(event)
        return {"batchItemFailures": []}

    # WHEN the event source stand-in drives the queue THEN it fails, naming what is left in flight
    with pytest.raises(AssertionError, match="1 messages in flight"):
        stack.drive(handler, stack.task_queue, timeout_s=0.5)
    assert handled == []
