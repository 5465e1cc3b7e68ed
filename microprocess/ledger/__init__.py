"""The run ledger: runs (parents), tasks (children) and spread counters in one DynamoDB table.

`records` holds the key schema and the plain records; `table` the `Ledger` that writes them
under the invariants of ARCHITECTURE §3 (counted once, reduce once, repair never over-counts),
composed of one module per concern: `store`, `runs`, `split`, `counters`, `tasks`, `completion`,
`repair`, `results` (docs/ledger.md: which module keeps which invariant).
"""

from microprocess.ledger.records import (
    CRASH_AFTER_COUNTER_UPDATE,
    CRASH_AFTER_TASK_WRITE,
    CURSOR_DONE,
    LEDGER_SCHEMA,
    LedgerError,
    LedgerSchema,
    Progress,
    RecordResult,
    RepairState,
    RunNotActive,
    RunNotFound,
    RunRecord,
    RunStatus,
    TaskOutcome,
    TaskRecord,
    TaskState,
    ended_status,
    failed_percentage,
    run_verdict,
    utc_now_iso,
)
from microprocess.ledger.table import Ledger, ledger_table_definition

__all__ = [
    "CRASH_AFTER_COUNTER_UPDATE",
    "CRASH_AFTER_TASK_WRITE",
    "CURSOR_DONE",
    "LEDGER_SCHEMA",
    "Ledger",
    "LedgerError",
    "LedgerSchema",
    "Progress",
    "RecordResult",
    "RepairState",
    "RunNotActive",
    "RunNotFound",
    "RunRecord",
    "RunStatus",
    "TaskOutcome",
    "TaskRecord",
    "TaskState",
    "ended_status",
    "failed_percentage",
    "ledger_table_definition",
    "run_verdict",
    "utc_now_iso",
]
