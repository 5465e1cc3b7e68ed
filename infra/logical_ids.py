"""The fixed logical IDs of the stateful resources, so that a refactor never replaces them.

Per-declaration resources take their ID from the declared name: the table role `companies`
is `CompaniesTable`, the job `credit-scores`'s task queue `CreditScoresTaskQueue`, the
service `scores`'s signing secret `ScoresSigningSecret`. Renaming a job, table or service
in the declaration file therefore replaces its resource (a table's data is retained).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from aws_cdk import CfnResource
from constructs import IConstruct

LEDGER = "LedgerTable"
REDUCE_QUEUE = "ReduceQueue"
DEAD_LETTER_QUEUE = "DeadLetterQueue"
REPORTS_BUCKET = "ReportsBucket"
ACCESS_LOGS_BUCKET = "AccessLogsBucket"


def pascal(name: str) -> str:
    """`credit-scores` -> `CreditScores` (a declared name as part of a logical ID)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("-"))


def table(role: str) -> str:
    return f"{pascal(role)}Table"


def task_queue(job: str) -> str:
    return f"{pascal(job)}TaskQueue"


def signing_secret(service: str) -> str:
    return f"{pascal(service)}SigningSecret"


def api_key(service: str) -> str:
    """The live API key secret of a bundled service (`scores` -> `ScoresApiKey`)."""
    return f"{pascal(service)}ApiKey"


def check_unique(kind: str, names: Iterable[str]) -> None:
    """Two declared names that would share one logical ID (`job-1` and `job1`) are an error."""
    seen: dict[str, str] = {}
    for name in names:
        key = pascal(name)
        if key in seen:
            raise ValueError(
                f"the {kind}s '{seen[key]}' and '{name}' would get the same CloudFormation logical ID "
                f"('{key}...'): rename one of them in the declaration file"
            )
        seen[key] = name


def pin(resource: IConstruct, logical_id: str) -> None:
    """Give the CloudFormation resource behind an L2 construct a fixed logical ID."""
    cast(CfnResource, resource.node.default_child).override_logical_id(logical_id)
