"""The chaos suite's matrix: each scenario (its faults, its items, what it must end as) and the
evidence that its fault fired (`evidence_problems`): a scenario whose fault did not happen fails,
it does not pass by luck. `microprocess.chaos.suite` runs them on the local stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from microprocess.chaos.faults import FIRED_LOG_PREFIX
from microprocess.declarations import JobDeclaration, SourceKind, get_declarations
from microprocess.ledger import RunStatus

#: The job the suite drives: `[local] chaos_job` of the declaration file.
JOB: JobDeclaration = get_declarations().jobs.get(get_declarations().local.chaos_job)  # type: ignore[union-attr]


def _item_ids() -> str:
    """The id format of the chaos job's seeded items (`local_item_ids` of its source table)."""
    table = get_declarations().tables.get(JOB.source.table or "") if JOB.source.kind is SourceKind.DYNAMODB else None
    if table is None or not table.local_item_ids:
        raise SystemExit(
            f"the chaos job '{JOB.name}' must read a declared table with local_seed and local_item_ids "
            "(the suite addresses seeded items by number)"
        )
    return table.local_item_ids


def item(i: int) -> dict[str, str]:
    """The i-th seeded item of the chaos job's source (1-based), as the splitter reads it."""
    return {JOB.item_id_field: _item_ids().format(n=i)}


#: The error a run stopped by the suite carries (first in the run's error).
STOP_REASON = "stopped by the chaos suite mid-flight"
#: An id no seeded item has: the service answers 404 (a permanent failure).
UNKNOWN_ITEM_ID = "UNKNOWN-0000000"


@dataclass(frozen=True)
class Scenario:
    """One chaos run.

    Attributes:
        name: short name, shown in the summary table.
        items: source items (the seeded items 1..items, plus `extra_items`).
        function_faults: `microprocess.chaos.faults.FaultConfig` keys.
        service_faults: `microservice.chaos.ChaosConfig` keys.
        restart_service_at: restart the queue service when this fraction of tasks is done.
        malformed: put malformed messages straight on the task queue.
        extra_items: items added to the source (unknown items, duplicates).
        expect: the status the run must end with.
        evidence: `Row` counts that must be above 0 for the scenario to count: proof that its
            fault fired (e.g. `splitter_kills`, `duplicates_absorbed`, `retries`, `crashes`,
            `ambiguous_writes`, `quarantined`). Required for every scenario with a fault.
        kill_splitter: the first this many splitter invocations crash after sending a page
            (deterministic, unlike a crash rate), then the split resumes.
        stop_at: stop the run (the platform's stop, `control.stop.stop_run`, its reduce enqueued
            at once) when this fraction of its tasks is done: its report must hold every task
            once, a done row or a not-attempted row.
    """

    name: str
    items: int
    function_faults: dict[str, Any] = field(default_factory=dict)
    service_faults: dict[str, Any] = field(default_factory=dict)
    restart_service_at: float | None = None
    malformed: bool = False
    extra_items: tuple[dict[str, str], ...] = ()
    expect: RunStatus = RunStatus.SUCCEEDED
    evidence: tuple[str, ...] = ()
    kill_splitter: int = 0
    stop_at: float | None = None

    def __post_init__(self) -> None:
        faulty = (
            self.stop_at
            or self.function_faults
            or self.service_faults
            or self.restart_service_at
            or self.malformed
            or self.extra_items
            or self.kill_splitter
        )
        if faulty and not self.evidence:
            raise ValueError(
                f"scenario '{self.name}' injects a fault but names no evidence that it fired: "
                f"set evidence to some of {sorted(EVIDENCE)}"
            )
        unknown = set(self.evidence) - EVIDENCE
        if unknown:
            raise ValueError(f"scenario '{self.name}': unknown evidence {sorted(unknown)}; known: {sorted(EVIDENCE)}")

    def source(self) -> list[dict[str, str]]:
        return [item(i) for i in range(1, self.items + 1)] + list(self.extra_items)


