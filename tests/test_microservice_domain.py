"""The credit-score domain: synthetic companies, the score, seeding the table."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from microservice.companies import CompanyStore
from microservice.domain import (
    BAND_NAMES,
    SCORING_FIELDS,
    band_of,
    companies_table_definition,
    company_id,
    credit_score,
    generate_companies,
    make_company,
    score_factors,
    seed_companies,
)


def test_generation_is_deterministic_and_independent_of_n_and_start() -> None:
    # GIVEN the same seed
    # WHEN companies are generated twice, and once more from an offset
    first = list(generate_companies(50, seed=3))
    again = list(generate_companies(50, seed=3))
    tail = list(generate_companies(10, seed=3, start=41))
    # THEN the populations are equal, and company 41 is the same wherever the generation starts
    assert first == again
    assert tail == first[40:50]
    assert [c["company_id"] for c in first[:3]] == ["C0000001", "C0000002", "C0000003"]
    assert company_id(13) == "C0000013"
    # AND another seed gives other companies
    assert list(generate_companies(50, seed=4)) != first


def test_companies_carry_every_scoring_attribute() -> None:
    # GIVEN generated companies
    companies = list(generate_companies(200))
    # THEN each has the documented attributes, of plain types
    for c in companies:
        assert set(SCORING_FIELDS) <= set(c)
        assert {"company_id", "name", "revenue"} <= set(c)
        assert isinstance(c["employees"], int) and c["employees"] >= 1
        assert isinstance(c["revenue"], int)
        assert c["age_years"] >= 0


def test_scores_stay_in_range_and_every_band_occurs() -> None:
    # GIVEN a population of 300 companies WHEN each is scored
    scores = [credit_score(c) for c in generate_companies(300)]
    # THEN every score is within 0..1000, and every band occurs
    assert all(0 <= score <= 1000 for score, _ in scores)
    assert set(Counter(b for _, b in scores)) == set(BAND_NAMES)


def scored(industry: str, age: float, employees: int, margin: float, defaults: int, court: int, late: int) -> Any:
    company = {
        "company_id": "C0000001",
        "industry": industry,
        "age_years": age,
        "employees": employees,
        "profit_margin": margin,
        "payment_defaults": defaults,
        "court_actions": court,
        "days_beyond_terms": late,
    }
    return credit_score(company)


@pytest.mark.parametrize(
    ("company", "expected"),
    [
        # 520 base + 8x10 age + 30xlog10(100) size + 500x0.10 profit + 15 software = 725: band B
        (("software", 10, 99, 0.10, 0, 0, 0), (725, "B")),
        # 520 + 8x5 + 30xlog10(10) + 0 + 0 manufacturing - 80x1 default - 4x10 days late = 470: D
        (("manufacturing", 5, 9, 0.0, 1, 0, 10), (470, "D")),
        # 520 + 8x2.5 + 30xlog10(1000) + 500x0.03 - 25 retail - 60x1 court action - 4x3 = 548: C
        (("retail", 2.5, 999, 0.03, 0, 1, 3), (548, "C")),
        # caps: age 30 y (240), size 10,000 (120), profit +100; 520+240+120+100+40 utilities = 1020 -> 1000: A
        (("utilities", 40, 9_999, 0.5, 0, 0, 0), (1000, "A")),
        # floors: profit -100, 5 defaults (-400), 60 days (-240); 520-100-50-400-120-240 = -390 -> 0: E
        (("hospitality", 0, 0, -0.5, 9, 2, 100), (0, "E")),
        # exactly on a band floor: 520 + 8x15 + 0 + 0 + 10 finance = 650: B, not C
        (("finance", 15, 0, 0.0, 0, 0, 0), (650, "B")),
    ],
)
def test_score_worked_examples(company: tuple[Any, ...], expected: tuple[int, str]) -> None:
    assert scored(*company) == expected


def test_band_boundaries() -> None:
    assert [band_of(s) for s in (1000, 800, 799, 650, 649, 500, 499, 350, 349, 0)] == list("AABBCCDDEE")


def test_factors_explain_the_score_and_bad_history_lowers_it() -> None:
    # GIVEN a clean company
    clean = {**make_company(1), "payment_defaults": 0, "court_actions": 0, "days_beyond_terms": 0}
    # WHEN it gains defaults, court actions and late payments
    troubled = {**clean, "payment_defaults": 2, "court_actions": 1, "days_beyond_terms": 30}
    # THEN the factors add up to the (unclamped) score, and the score drops by exactly their points
    factors = score_factors(clean)
    assert 2 * 80 + 60 + 30 * 4 < sum(factors.values()) <= 1000  # no clamping in this example
    assert credit_score(clean)[0] == sum(factors.values())
    assert credit_score(clean)[0] - credit_score(troubled)[0] == 2 * 80 + 60 + 30 * 4


def test_a_missing_attribute_is_named() -> None:
    company: dict[str, Any] = {**make_company(5)}
    del company["court_actions"]
    with pytest.raises(ValueError, match="court_actions"):
        credit_score(company)


def test_seed_companies_writes_them_with_batch_writes(ddb: Any) -> None:
    # GIVEN an empty companies table
    ddb.create_table(**companies_table_definition("companies"))
    calls: list[int] = []
    real = ddb.batch_write_item

    def counting(**kwargs: Any) -> Any:
        calls.append(len(kwargs["RequestItems"]["companies"]))
        return real(**kwargs)

    ddb.batch_write_item = counting
    # WHEN 60 companies are seeded
    written = seed_companies(ddb, "companies", 60, seed=7)
    # THEN they are written 25 per call, and read back equal to the generated ones
    assert written == 60
    assert calls == [25, 25, 10]
    assert ddb.scan(TableName="companies", Select="COUNT")["Count"] == 60
    store = CompanyStore(ddb, "companies")
    for company in generate_companies(60, seed=7):
        assert store.get(company["company_id"]) == company
