"""The ledger's table connection: the DynamoDB client, the table's name, the process's memory of its
runs, and the two writes every other module builds on (a put once, a conditional claim), both safe
when the SDK retries them after they were applied (ARCHITECTURE §3.8).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.exceptions import ClientError

from microprocess.ledger.records import (
    WRITE_TOKEN,
    _is_conditional_failure,
    _to_ddb,
    _token,
    _written_by,
)


class LedgerStore:
    """The run ledger over one DynamoDB table: what every concern of `Ledger` shares.

    Args:
        table_name: the deployed table's name (passed in, never hard-coded).
        client: a boto3 DynamoDB client; created lazily when omitted.
        rng: source of randomness for the counter choice (seedable in tests).
        crash_hook: called with a crash-point name between writes; chaos testing
            makes it raise. `None` in production.
        max_workers: threads that write a batch's single records at once.
    """

    def __init__(
        self,
        table_name: str,
        *,
        client: Any = None,
        rng: random.Random | None = None,
        crash_hook: Callable[[str], None] | None = None,
        max_workers: int = 10,
    ) -> None:
        self.table_name = table_name
        self._client = client
        self._rng = rng or random.Random()
        self._crash_hook = crash_hook
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ledger")
        self._epochs: dict[str, int] = {}
        self._capped: dict[str, bool] = {}  # per run: have the counters' targets been set?
        self._homes: dict[str, tuple[int, int]] = {}  # per run: (counter, batches left on it)
        self._short: dict[str, set[int]] = {}  # per run: counters seen without room for another batch
        self._markers: dict[tuple[str, int], list[str]] = {}  # (run, counter): markers to remove
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("dynamodb")
        return self._client

    def _put_once(self, item: dict[str, Any]) -> bool:
        """Put `item` if its key is new. True if this call wrote it: a put the SDK retried
        after it was applied is recognised by its write token (ARCHITECTURE §3.8)."""
        token = _token()
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=_to_ddb({**item, WRITE_TOKEN: token}),
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return True
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return _written_by(exc, token)

    def _claim(
        self,
        key: dict[str, Any],
        *,
        set_expr: str,
        cond: str,
        values: dict[str, Any],
        token_attr: str,
        names: dict[str, str] | None = None,
        add_expr: str = "",
        remove_expr: str = "",
    ) -> bool:
        """A conditional update that is safe when the SDK retries it after it was applied:
        it also sets `token_attr` to a fresh token, and a failed condition whose item holds
        that token means this caller's write went through (ARCHITECTURE §3.8).
        True if this call's update was applied."""
        token = _token()
        expr = f"SET #ctok = :ctok, {set_expr}" + (f" ADD {add_expr}" if add_expr else "")
        expr += f" REMOVE {remove_expr}" if remove_expr else ""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_to_ddb(key),
                UpdateExpression=expr,
                ConditionExpression=cond,
                ExpressionAttributeNames={**(names or {}), "#ctok": token_attr},
                ExpressionAttributeValues=_to_ddb({**values, ":ctok": token}),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return True
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return _written_by(exc, token, token_attr)

    def _crash(self, point: str) -> None:
        if self._crash_hook is not None:
            self._crash_hook(point)
