"""Parking: where a paused run's messages wait in the ledger until `resume`.

The forwarder's pause gate (`microprocess.pipeline.admission`) parks a message of a paused run
here and acknowledges it; `microprocess.control.pause` (the pause and resume commands) reads
the parked records back, re-sends them and deletes them.

Parked messages: pk `RUN#<run>#P<shard>`, sk `M#<kind>#<task>`, with the body and the
attempts already made. One record per task (a duplicate message overwrites its own record):
one write unit per parked message (≤ 1 KB), paid once, whatever the pause's length.
"""

from __future__ import annotations

from typing import Any

from microprocess.ledger import Ledger, utc_now_iso
from microprocess.ledger.records import _run_pk, _to_ddb
from microprocess.pipeline.attempts import prior_attempts, receive_count
from microprocess.pipeline.envelope import TaskEnvelope


def parked_pk(run_id: str, shard: int) -> str:
    """The partition holding a run's parked messages of one shard."""
    return f"{_run_pk(run_id)}#P{shard}"


def park(ledger: Ledger, record: dict[str, Any], env: TaskEnvelope) -> None:
    """Keep a paused run's message in the ledger until `resume` (the caller then acknowledges it).

    The receive that parks it made no push, so it is not counted as an attempt."""
    ledger.client.put_item(
        TableName=ledger.table_name,
        Item=_to_ddb(
            {
                "pk": parked_pk(env.run_id, env.shard),
                "sk": f"M#{env.kind}#{env.task_id}",
                "job": env.job,
                "kind": str(env.kind),
                "body": record.get("body", ""),
                "prior_attempts": prior_attempts(record) + max(receive_count(record) - 1, 0),
                "parked_at": utc_now_iso(),
            }
        ),
    )
