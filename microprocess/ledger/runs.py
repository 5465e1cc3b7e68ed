"""Runs and their settings: create a run (with its source, params and shard and counter counts),
read it, list a job's runs, cancel it, the sweeper's progress note.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from microprocess.declarations import JobDeclaration
from microprocess.ledger.records import (
    LEDGER_SCHEMA,
    LedgerError,
    RunNotFound,
    RunRecord,
    RunStatus,
    _from_ddb,
    _run_key,
    _run_pk,
    _to_ddb,
    utc_now_iso,
)
from microprocess.ledger.store import LedgerStore


class Runs(LedgerStore):
    """Runs: the `RUN#<run>` / `RUN` item and the run's inline items."""

    def create_run(
        self,
        run_id: str,
        job: JobDeclaration,
        *,
        segments: int = 1,
        source_run: str | None = None,
        source: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        inline_items: list[Any] | None = None,
        tenants: int = 1,
    ) -> tuple[RunRecord, bool]:
        """Create the run if it does not exist. Returns (run, created).

        The run records what it reads (`source`, a plain dict the splitter builds), its
        run-time `params`, and its own shard and counter counts, so that every later step
        (a resumed splitter, the sweeper, the forwarder) uses the run's settings, never a
        redeployed job's; and its `tenants`: how many fair-queue tenants its tasks are spread over
        (`microprocess.pipeline.tenants`: more than 1 for a `--priority high` run). Inline items
        are kept on an item of their own (`RUN#<run>` / `ITEMS`) so that a restarted splitter
        reads the same list.

        Idempotent: a second call with the same run id returns the existing run
        (created=False). The same run id for another job is an error.
        """
        now = utc_now_iso()
        if inline_items is not None:
            self._put_once(
                {
                    "pk": _run_pk(run_id),
                    "sk": "ITEMS",
                    "items": json.dumps(inline_items, separators=(",", ":"), default=str),
                }
            )
        item = {
            "pk": _run_pk(run_id),
            "sk": "RUN",
            "run_id": run_id,
            "job": job.name,
            "status": str(RunStatus.SPLITTING),
            "shard_count": job.shard_count,
            "counter_count": job.counter_count,
            "expected": 0,
            "pages": 0,
            "split_done": False,
            "targets_final": False,
            "cursors": {str(s): "" for s in range(segments)},
            "seg_counts": {str(s): 0 for s in range(segments)},
            "created_at": now,
            "updated_at": now,
            "source_run": source_run,
            "source": json.dumps(source, sort_keys=True, default=str) if source else None,
            "params": json.dumps(params, sort_keys=True, default=str) if params else None,
            "tenants": tenants,
            LEDGER_SCHEMA.runs_index_partition_key: f"JOB#{job.name}",
            LEDGER_SCHEMA.runs_index_sort_key: f"{now}#{run_id}",
        }
        if self._put_once(item):
            return self._run_from_item(item), True
        existing = self.get_run(run_id)
        if existing is None:  # pragma: no cover - a put that failed its condition means the item exists
            raise LedgerError(f"run {run_id} exists but could not be read")
        if existing.job != job.name:
            raise LedgerError(f"run id {run_id} already belongs to job '{existing.job}', not '{job.name}'")
        return existing, False

    def inline_items(self, run_id: str) -> list[Any]:
        """The inline items a run was started with (empty when it was started with none)."""
        resp = self.client.get_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "ITEMS"}),
            ConsistentRead=True,
        )
        if "Item" not in resp:
            return []
        return list(json.loads(_from_ddb(resp["Item"])["items"]))

    def get_run(self, run_id: str, *, consistent: bool = True) -> RunRecord | None:
        resp = self.client.get_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
            ConsistentRead=consistent,
        )
        if "Item" not in resp:
            return None
        return self._run_from_item(_from_ddb(resp["Item"]))

    def require_run(self, run_id: str) -> RunRecord:
        run = self.get_run(run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} is not in the ledger ({self.table_name})")
        return run

    @staticmethod
    def _run_from_item(item: dict[str, Any]) -> RunRecord:
        return RunRecord(
            run_id=item["run_id"],
            job=item["job"],
            status=RunStatus(item["status"]),
            shard_count=int(item["shard_count"]),
            counter_count=int(item["counter_count"]),
            expected=int(item.get("expected", 0)),
            split_done=bool(item.get("split_done", False)),
            cursors={k: str(v) for k, v in item.get("cursors", {}).items()},
            seg_counts={k: int(v) for k, v in item.get("seg_counts", {}).items()},
            created_at=item["created_at"],
            split_finished_at=item.get("split_finished_at"),
            reduce_claimed_at=item.get("reduce_claimed_at"),
            finished_at=item.get("finished_at"),
            report_uri=item.get("report_uri"),
            error=item.get("error"),
            targets_final=bool(item.get("targets_final", False)),
            source_run=item.get("source_run"),
            summary=json.loads(item["summary"]) if item.get("summary") else {},
            updated_at=item.get("updated_at"),
            finalize_claimed_at=item.get("finalize_claimed_at"),
            sweep_done=int(item["sweep_done"]) if "sweep_done" in item else None,
            sweep_changed_at=item.get("sweep_changed_at"),
            source=json.loads(item["source"]) if item.get("source") else {},
            params=json.loads(item["params"]) if item.get("params") else {},
            email_sent_at=item.get("email_sent_at"),
            stopped_early_at=item.get("stopped_early_at"),
            source_failed_at=item.get("source_failed_at"),
            tenants=int(item.get("tenants") or 1),
        )

    def list_runs(self, job: str, *, limit: int = 20) -> list[RunRecord]:
        """The newest runs of `job`, newest first."""
        resp = self.client.query(
            TableName=self.table_name,
            IndexName=LEDGER_SCHEMA.runs_index,
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": LEDGER_SCHEMA.runs_index_partition_key},
            ExpressionAttributeValues=_to_ddb({":p": f"JOB#{job}"}),
            ScanIndexForward=False,
            Limit=limit,
        )
        return [self._run_from_item(_from_ddb(i)) for i in resp.get("Items", [])]

    def active_runs(self, jobs: Iterable[str], *, limit: int = 100) -> list[RunRecord]:
        """Runs of `jobs` that are not terminal (for the sweeper)."""
        return [r for j in jobs for r in self.list_runs(j, limit=limit) if not r.status.terminal]

    def cancel(self, run_id: str) -> bool:
        """Cancel a run that is splitting or running. Returns False if it had already ended."""
        self.require_run(run_id)
        return self._claim(
            _run_key(run_id),
            set_expr="#st = :c, finished_at = :now",
            cond="#st IN (:sp, :ru)",
            names={"#st": "status"},
            values={":c": "CANCELLED", ":now": utc_now_iso(), ":sp": "SPLITTING", ":ru": "RUNNING"},
            token_attr="tok_status",
        )

    def note_progress(self, run_id: str, done: int) -> str:
        """Sweeper bookkeeping: remember the done count; return when it last changed (ISO time)."""
        run = self.require_run(run_id)
        if run.sweep_done == done and run.sweep_changed_at:
            return run.sweep_changed_at
        now = utc_now_iso()
        self.client.update_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
            UpdateExpression="SET sweep_done = :d, sweep_changed_at = :now",
            ExpressionAttributeValues=_to_ddb({":d": done, ":now": now}),
        )
        return now