def scenarios(size: str) -> list[Scenario]:
    n = 400 if size == "full" else 100
    crash = 0.04 if size == "full" else 0.05
    matrix = [
        Scenario("baseline", n),
        Scenario("duplicates", n, function_faults={"duplicate_rate": 0.25}, evidence=("duplicates_absorbed",)),
        Scenario(
            "forwarder-crashes",
            n,
            function_faults={
                "crash_rates": {
                    "before_push": crash,
                    "after_push": crash,
                    "after_task_write": crash,
                    "after_counter_update": crash,
                }
            },
            evidence=("crashes",),
        ),
        Scenario(
            "service-503-429",
            n,
            service_faults={"rate_503": 0.15, "rate_429": 0.15, "retry_after_s": 1},
            evidence=("retries",),
        ),
        Scenario(
            "poison-under-tolerance",
            n,
            # one poison item (500 until max attempts) in >= 100 items: within the 1% tolerance
            service_faults={"poison_ids": [item(7)[JOB.item_id_field]]},
            evidence=("retries", "failed"),
        ),
        Scenario(
            "poison-over-tolerance",
            n,
            service_faults={
                "poison_ids": [item(i)[JOB.item_id_field] for i in (3, 5, 8)],
                "bad_request_ids": [item(i)[JOB.item_id_field] for i in (11, 13)],
            },
            expect=RunStatus.FAILED,
            evidence=("retries", "failed"),
        ),
        # The first two splitter invocations die after sending their page (the resumed one
        # re-sends it: duplicates the ledger absorbs); a crash rate could miss every page.
        Scenario("splitter-killed", n, kill_splitter=2, evidence=("splitter_kills",)),
        # Stopped mid-flight while messages are duplicated and forwarders die at every point:
        # batches in flight at the stop still record tasks; the report must add up.
        Scenario(
            "stopped-mid-flight",
            n,
            function_faults={
                "duplicate_rate": 0.2,
                "crash_rates": {"before_push": crash, "after_push": crash, "after_task_write": crash},
            },
            stop_at=0.3,
            expect=RunStatus.FAILED,
            # duplicates delivered after the stop are acknowledged, not absorbed: the injection is the evidence
            evidence=("duplicates_sent", "crashes", "not_attempted"),
        ),
        # One item kills the service each time it is pushed (its request read, then the process
        # gone: a poison item, an OOM); the suite restarts the service as its supervisor would.
        # Each such push reached the service, so it counts: the item ends FAILED after exactly
        # max_attempts pushes (and crashes), and the run ends (1 item is within the tolerance).
        Scenario(
            "service-crash-poison",
            n,
            service_faults={"crash_ids": [item(9)[JOB.item_id_field]]},
            evidence=("service_restarts", "failed"),
        ),
        Scenario(
            "ambiguous-writes",
            n,
            # DynamoDB writes applied, then answered as failed: the SDK sends them again
            function_faults={"applied_then_error": 0.1},
            evidence=("ambiguous_writes",),
        ),
        Scenario(
            "bad-input",
            n,
            malformed=True,
            # an unknown item (404 → FAILED) and a duplicate item in the source (its own task)
            extra_items=({JOB.item_id_field: UNKNOWN_ITEM_ID}, item(2)),
            evidence=("quarantined", "failed"),
        ),
    ]
    if size == "full":
        matrix.insert(
            4,
            Scenario(
                "service-timeouts",
                n,
                service_faults={"rate_timeout": 0.02, "timeout_s": JOB.task_timeout_s + 1},
                evidence=("retries",),
            ),
        )
        matrix.insert(5, Scenario("service-restarted", n, restart_service_at=0.4, evidence=("service_restarts",)))
        return matrix
    small = ("forwarder-crashes", "duplicates", "poison-over-tolerance", "bad-input")
    return [s for s in matrix if s.name in small]


@dataclass
class Row:
    scenario: str
    items: int
    status: str = ""
    succeeded: int = 0
    failed: int = 0
    duplicates_absorbed: int = 0
    duplicates_sent: int = 0
    retries: int = 0
    reduce_claims: int = 0
    emails: int = 0
    splitter_kills: int = 0
    quarantined: int = 0
    crashes: int = 0
    ambiguous_writes: int = 0
    service_restarts: int = 0
    not_attempted: int = 0
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


#: The `Row` counts a scenario may name as the evidence that its fault fired.
EVIDENCE = frozenset(
    {
        "duplicates_absorbed",
        "duplicates_sent",
        "retries",
        "splitter_kills",
        "quarantined",
        "crashes",
        "ambiguous_writes",
        "service_restarts",
        "failed",
        "not_attempted",
    }
)
_FIRED = re.compile(re.escape(FIRED_LOG_PREFIX) + r" (\w+) at (\w+)")


def fired_faults(log_lines: list[str]) -> dict[str, int]:
    """Count the injected faults in the functions' log lines, by kind (`crash`,
    `duplicate`, `applied_then_error`)."""
    counts: dict[str, int] = {}
    for line in log_lines:
        for kind, _point in _FIRED.findall(line):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def evidence_problems(sc: Scenario, row: Row) -> list[str]:
    """What the row lacks to prove that the scenario's fault fired (empty: it did)."""
    return [
        f"the fault did not fire: {name} is {getattr(row, name)} (expected at least 1)"
        for name in sc.evidence
        if getattr(row, name) <= 0
    ]
