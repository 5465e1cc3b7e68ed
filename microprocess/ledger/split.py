"""Split accounting: each sent page moves its segment's cursor and adds its tasks to `expected`,
once; the split's end fixes the counters' targets (`room`) so that sum(done + room) == expected.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from microprocess.ledger.completion import Completion
from microprocess.ledger.records import (
    CURSOR_DONE,
    LedgerError,
    RunNotActive,
    RunRecord,
    RunStatus,
    _counter_pk,
    _from_ddb,
    _is_conditional_failure,
    _run_key,
    _run_pk,
    _to_ddb,
    _token,
    utc_now_iso,
)


class SplitAccounting(Completion):
    """The splitter's writes on the run item and the counters' targets."""

    def account_page(self, run_id: str, *, segment: str, cursor_from: str, cursor_to: str, count: int) -> bool:
        """Account one sent page: move the segment's cursor and add `count` expected tasks.

        One conditional write on the run item: it succeeds only if the segment's cursor
        is still `cursor_from`, so a page is accounted at most once (an SDK retry of an
        applied write finds its own token and answers True). Returns False when the cursor
        had already moved (a resumed splitter re-sent the page).
        Raises `RunNotActive` if the run is no longer splitting (cancelled).
        """
        if self._claim(
            _run_key(run_id),
            set_expr="cursors.#s = :to, seg_counts.#s = seg_counts.#s + :n, updated_at = :now",
            add_expr="expected :n, pages :one",
            remove_expr="split_errors",  # the errors `note_split_error` counts are those since the last page
            cond="cursors.#s = :from AND #st = :splitting",
            names={"#s": segment, "#st": "status"},
            values={
                ":to": cursor_to,
                ":from": cursor_from,
                ":n": count,
                ":one": 1,
                ":splitting": "SPLITTING",
                ":now": utc_now_iso(),
            },
            token_attr="tok_page",
        ):
            return True
        run = self.require_run(run_id)
        if run.status is not RunStatus.SPLITTING:
            raise RunNotActive(f"run {run_id} is {run.status}; it takes no more pages")
        return False

    def note_split_error(self, run_id: str, error: str) -> int:
        """Remember a transient error of the split; returns how many the run has had since
        its last accounted page. Each error adds its own token to a set, so an SDK retry of
        this write does not count it twice."""
        resp = self.client.update_item(
            TableName=self.table_name,
            Key=_to_ddb(_run_key(run_id)),
            UpdateExpression="SET split_error = :e ADD split_errors :tok",
            ExpressionAttributeValues=_to_ddb({":e": error[:2000], ":tok": {_token()}}),
            ReturnValues="UPDATED_NEW",
        )
        return len(_from_ddb(resp["Attributes"]).get("split_errors", set()))

    def finish_split(self, run_id: str) -> bool:
        """Mark the split done, fix the counters' targets, and run the completion check.

        Idempotent (a resumed splitter or the sweeper may call it again).
        Returns True if this call claimed the reduce (an empty or already finished run).
        """
        run = self.require_run(run_id)
        if run.status is RunStatus.SPLITTING:
            pending = [s for s, c in run.cursors.items() if c != CURSOR_DONE]
            if pending:
                raise LedgerError(f"run {run_id}: segments {pending} are not read to the end")
            try:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
                    UpdateExpression="SET split_done = :t, #st = :running, split_finished_at = :now",
                    ConditionExpression="#st = :splitting",
                    ExpressionAttributeNames={"#st": "status"},
                    ExpressionAttributeValues=_to_ddb(
                        {":t": True, ":running": "RUNNING", ":splitting": "SPLITTING", ":now": utc_now_iso()}
                    ),
                )
            except ClientError as exc:
                if not _is_conditional_failure(exc):
                    raise
            run = self.require_run(run_id)
        if run.status is not RunStatus.RUNNING or not run.split_done:
            return False
        if not run.targets_final:
            self._set_targets(run)
        return self.check_completion(run_id)

    def _set_targets(self, run: RunRecord) -> None:
        """Give every counter a `room` so that sum(done + room) == expected, exactly."""
        run_id, expected = run.run_id, run.expected
        for _ in range(100):
            counters = self._read_counters(run_id, run.counter_count)
            unset = [c for c in counters if c.room is None]
            if unset:
                known = sum(c.done + (c.room or 0) for c in counters)
                remaining = max(expected - known, 0)
                for i, c in enumerate(unset):
                    share = remaining // len(unset) + (1 if i < remaining % len(unset) else 0)
                    try:
                        self.client.update_item(
                            TableName=self.table_name,
                            Key=_to_ddb({"pk": _counter_pk(run_id, c.index), "sk": "COUNT"}),
                            UpdateExpression="SET room = :r",
                            ConditionExpression="attribute_not_exists(room)",
                            ExpressionAttributeValues=_to_ddb({":r": share}),
                        )
                    except ClientError as exc:
                        if not _is_conditional_failure(exc):
                            raise
                continue
            # Every counter has a room now, so done + room is stable under concurrent adds.
            excess = sum(c.done + (c.room or 0) for c in counters) - expected
            if excess == 0:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
                    UpdateExpression="SET targets_final = :t",
                    ExpressionAttributeValues=_to_ddb({":t": True}),
                )
                return
            if excess < 0:  # completions that raced the shares were fewer than estimated
                self._adjust_room(run_id, counters[0].index, -excess)
                continue
            for c in sorted(counters, key=lambda c: -(c.room or 0)):
                take = min(c.room or 0, excess)
                if take <= 0:
                    continue
                if self._adjust_room(run_id, c.index, -take):
                    excess -= take
                if excess == 0:
                    break
        raise LedgerError(f"run {run_id}: could not settle the counter targets; the sweeper will retry")

    def _adjust_room(self, run_id: str, j: int, delta: int) -> bool:
        cond = "attribute_exists(room)" if delta >= 0 else "room >= :need"
        values: dict[str, Any] = {":d": delta}
        if delta < 0:
            values[":need"] = -delta
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_to_ddb({"pk": _counter_pk(run_id, j), "sk": "COUNT"}),
                UpdateExpression="ADD room :d",
                ConditionExpression=cond,
                ExpressionAttributeValues=_to_ddb(values),
            )
            return True
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise
