"""bench.console_pages' split of a page's time between moto and our code: a recorded call is
answered again at once, with the same answer, and a call it has not seen goes to the client."""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.console_pages import CallCounter


class SlowClient:
    def __init__(self) -> None:
        self.calls = 0

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        return {"Item": {"pk": {"S": kwargs["Key"]}}, "n": self.calls}


def test_replay_answers_a_recorded_call_without_the_client_and_counts_the_rest() -> None:
    inner, calls = SlowClient(), Counter[str]()
    client = CallCounter(inner, calls, "dynamodb")
    first = client.get_item(Key="a")
    client.replay = True
    again = client.get_item(Key="a")
    assert again == first and inner.calls == 1 and client.misses == 0
    again["Item"] = "changed"  # a caller's change to an answer is not kept in the recording
    assert client.get_item(Key="a") == first
    assert client.get_item(Key="b")["n"] == 2 and client.misses == 1
    assert calls == {"dynamodb.get_item": 4}
