"""AWS list prices (kept in `pricing_table.json` with their date and source) and what usage costs.

`Usage` holds billable quantities (requests, units, GB-seconds, emails); `cost_by_service`
prices them. The bench (`make bench`) measures usage; the planner (`microprocess plan`)
scales it; both price it here, with the same table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from microprocess.stacks import LAMBDA_ARCHITECTURE

PRICE_TABLE_PATH = Path(__file__).with_name("pricing_table.json")
SERVICES: tuple[str, ...] = ("sqs", "lambda", "dynamodb", "s3", "ses", "logs")


class PriceTableError(ValueError):
    """The price table is missing a price; the message names it."""


@dataclass(frozen=True)
class PriceTable:
    """List prices, USD.

    Attributes:
        as_of: the date the prices were read.
        source: where they come from.
        lambda_architecture: the architecture `lambda_per_gb_second` is the price of (the
            cloud stage's, `microprocess.stacks.LAMBDA_ARCHITECTURE`).
    """

    as_of: str
    source: str
    sqs_per_million_requests: float
    sqs_chunk_bytes: int
    lambda_architecture: str
    lambda_per_million_requests: float
    lambda_per_gb_second: float
    dynamodb_per_million_write_units: float
    dynamodb_per_million_read_units: float
    s3_per_thousand_put: float
    s3_per_thousand_get: float
    ses_per_thousand_emails: float
    logs_per_gb_ingested: float

    @classmethod
    def from_dict(cls, data: dict[str, Any], architecture: str = LAMBDA_ARCHITECTURE) -> PriceTable:
        try:
            p = data["prices"]
            gb_second = p["lambda"]["usd_per_gb_second"]
            if not isinstance(gb_second, dict):
                raise PriceTableError(
                    f"the price table's lambda.usd_per_gb_second must give a price per architecture "
                    f'({{"x86_64": ..., "arm64": ...}}), got {gb_second!r}; see {PRICE_TABLE_PATH}'
                )
            return cls(
                as_of=str(data["as_of"]),
                source=str(data["source"]),
                sqs_per_million_requests=float(p["sqs"]["usd_per_million_requests"]),
                sqs_chunk_bytes=int(p["sqs"]["billing_chunk_bytes"]),
                lambda_architecture=architecture,
                lambda_per_million_requests=float(p["lambda"]["usd_per_million_requests"]),
                lambda_per_gb_second=float(gb_second[architecture]),
                dynamodb_per_million_write_units=float(p["dynamodb"]["usd_per_million_write_units"]),
                dynamodb_per_million_read_units=float(p["dynamodb"]["usd_per_million_read_units"]),
                s3_per_thousand_put=float(p["s3"]["usd_per_thousand_put_requests"]),
                s3_per_thousand_get=float(p["s3"]["usd_per_thousand_get_requests"]),
                ses_per_thousand_emails=float(p["ses"]["usd_per_thousand_emails"]),
                logs_per_gb_ingested=float(p["logs"]["usd_per_gb_ingested"]),
            )
        except KeyError as exc:
            raise PriceTableError(f"the price table lacks {exc}; see {PRICE_TABLE_PATH}") from None


@lru_cache(maxsize=4)
def load_price_table(path: Path = PRICE_TABLE_PATH) -> PriceTable:
    return PriceTable.from_dict(json.loads(path.read_text()))


@dataclass(frozen=True)
class Usage:
    """Billable AWS usage.

    Attributes:
        sqs_requests: billed SQS requests (each 64 KB chunk of a request's payload is one).
        lambda_requests: Lambda invocations.
        lambda_gb_seconds: Lambda duration times memory, GB-s.
        dynamodb_write_units: on-demand write request units.
        dynamodb_read_units: on-demand read request units.
        s3_put_requests: S3 PUT, COPY, POST and LIST requests.
        s3_get_requests: S3 GET and other requests (DELETE is free and not counted).
        ses_emails: emails sent (one per recipient).
        logs_gb: CloudWatch Logs ingested, GB (10^9 bytes).
    """

    sqs_requests: float = 0.0
    lambda_requests: float = 0.0
    lambda_gb_seconds: float = 0.0
    dynamodb_write_units: float = 0.0
    dynamodb_read_units: float = 0.0
    s3_put_requests: float = 0.0
    s3_get_requests: float = 0.0
    ses_emails: float = 0.0
    logs_gb: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def scaled(self, factor: float) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown usage fields {unknown}; known: {sorted(known)}")
        return cls(**{k: float(v) for k, v in data.items()})


def cost_by_service(usage: Usage, prices: PriceTable | None = None) -> dict[str, float]:
    """USD per service (`sqs`, `lambda`, `dynamodb`, `s3`, `ses`, `logs`) for `usage`."""
    p = prices or load_price_table()
    return {
        "sqs": usage.sqs_requests * p.sqs_per_million_requests / 1e6,
        "lambda": usage.lambda_requests * p.lambda_per_million_requests / 1e6
        + usage.lambda_gb_seconds * p.lambda_per_gb_second,
        "dynamodb": usage.dynamodb_write_units * p.dynamodb_per_million_write_units / 1e6
        + usage.dynamodb_read_units * p.dynamodb_per_million_read_units / 1e6,
        "s3": usage.s3_put_requests * p.s3_per_thousand_put / 1e3 + usage.s3_get_requests * p.s3_per_thousand_get / 1e3,
        "ses": usage.ses_emails * p.ses_per_thousand_emails / 1e3,
        "logs": usage.logs_gb * p.logs_per_gb_ingested,
    }


def total_cost(usage: Usage, prices: PriceTable | None = None) -> float:
    return sum(cost_by_service(usage, prices).values())


def lambda_gb_seconds(invocations: float, seconds_each: float, memory_mb: int) -> float:
    """GB-seconds of `invocations` that each run `seconds_each` with `memory_mb` MB (1 GB = 1024 MB)."""
    return invocations * seconds_each * memory_mb / 1024.0


#: Memory at which a Lambda function has the equivalent of one full vCPU (Lambda allocates CPU
#: in proportion to memory: https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html).
LAMBDA_MB_PER_VCPU = 1769


def lambda_vcpu_share(memory_mb: int) -> float:
    """The share of one vCPU a function with `memory_mb` MB runs on, capped at 1 (one Python thread
    uses one core at most): CPU work measured on one full core takes 1 / share times as long there."""
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be positive, got {memory_mb}")
    return min(1.0, memory_mb / LAMBDA_MB_PER_VCPU)
