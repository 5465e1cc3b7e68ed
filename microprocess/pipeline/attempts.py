"""What a queue message carries about its attempts and its uncounted re-sends.

A message re-sent without counting its receive (parked by a pause and resumed, deferred, its
service unreachable, throttled, or its signature refused) carries the attempts already made in
`PRIOR_ATTEMPTS_ATTRIBUTE`, which is added to its receive count; and since when it has been
re-sent for that reason, in a since-when attribute (epoch seconds).
"""

from __future__ import annotations

from typing import Any

#: Message attribute carrying the attempts a re-sent (resumed, deferred, ...) message had already made.
PRIOR_ATTEMPTS_ATTRIBUTE = "microprocess-prior-attempts"


def receive_count(record: dict[str, Any]) -> int:
    """How many times SQS has delivered this message (`ApproximateReceiveCount`, 1 when absent)."""
    return int(record.get("attributes", {}).get("ApproximateReceiveCount", "1") or 1)


def prior_attempts(record: dict[str, Any]) -> int:
    """Attempts a message made before it was parked and re-sent (0 for an ordinary message)."""
    attrs = record.get("messageAttributes") or {}
    attr = attrs.get(PRIOR_ATTEMPTS_ATTRIBUTE) or {}
    value = attr.get("stringValue") or attr.get("StringValue") or "0"
    return int(value) if str(value).isdigit() else 0


def attempt_of(record: dict[str, Any]) -> int:
    """This receive's attempt number: the receives of this message plus the attempts made before it
    was re-sent (parked by a pause, deferred, or its service unreachable)."""
    return receive_count(record) + prior_attempts(record)


def epoch_attribute(record: dict[str, Any], name: str) -> float | None:
    """A message attribute holding epoch seconds (None when absent or not a number)."""
    attr = (record.get("messageAttributes") or {}).get(name) or {}
    value = attr.get("stringValue") or attr.get("StringValue")
    try:
        since = float(value) if value is not None else None
    except ValueError:
        return None
    return since if since is not None and since == since else None  # not NaN
