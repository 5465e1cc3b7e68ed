"""Fair share between the runs of one job: each run is a tenant of its job's SQS fair queue.

A standard SQS queue whose messages carry a `MessageGroupId` is a *fair queue* (AWS, 2025: "In
standard queues, using MessageGroupId enables fair queues"; no queue setting, no cost): SQS
counts each group id as a tenant and, when one tenant holds a disproportionate share of the
messages in flight (or of the recent processing time), delivers the other tenants' messages
first; among several such noisy tenants, the one with the fewest messages in flight first. So a
small run started while a 19-million-item run of the same job is going does not wait behind
that run's backlog: its tasks are delivered first, and two busy runs get about equal shares.

A run started `--priority high` is `w` tenants (w = its job's `priority_weight`, rounded, at
least 1), each task in one of them by a stable hash of its task id: SQS balances the messages in
flight across noisy tenants, so that run gets about w shares to a normal run's one.

`group_id` is the one source of truth: the splitter, the resume of parked tasks and anything
else that sends a run's task computes it here; the forwarder's re-sends keep the group of the
record they copy (`record_group`). Reduce parts, finalize and completion messages carry no group:
SQS treats each as a tenant of its own, so they are never held behind a run's backlog.
"""

from __future__ import annotations

import hashlib
from typing import Any

#: SQS's limit on a `MessageGroupId`, characters (letters, digits and punctuation).
MAX_GROUP_ID_CHARS = 128
#: The most tenants one run is split into (a `priority_weight` above this is capped for tenants).
MAX_TENANTS = 64


def tenant_count(priority: str | None, priority_weight: float) -> int:
    """How many tenants a run is: `priority_weight` rounded (at least 1, at most `MAX_TENANTS`)
    for a `high` run, else 1."""
    if priority != "high":
        return 1
    return max(1, min(MAX_TENANTS, round(priority_weight)))


def _base(run_id: str, suffix: str) -> str:
    if len(run_id) + len(suffix) <= MAX_GROUP_ID_CHARS:
        return run_id
    # A 128-character run id leaves no room for `#k`: keep its start and a hash of the whole,
    # so two long run ids still make different tenants.
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:16]
    return f"{run_id[: MAX_GROUP_ID_CHARS - len(suffix) - 17]}~{digest}"


def group_id(run_id: str, task_id: str, tenants: int = 1) -> str:
    """The `MessageGroupId` of task `task_id` of run `run_id`, which is `tenants` tenants: the run
    id for one; `<run_id>#<k>` for more, k a stable hash of the task id (a re-send of the task
    lands in the same tenant)."""
    if tenants <= 1:
        return _base(run_id, "")
    k = int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) % tenants
    suffix = f"#{k}"
    return f"{_base(run_id, suffix)}{suffix}"


def record_group(record: dict[str, Any]) -> str | None:
    """The `MessageGroupId` a received SQS record (a Lambda event record) was sent with; None for
    a message sent without one (before fair queues, mid-deploy): its copy goes without one too."""
    value = (record.get("attributes") or {}).get("MessageGroupId")
    return str(value) if value else None


def group_field(group: str | None) -> dict[str, str]:
    """`{"MessageGroupId": group}` to splice into a SendMessage call or batch entry ({} for none)."""
    return {"MessageGroupId": group} if group else {}
