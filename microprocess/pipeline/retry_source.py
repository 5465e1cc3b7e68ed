"""What a retry run reads: the failed tasks of an earlier run and, with
`retry-failed --include-not-attempted`, the tasks that run never attempted (it was stopped early
or cancelled: split and sent, but never recorded).

The tasks never attempted are found without reading the whole run's records: the original's
pages are read again as it sent them (its kept copies under `splits/`, or its inline items, or
the failures it retried), one page per call, in the order it split them; a page's positions are
checked against the task records with one BatchGetItem per 100 positions, and the positions
without a record are this source's items. Only the original's accounted positions are read
(`seg_counts`): the same set as its `not_attempted.csv`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from microprocess.declarations import SourceKind
from microprocess.ledger import CURSOR_DONE, Ledger, RunRecord
from microprocess.ledger.retries import recorded_task_ids
from microprocess.pipeline.sources import FailedTasksSource, Page

#: The retry source's segments: 0 the failed tasks, 1 the tasks never attempted.
FAILED_SEGMENT, NOT_ATTEMPTED_SEGMENT = 0, 1


def rereads_alike(source_record: dict[str, Any]) -> bool:
    """Whether a run's source gives the same page at the same cursor every time it is read (inline
    items, the failures of a run), so that its pages need not be kept. Not a retry of the tasks
    never attempted: a late task record of the original changes what its page holds."""
    kind = source_record.get("kind")
    return kind == str(SourceKind.INLINE) or (kind == "retry" and not source_record.get("not_attempted"))


def task_id_at(segment: str, seq: int) -> str:
    """The splitter's task id of position `seq` of `segment`."""
    return f"{segment}-{seq:09d}"


class NotAttemptedSource:
    """The tasks of `original` without a task record, in position order.

    `read_page(segment, cursor)` reads the original's page at that cursor as it was sent. The
    cursor of this source is `{"s": segment, "c": the original's cursor, "q": its first position}`."""

    segments = 1

    def __init__(self, *, ledger: Ledger, original: RunRecord, read_page: Callable[[str, str], Page]) -> None:
        self.ledger, self.original, self._read = ledger, original, read_page
        self._segments = sorted((s for s, n in original.seg_counts.items() if n > 0), key=int)

    def read_page(self, segment: int, cursor: str, limit: int) -> Page:
        """The not-attempted items of the original's next page (maybe none), whatever `limit`: a
        page of the original is the unit, so that a re-read gives the same items."""
        state = json.loads(cursor) if cursor else self._start(0)
        if state is None:
            return Page([], CURSOR_DONE)
        seg, orig_cursor, first = str(state["s"]), str(state["c"]), int(state["q"])
        count = self.original.seg_counts.get(seg, 0)
        page = self._read(seg, orig_cursor)
        n = max(min(len(page.items), count - first), 0)
        ids = [task_id_at(seg, first + i) for i in range(n)]
        recorded = recorded_task_ids(self.ledger, self.original.run_id, self.original.shard_count, ids)
        items = [page.items[i] for i in range(n) if ids[i] not in recorded]
        if n == 0 or first + n >= count or page.next_cursor == CURSOR_DONE:
            following = self._start(self._segments.index(seg) + 1) if seg in self._segments else None
        else:
            following = {"s": seg, "c": page.next_cursor, "q": first + n}
        return Page(items, CURSOR_DONE if following is None else json.dumps(following, sort_keys=True))

    def _start(self, index: int) -> dict[str, Any] | None:
        return {"s": self._segments[index], "c": "", "q": 0} if index < len(self._segments) else None


class RetrySource:
    """A retry's two segments: the failed tasks (0) and the tasks never attempted (1)."""

    segments = 2

    def __init__(self, failed: FailedTasksSource, not_attempted: NotAttemptedSource) -> None:
        self.failed, self.not_attempted = failed, not_attempted

    def read_page(self, segment: int, cursor: str, limit: int) -> Page:
        if segment == FAILED_SEGMENT:
            return self.failed.read_page(0, cursor, limit)
        return self.not_attempted.read_page(0, cursor, limit)
