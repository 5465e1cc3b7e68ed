"""The companies table: read a company, store its score."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from microprocess.ledger import utc_now_iso
from microservice.domain import from_attribute_value, to_attribute_value
from microservice.errors import CompanyNotFound


class CompanyStore:
    """Companies in one DynamoDB table (key `company_id`, type S).

    Args:
        client: a boto3 DynamoDB client.
        table_name: the deployed table's name.
    """

    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table_name = table_name

    def get(self, company_id: str) -> dict[str, Any] | None:
        resp = self.client.get_item(TableName=self.table_name, Key={"company_id": {"S": company_id}})
        item = resp.get("Item")
        return {k: from_attribute_value(v) for k, v in item.items()} if item else None

    def require(self, company_id: str) -> dict[str, Any]:
        company = self.get(company_id)
        if company is None:
            raise CompanyNotFound(company_id, self.table_name)
        return company

    def store_score(self, company_id: str, *, score: int, band: str, run_id: str) -> bool:
        """Set score, band, scored_at and scored_by_run on an existing company.

        Returns False when this run had already stored this very score (a repeated
        push: nothing is written, so `scored_at` keeps the first time). Raises
        `CompanyNotFound` if the company is not in the table (the update never creates one).
        """
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key={"company_id": {"S": company_id}},
                UpdateExpression="SET score = :s, band = :b, scored_at = :at, scored_by_run = :r",
                ConditionExpression=(
                    "attribute_exists(company_id) AND "
                    "(attribute_not_exists(scored_by_run) OR scored_by_run <> :r OR score <> :s OR band <> :b)"
                ),
                ExpressionAttributeValues={
                    ":s": to_attribute_value(score),
                    ":b": to_attribute_value(band),
                    ":at": to_attribute_value(utc_now_iso()),
                    ":r": to_attribute_value(run_id),
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            if not exc.response.get("Item"):
                raise CompanyNotFound(company_id, self.table_name) from None
            return False
