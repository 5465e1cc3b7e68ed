"""The credit-score domain: synthetic companies and the score itself.

Pure except for `seed_companies`, which takes the DynamoDB client it writes with.

The score (`credit_score`) is a points model, deterministic and explainable:

=====================  ==========================================================  ===========
factor                 points                                                      range
=====================  ==========================================================  ===========
base                   520                                                         520
age                    +8 per year of trading, counted up to 30 years              0..+240
size                   +30 per decade of employees (log10), up to 10,000           0..+120
profitability          +500 x profit margin (a ratio), clamped                     -100..+100
industry               fixed adjustment per industry (`INDUSTRY_RISK`)             -50..+40
payment defaults       -80 per default in the last 5 years, up to 5                -400..0
court actions          -60 per court action, up to 5                               -300..0
days beyond terms      -4 per day the company pays suppliers late, up to 60 days   -240..0
=====================  ==========================================================  ===========

The sum is rounded and clamped to 0..1000 and banded: A >= 800, B >= 650, C >= 500,
D >= 350, E below.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

#: Industries and their risk adjustment in score points (`credit_score`).
INDUSTRY_RISK: dict[str, int] = {
    "utilities": 40,
    "healthcare": 25,
    "software": 15,
    "finance": 10,
    "manufacturing": 0,
    "logistics": -10,
    "agriculture": -20,
    "retail": -25,
    "construction": -40,
    "hospitality": -50,
}

#: Lower bound of each band, best first.
BANDS: tuple[tuple[str, int], ...] = (("A", 800), ("B", 650), ("C", 500), ("D", 350), ("E", 0))
BAND_NAMES: tuple[str, ...] = tuple(b for b, _ in BANDS)

#: Attributes `credit_score` reads; an item carrying all of them can be scored without a table read.
SCORING_FIELDS: tuple[str, ...] = (
    "industry",
    "age_years",
    "employees",
    "profit_margin",
    "payment_defaults",
    "court_actions",
    "days_beyond_terms",
)

_NAME_A = ("North", "Blue", "Iron", "Silver", "Green", "Bright", "Oak", "Stone", "Swift", "Golden", "Red", "Harbor")
_NAME_B = ("field", "bridge", "point", "gate", "works", "line", "wood", "vale", "ridge", "port", "mark", "stone")
_NAME_C = ("Ltd", "GmbH", "SA", "BV", "AB", "Oy", "plc", "SRL")
_COUNTRIES = ("GB", "DE", "FR", "NL", "SE", "FI", "ES", "IT")


def company_id(number: int) -> str:
    """The id of the `number`-th company (1-based): `C0000001`."""
    return f"C{number:07d}"


def make_company(number: int, *, seed: int = 7) -> dict[str, Any]:
    """The `number`-th synthetic company (1-based) of the population drawn with `seed`.

    Each company comes from its own random stream, so company 42 is the same whatever
    `n` or `start` it was generated with. Money is in whole euros; `profit_margin` is a ratio.
    """
    rng = random.Random(f"{seed}:{number}")
    industry = rng.choice(tuple(INDUSTRY_RISK))
    age_years = min(int(rng.expovariate(1 / 12)), 120)
    employees = max(1, int(rng.lognormvariate(2.5, 1.6)))
    revenue = int(employees * rng.uniform(40_000, 250_000))
    # Most companies pay on time; a troubled minority accumulates defaults and court actions.
    troubled = rng.random() < 0.25
    payment_defaults = rng.choice((0, 1, 1, 2, 3, 4, 6)) if troubled else rng.choice((0,) * 9 + (1,))
    court_actions = rng.choice((0, 0, 1, 2, 3)) if troubled else rng.choice((0,) * 19 + (1,))
    days_beyond_terms = int(rng.expovariate(1 / (25 if troubled else 6)))
    profit_margin = round(rng.gauss(-0.02 if troubled else 0.06, 0.08), 3)
    name = f"{rng.choice(_NAME_A)}{rng.choice(_NAME_B)} {rng.choice(_NAME_C)}"
    return {
        "company_id": company_id(number),
        "name": name,
        "country": rng.choice(_COUNTRIES),
        "industry": industry,
        "age_years": age_years,
        "employees": employees,
        "revenue": revenue,
        "profit_margin": profit_margin,
        "payment_defaults": payment_defaults,
        "court_actions": court_actions,
        "days_beyond_terms": days_beyond_terms,
    }


def generate_companies(n: int, *, seed: int = 7, start: int = 1) -> Iterator[dict[str, Any]]:
    """Yield `n` synthetic companies, numbers `start`..`start + n - 1`, ids `C0000001`..."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for number in range(start, start + n):
        yield make_company(number, seed=seed)


