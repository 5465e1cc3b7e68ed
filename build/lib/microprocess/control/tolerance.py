"""The one decision of when a run can no longer succeed (stop early, ARCHITECTURE §3.3).

A run ends FAILED when its failures exceed the tolerated percentage of its expected tasks.
Failures only grow; the expected total only grows until the split is done, then is final.
So the verdict "cannot succeed" is certain:

* once the split is done, as soon as `failed / expected` is above the tolerance; or
* before, only when the failures exceed the tolerance of the largest total the run could
  reach (`upper_bound`); with no bound known, only a 0% tolerance decides (one failure is
  already too many, whatever the total).

Exact (decimal) arithmetic on the counts, never a rounded percentage: the same rule as the
ledger's verdict at the end of a run (`failed * 100 > tolerated_pct * expected`).
"""

from __future__ import annotations

from decimal import Decimal


def exceeds_tolerance(failed: int, total: int, tolerated_failure_pct: float) -> bool:
    """Whether `failed` of `total` tasks is above `tolerated_failure_pct` percent (exact)."""
    if failed <= 0:
        return False
    return Decimal(failed) * 100 > Decimal(str(tolerated_failure_pct)) * Decimal(max(total, 0))


def cannot_succeed(
    failed: int,
    expected: int,
    *,
    split_done: bool,
    tolerated_failure_pct: float,
    upper_bound: int | None = None,
) -> bool:
    """Whether a run with these counts is certain to end FAILED, whatever its remaining tasks do.

    Args:
        failed: tasks recorded FAILED so far (a counter never over-counts).
        expected: tasks the split has accounted so far (final once `split_done`).
        split_done: whether the split has read its source to the end.
        tolerated_failure_pct: the job's tolerance, percent.
        upper_bound: the most tasks the run can reach before its split is done (None: unknown).
    """
    if split_done:
        return exceeds_tolerance(failed, expected, tolerated_failure_pct)
    if upper_bound is None:
        return failed > 0 and Decimal(str(tolerated_failure_pct)) == 0
    return exceeds_tolerance(failed, max(upper_bound, expected), tolerated_failure_pct)
