"""Completion and the verdict: the completion check that claims the reduce once, progress, the
reduce's parts, finalize and email claims, and the run's end (`run_verdict`, the one rule).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from microprocess.ledger.counters import Counters
from microprocess.ledger.records import (
    LedgerError,
    Progress,
    RunStatus,
    _from_ddb,
    _run_key,
    _run_pk,
    _to_ddb,
    ended_status,
    failed_percentage,
    run_verdict,
    utc_now_iso,
)
from microprocess.ledger.runs import Runs


class Completion(Runs, Counters):
    """Reduce once, and only at the end (ARCHITECTURE §3.2); the run's end."""

    def check_completion(self, run_id: str) -> bool:
        """Claim the reduce if the split is done and every task is terminal. True exactly once per run."""
        run = self.require_run(run_id)
        if run.status is not RunStatus.RUNNING or not run.split_done:
            return False
        counters = self._read_counters(run_id, run.counter_count)
        succeeded = sum(c.succeeded for c in counters)
        failed = sum(c.failed for c in counters)
        if succeeded + failed < run.expected:
            return False
        if succeeded + failed > run.expected:
            raise LedgerError(
                f"run {run_id}: counters say {succeeded + failed} done but {run.expected} expected; "
                "refusing to reduce — run the sweeper's repair"
            )
        return self._claim(
            _run_key(run_id),
            set_expr="#st = :reducing, reduce_claimed_at = :now, succeeded = :s, failed = :f",
            cond="#st = :running AND split_done = :t",
            names={"#st": "status"},
            values={
                ":reducing": "REDUCING",
                ":running": "RUNNING",
                ":t": True,
                ":now": utc_now_iso(),
                ":s": succeeded,
                ":f": failed,
            },
            token_attr="tok_reduce",
        )

    def progress(self, run_id: str) -> Progress:
        run = self.require_run(run_id)
        counters = self._read_counters(run_id, run.counter_count)
        return Progress(
            run_id=run.run_id,
            job=run.job,
            status=run.status,
            expected=run.expected,
            succeeded=sum(c.succeeded for c in counters),
            failed=sum(c.failed for c in counters),
            split_done=run.split_done,
            created_at=run.created_at,
            finished_at=run.finished_at,
            report_uri=run.report_uri,
            error=run.error,
        )

    def record_reduce_part(self, run_id: str, shard: int, shard_count: int) -> bool:
        """Record that shard `shard` is reduced. True for exactly one caller: the one that
        completed the last part and so claims the finalize step.

        The set of reduced parts lives on its own item (`RUN#<run>` / `PARTS`), not on the
        run item, which stays small and takes no write per part."""
        resp = self.client.update_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "PARTS"}),
            UpdateExpression="ADD parts_done :p",
            ExpressionAttributeValues=_to_ddb({":p": {f"{shard:03d}"}}),
            ReturnValues="ALL_NEW",
        )
        done = _from_ddb(resp["Attributes"]).get("parts_done", set())
        if len(done) < shard_count:
            return False
        return self.claim_finalize(run_id)

    def parts_done(self, run_id: str) -> frozenset[str]:
        """The reduced parts of a run, as zero-padded shard numbers (`"007"`)."""
        resp = self.client.get_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "PARTS"}),
            ConsistentRead=True,
        )
        return frozenset(_from_ddb(resp.get("Item", {})).get("parts_done", set()))

    def claim_finalize(self, run_id: str, *, reclaim_before: str | None = None) -> bool:
        """Claim the finalize step once (or again, if the earlier claim is older than `reclaim_before`)."""
        cond = "#st = :reducing AND attribute_not_exists(finalize_claimed_at)"
        values: dict[str, Any] = {":reducing": "REDUCING", ":now": utc_now_iso()}
        if reclaim_before:
            cond = "#st = :reducing AND (attribute_not_exists(finalize_claimed_at) OR finalize_claimed_at < :old)"
            values[":old"] = reclaim_before
        return self._claim(
            _run_key(run_id),
            set_expr="finalize_claimed_at = :now",
            cond=cond,
            names={"#st": "status"},
            values=values,
            token_attr="tok_finalize",
        )

    def claim_email(self, run_id: str, *, lease_s: float | None = None) -> bool:
        """Claim the right to send the run's report email: True for one caller at a time, so
        that concurrent finalizes send it once (until `release_email` gives it back after a
        failed send).

        With `lease_s`, a claim older than that whose email was never recorded as sent
        (`record_email_sent`) may be taken again: a sender that died between its claim and its
        record is replaced, so the email is sent at least once (possibly twice, never zero times).
        Without it, the claim is for good (at most once)."""
        values: dict[str, Any] = {":now": utc_now_iso()}
        cond = "attribute_exists(pk) AND attribute_not_exists(email_claimed_at)"
        if lease_s is not None:
            values[":old"] = (datetime.now(UTC) - timedelta(seconds=lease_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            cond = (
                "attribute_exists(pk) AND attribute_not_exists(email_sent_at) AND "
                "(attribute_not_exists(email_claimed_at) OR email_claimed_at < :old)"
            )
        return self._claim(
            _run_key(run_id),
            set_expr="email_claimed_at = :now",
            cond=cond,
            values=values,
            token_attr="tok_email",
        )

    def email_sent(self, run_id: str) -> str | None:
        """When the run's report email was recorded as sent (ISO time), or None.

        The at-least-once protocol: the finalize checks this, sends the email, then calls
        `record_email_sent`. A crash between the send and the record sends it again on the
        retried finalize (a possible duplicate, never a lost email); once recorded, every
        later finalize skips it."""
        run = self.require_run(run_id)
        return run.email_sent_at

    def record_email_sent(self, run_id: str, message_id: str = "") -> bool:
        """Record that the run's report email went out (the deduplication record). True for
        the first record; idempotent afterwards (the first send's time and id are kept)."""
        return self._claim(
            _run_key(run_id),
            set_expr="email_sent_at = :now, email_message_id = :m",
            cond="attribute_exists(pk) AND attribute_not_exists(email_sent_at)",
            values={":now": utc_now_iso(), ":m": message_id or "-"},
            token_attr="tok_email_sent",
        )

    def release_email(self, run_id: str) -> None:
        """Give back an email claim whose send failed, so that a retried finalize sends it."""
        self.client.update_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
            UpdateExpression="REMOVE email_claimed_at",
        )

    def finish_run(
        self, run_id: str, *, tolerated_failure_pct: float, report_uri: str, summary: dict[str, Any] | None = None
    ) -> RunStatus | None:
        """End a reducing run: SUCCEEDED, or FAILED when failures exceed the tolerance
        (`run_verdict`, the one rule the report and the email use too).

        Returns the final status, or None if the run was not reducing (already ended).
        """
        run = self.require_run(run_id)
        if run.status is not RunStatus.REDUCING:
            return None
        prog = self.progress(run_id)
        verdict = run_verdict(prog.failed, prog.expected, tolerated_failure_pct)
        status = ended_status(run, prog.failed, prog.expected, tolerated_failure_pct)
        error = (
            f"{prog.failed} of {prog.expected} tasks failed "
            f"({failed_percentage(prog.failed, prog.expected):.2f}%), above the tolerated {tolerated_failure_pct}%"
            if verdict is RunStatus.FAILED
            else None
        )
        if run.error and error:  # a reducing run with an error was stopped early: keep why, first
            error = f"{run.error}; at its end, {error}"
        elif error is None and status is RunStatus.FAILED:  # stopped within the tolerance: why it stopped
            error = run.error
        done = self._claim(
            _run_key(run_id),
            set_expr="#st = :s, finished_at = :now, report_uri = :r, summary = :sum, #err = :e",
            cond="#st = :reducing",
            names={"#st": "status", "#err": "error"},
            values={
                ":s": str(status),
                ":now": utc_now_iso(),
                ":r": report_uri,
                ":sum": json.dumps(summary or {}, default=str),
                ":e": error or "",
                ":reducing": "REDUCING",
            },
            token_attr="tok_status",
        )
        return status if done else None

    def fail_run(self, run_id: str, error: str) -> bool:
        """End a non-terminal run FAILED with `error` (e.g. its reduce failed for good, or
        its source cannot be read)."""
        return self._claim(
            _run_key(run_id),
            set_expr="#st = :f, finished_at = :now, #err = :e",
            cond="#st IN (:sp, :ru, :re)",
            names={"#st": "status", "#err": "error"},
            values={
                ":f": "FAILED",
                ":now": utc_now_iso(),
                ":e": error,
                ":sp": "SPLITTING",
                ":ru": "RUNNING",
                ":re": "REDUCING",
            },
            token_attr="tok_status",
        )

    def requeue_reduce(self, run_id: str, *, claimed_before: str) -> bool:
        """Take the right to re-enqueue a reduce claimed before `claimed_before` and not
        finished: True for one caller per timeout window (it moves the claim time on)."""
        return self._claim(
            _run_key(run_id),
            set_expr="reduce_claimed_at = :now",
            cond="#st = :reducing AND reduce_claimed_at < :old",
            names={"#st": "status"},
            values={":now": utc_now_iso(), ":old": claimed_before, ":reducing": "REDUCING"},
            token_attr="tok_requeue",
        )
