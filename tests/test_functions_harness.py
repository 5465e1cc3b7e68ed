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


def test_an_invalid_visibility_change_reaches_the_caller_and_fails_the_test(stack: Stack) -> None:
    from tests.functions_harness import sqs_record

    # GIVEN a message SQS delivered and a record made by hand
    stack.sqs.send_message(QueueUrl=stack.task_queue, MessageBody="{}")
    [delivered] = stack.receive(stack.task_queue)
    hand_made = sqs_record("{}")
    url = stack.task_queue
    # WHEN a visibility change names a message id, or asks for more than SQS allows
    with pytest.raises(Exception, match=r"ReceiptHandle|receipt handle"):
        stack.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=delivered["messageId"], VisibilityTimeout=5)
    with pytest.raises(ValueError, match="0 to 43,200"):
        stack.sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=hand_made["receiptHandle"], VisibilityTimeout=50_000
        )
    # THEN each error reached the caller and is kept: the `stack` fixture fails a test that leaves one
    # (the forwarder logs such an error and goes on)
    assert len(stack.sqs.errors) == 2
    stack.sqs.errors.clear()
    # AND valid changes of both go through
    stack.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=delivered["receiptHandle"], VisibilityTimeout=0)
    stack.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=hand_made["receiptHandle"], VisibilityTimeout=1)
    assert stack.sqs.errors == []