def score_factors(company: Mapping[str, Any]) -> dict[str, int]:
    """The points each factor contributes to the score (see the module docstring).

    Raises `ValueError` naming the attribute when one is missing or not a number.
    """
    missing = [f for f in SCORING_FIELDS if company.get(f) is None]
    if missing:
        raise ValueError(f"company {company.get('company_id', '?')} lacks scoring attributes {missing}")
    try:
        age = float(company["age_years"])
        employees = float(company["employees"])
        margin = float(company["profit_margin"])
        defaults = float(company["payment_defaults"])
        court = float(company["court_actions"])
        late = float(company["days_beyond_terms"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(
            f"company {company.get('company_id', '?')}: a scoring attribute is not a number: {exc}"
        ) from None
    if not all(math.isfinite(v) for v in (age, employees, margin, defaults, court, late)):
        raise ValueError(f"company {company.get('company_id', '?')}: a scoring attribute is not a finite number")
    return {
        "base": 520,
        "age": round(8 * min(max(age, 0), 30)),
        "size": round(30 * min(math.log10(max(employees, 0) + 1), 4)),
        "profitability": round(min(max(500 * margin, -100), 100)),
        "industry": INDUSTRY_RISK.get(str(company["industry"]), 0),
        "payment_defaults": -round(80 * min(max(defaults, 0), 5)),
        "court_actions": -round(60 * min(max(court, 0), 5)),
        "days_beyond_terms": -round(4 * min(max(late, 0), 60)),
    }


def band_of(score: int) -> str:
    """The band ('A'..'E') of a score 0..1000."""
    return next(band for band, floor in BANDS if score >= floor)


def credit_score(company: Mapping[str, Any]) -> tuple[int, str]:
    """The company's credit score (int, 0..1000) and band ('A' best .. 'E' worst).

    Pure and deterministic: the same attributes always give the same score.
    """
    score = min(max(sum(score_factors(company).values()), 0), 1000)
    return score, band_of(score)


# ----------------------------------------------------------------- DynamoDB


def companies_table_definition(table_name: str) -> dict[str, Any]:
    """`create_table` arguments for a companies table (key `company_id`, type S)."""
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "company_id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "company_id", "KeyType": "HASH"}],
    }


def to_attribute_value(value: Any) -> dict[str, Any]:
    """One plain value as a DynamoDB attribute value (floats travel as N strings)."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float | Decimal):
        return {"N": str(value)}
    if value is None:
        return {"NULL": True}
    return {"S": str(value)}


def from_attribute_value(av: Mapping[str, Any]) -> Any:
    """The plain value of a scalar DynamoDB attribute value (N becomes int or float)."""
    if "N" in av:
        number = Decimal(av["N"])
        return int(number) if number == number.to_integral_value() else float(number)
    if "S" in av:
        return av["S"]
    if "BOOL" in av:
        return av["BOOL"]
    if "NULL" in av:
        return None
    raise ValueError(f"unsupported attribute value {dict(av)}: companies hold scalars only")


def seed_companies(
    dynamodb_client: Any, table_name: str, n: int, *, seed: int = 7, start: int = 1, max_retries: int = 10
) -> int:
    """Write `n` synthetic companies to `table_name` with BatchWriteItem (25 per call).

    Unprocessed items are retried with exponential backoff. Returns the number written.
    """
    return write_companies(dynamodb_client, table_name, generate_companies(n, seed=seed, start=start), max_retries)


def write_companies(
    dynamodb_client: Any, table_name: str, companies: Iterable[dict[str, Any]], max_retries: int = 10
) -> int:
    """Write `companies` to `table_name` with BatchWriteItem (25 per call); return the number written."""
    written = 0
    batch: list[dict[str, Any]] = []
    for company in companies:
        batch.append({"PutRequest": {"Item": {k: to_attribute_value(v) for k, v in company.items()}}})
        if len(batch) == 25:
            _write_batch(dynamodb_client, table_name, batch, max_retries)
            written += len(batch)
            batch = []
    if batch:
        _write_batch(dynamodb_client, table_name, batch, max_retries)
        written += len(batch)
    return written


def _write_batch(client: Any, table_name: str, requests: list[dict[str, Any]], max_retries: int) -> None:
    pending: dict[str, Any] = {table_name: requests}
    for attempt in range(max_retries + 1):
        resp = client.batch_write_item(RequestItems=pending)
        pending = resp.get("UnprocessedItems") or {}
        if not pending:
            return
        time.sleep(min(0.05 * 2**attempt, 2.0))
    left = len(pending.get(table_name, []))
    raise RuntimeError(f"{left} companies stayed unprocessed after {max_retries} retries; lower the write rate")
